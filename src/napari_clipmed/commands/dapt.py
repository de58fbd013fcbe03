"""`clipmed dapt`: contrastive domain-adaptive pretraining of a registry model from the shell.

A thin wrapper over `napari_clipmed.dapt.train.iter_train`; heavy imports happen only when the
command runs. An interrupted run continues from its last checkpoint when started again with the
same --out folder (unless --no-resume).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_clipmed.commands._checks import preflight
from napari_clipmed.commands._progress import CliProgress


def _templates(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(";") if t.strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    from napari_clipmed.dapt.config import DaptConfig

    d = DaptConfig()
    p = subparsers.add_parser(
        "dapt", help="contrastive fine-tuning of a model on (image, text) pairs",
        description="Domain-adaptive pretraining: CLIP's contrastive loss on the pairs of a CSV manifest "
        "(columns image + text, image + label, or text alone). Writes DIR/dapt-final.pt, which "
        "`--model local --weights DIR/dapt-final.pt` loads, plus dapt-config.json and dapt-history.csv.",
    )
    p.add_argument("manifest", type=Path, help="CSV with columns image, text and/or label (optional split)")
    p.add_argument("--model", required=True, help="registry model to start from (e.g. openai-vit-b-16)")
    p.add_argument("--weights", type=Path, help="checkpoint to start from (file or folder)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per forward pass")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum_steps,
                   help="micro-batches per step (contrastive batch = batch size x this)")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr:g})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default=d.precision,
                   help="CUDA only; CPU trains in fp32")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=int, default=d.save_every, help="epochs between checkpoints")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="held out for validation when the manifest has no split column")
    p.add_argument("--lock-image", action="store_true", help="keep the image tower fixed (LiT)")
    p.add_argument("--lock-text", action="store_true", help="keep the text tower fixed")
    p.add_argument("--templates", type=_templates, default=d.templates,
                   help="caption templates for label columns, separated by ';', each with {}")
    p.add_argument("--augment", action="store_true", help="random crops and flips of training images")
    p.add_argument("--text-temperature", type=float, default=d.text_temperature,
                   help="temperature of the text-only objective")
    p.add_argument("--no-resume", action="store_true", help="start over, removing a previous run in --out")
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_clipmed.dapt.config import DaptConfig
    from napari_clipmed.dapt.train import iter_train
    from napari_clipmed.progress import run_generator

    from napari_clipmed.zeroshot import check_templates

    preflight(args, out_dir=args.out)
    check_templates(args.templates, source="--templates")
    config = DaptConfig(
        epochs=args.epochs, batch_size=args.batch_size, grad_accum_steps=args.grad_accum, lr=args.lr,
        weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, precision=args.precision,
        seed=args.seed, save_every=args.save_every, val_fraction=args.val_fraction,
        lock_image=args.lock_image, lock_text=args.lock_text, templates=args.templates,
        augment=args.augment, text_temperature=args.text_temperature,
    )
    from napari_clipmed.dapt.state import CONFIG_FILE
    from napari_clipmed.io.runfolder import RunFolder

    job = iter_train(args.model, args.manifest, config, args.out, resume=not args.no_resume,
                     weights=args.weights, device=args.device)
    with RunFolder(args.out, CONFIG_FILE, command="dapt", defer_status=True):  # lock; a crash is recorded as failed
        result = run_generator(job, CliProgress(args.quiet, stage=lambda m: m.split(", step ")[0]))
    print(result.to_frame().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"checkpoint: {result.checkpoint}")
    print(f"load it with: --model local --weights {result.checkpoint}")
    return 0
