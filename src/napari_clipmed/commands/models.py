"""`clipmed models`, `clipmed convert`, `clipmed encode`: the model layer from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_clipmed.errors import InputError


def add_model_arguments(parser: argparse.ArgumentParser, *, default: str | None = "pathclip") -> None:
    """The model options every command shares: --model, --weights, --weights-dir, --device."""
    parser.add_argument("--model", default=default, required=default is None, help="registry name (see `clipmed models`)")
    parser.add_argument("--weights", default=None, help="checkpoint file or Hugging Face folder (default: weights folder, then hub)")
    parser.add_argument("--weights-dir", default=None, help="folder with checkpoints (default: $CLIPMED_WEIGHTS_DIR or the user cache)")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")


def model_from_args(args: argparse.Namespace, name: str | None = None):
    from napari_clipmed.models.loader import load_model

    return load_model(name or args.model, args.weights, weights_dir=args.weights_dir, device=args.device)


def _list(args: argparse.Namespace) -> int:
    from napari_clipmed.errors import WeightsNotFoundError
    from napari_clipmed.models.backends import broken_backends
    from napari_clipmed.models.registry import MODELS, list_models
    from napari_clipmed.models.weights import default_weights_dir, resolve_weights

    folder = Path(args.weights_dir) if args.weights_dir else default_weights_dir()
    print(f"weights folder: {folder}")
    print(f"  {'name':18s} {'gated':5s} {'licence':44s} weights")
    for name in list_models():
        spec = MODELS[name]
        try:
            found = resolve_weights(spec, weights_dir=folder, allow_download=False)
            state = "no weights needed" if found is None else f"found {found}"
        except WeightsNotFoundError:
            state = "pass --weights FILE"
            if spec.weights_file:
                folder_model = not Path(spec.weights_file).suffix and spec.weights_format != "hf_clip"
                state = f"missing: put {'bundle folder ' if folder_model else ''}{spec.weights_file} there"
        licence = spec.licence if len(spec.licence) <= 44 else spec.licence[:41] + "..."
        gated = "yes" if spec.gated else "no"
        print(f"  {spec.name:18s} {gated:5s} {licence:44s} {state}\n  {'':18s} {spec.description}")
        if spec.training_mpp or spec.training_magnification:
            at = ", ".join(x for x in (spec.training_magnification, f"{spec.training_mpp} µm/px" if spec.training_mpp else "") if x)
            print(f"  {'':18s} trained at {at} ({spec.resolution_source})")
    for reason in broken_backends().values():
        print(f"  warning: {reason}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    """Download a model into a bundle folder (on a connected machine)."""
    from napari_clipmed.commands._progress import StderrProgress
    from napari_clipmed.models.bundle import iter_pull
    from napari_clipmed.progress import run_generator

    printer = StderrProgress()
    try:
        manifest = run_generator(iter_pull(args.name, args.to, revision=args.revision), printer)
    finally:
        printer.close()
    size = sum(f.size for f in manifest.files)
    print(f"wrote bundle {args.to}: {len(manifest.files)} files, {size / 1e6:.1f} MB, {manifest.source}@{manifest.revision[:12]}")
    print(f"check it on the offline machine with: clipmed models verify {args.to}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    """Check a bundle's hashes and run one forward pass with the network blocked."""
    from napari_clipmed.models.bundle import verify

    print(verify(args.folder, device=args.device).summary())
    return 0


def _convert(args: argparse.Namespace) -> int:
    """Hugging Face CLIPModel (file or folder) -> napari-clipmed checkpoint loadable as `local`."""
    from napari_clipmed.models.checkpoint import read_checkpoint
    from napari_clipmed.models.loader import load_model
    from napari_clipmed.models.registry import get_spec

    checkpoint = read_checkpoint(args.source)
    spec = get_spec(args.model)
    if checkpoint.arch_config is not None:
        spec = spec.with_changes(arch_config=checkpoint.arch_config, arch=f"{spec.arch}-converted")
    model = load_model(spec, weights=args.source, device="cpu")
    out = model.save(args.out, extra_meta={"converted_from": str(args.source)})
    print(f"wrote {out} (load it with --model local --weights {out})")
    return 0


def _encode(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from napari_clipmed.io.atomic import atomic_path
    from napari_clipmed.models.cache import EmbeddingCache

    paths = [Path(p) for p in args.images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{len(missing)} image files do not exist: {', '.join(missing[:5])}")
    model = model_from_args(args)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir)
    embeddings = model.encode_images(images, batch_size=args.batch_size, cache=cache)
    out = Path(args.out)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, embeddings=embeddings, paths=np.array([str(p) for p in paths]), model=model.spec.name,
                 signature=model.signature)
    print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to {out} ({model.device_label})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list registered models (licence, gated, weights present); pull, verify")
    p.add_argument("--weights-dir", default=None)
    p.set_defaults(func=_list)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    q = actions.add_parser("pull", help="download a model into a weights bundle folder (needs the network)")
    q.add_argument("name", help="registry name (see `clipmed models`)")
    q.add_argument("--to", required=True, help="bundle folder to create (copy it to the offline machine)")
    q.add_argument("--revision", default=None, help="hub revision (branch, tag or commit); default: the latest")
    q.set_defaults(func=_pull)
    q = actions.add_parser("verify", help="check a bundle's files against its manifest and run it once, offline")
    q.add_argument("folder")
    q.add_argument("--device", default="cpu", help="device for the forward pass (default: cpu)")
    q.set_defaults(func=_verify)

    p = subparsers.add_parser("convert", help="convert a Hugging Face CLIPModel checkpoint for open_clip")
    p.add_argument("source", help="Hugging Face CLIPModel folder or weights file")
    p.add_argument("out", help="output checkpoint (.pt)")
    p.add_argument("--model", default="plip", help="registry model the checkpoint belongs to (for its preprocessing)")
    p.set_defaults(func=_convert)

    p = subparsers.add_parser("encode", help="encode image files into an .npz of embeddings")
    p.add_argument("images", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir", default=None, help="embedding cache folder (default: $CLIPMED_CACHE_DIR or the user cache)")
    p.add_argument("--no-cache", action="store_true")
    add_model_arguments(p)
    p.set_defaults(func=_encode)
