"""Contrastive domain-adaptive pretraining (DAPT) of a registry CLIP model on a pair manifest.

`iter_train` fine-tunes with CLIP's symmetric InfoNCE loss (the model's learned logit scale),
AdamW without weight decay on gains, biases and the logit scale (as open_clip), a cosine schedule
with linear warmup, autocast (+ GradScaler for fp16) on CUDA, exact gradient accumulation, a
validation pass per epoch, and interruption-safe checkpoints it resumes from. The result is
`out_dir/dapt-final.pt`, which `load_model("local", weights=...)` loads.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from napari_clipmed.dapt import state as st
from napari_clipmed.dapt.config import DaptConfig
from napari_clipmed.dapt.data import (
    ImageStore,
    PairManifest,
    captions,
    epoch_batches,
    images_to_tensor,
    pair_keys,
    read_manifest,
    split_indices,
    text_views,
)
from napari_clipmed.dapt.step import accumulate_gradients, contrastive_loss, positive_mask
from napari_clipmed.errors import InputError
from napari_clipmed.io.atomic import atomic_write, write_json
from napari_clipmed.models.checkpoint import read_checkpoint
from napari_clipmed.models.device import autocast, resolve_precision
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.model import ClipModel
from napari_clipmed.models.registry import UnknownModelError
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

ValidationHook = Callable[[ClipModel, int], Mapping[str, float]]
_NO_DECAY_PARTS = ("bn", "ln", "bias", "logit_scale")


@dataclass
class DaptResult:
    """A finished run: the final checkpoint and the per-epoch history (losses, learning rate, metrics)."""

    checkpoint: Path
    out_dir: Path
    config: DaptConfig
    mode: str
    base_model: str
    history: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        return pd.DataFrame(self.history)


def cosine_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor of optimizer step `k`: linear warmup, then cosine decay to 0 (open_clip's)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split as open_clip does: no weight decay on 1-d gains, biases, logit scale."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim < 2 or any(part in name for part in _NO_DECAY_PARTS)
        (no_decay if skip else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def _freeze(module: torch.nn.Module, mode: str, config: DaptConfig) -> None:
    """Text-only runs train the text tower (fixed temperature); `lock_image`/`lock_text` as asked."""
    if mode == "text-only" and config.lock_text:
        raise InputError("a text-only manifest trains the text tower; lock_text would leave nothing to train")
    for name, param in module.named_parameters():
        visual = name.startswith("visual.")
        frozen = (
            (visual and (config.lock_image or mode == "text-only"))
            or (name == "logit_scale" and mode == "text-only")
            or (config.lock_text and not visual and name != "logit_scale")
        )
        param.requires_grad_(not frozen)


def _prepare_model(model: str | ClipModel, weights: str | os.PathLike[str] | None, device: str | None) -> ClipModel:
    if isinstance(model, ClipModel):  # train a copy: the caller's model stays as it was
        target = torch.device(device) if device is not None else model.device
        return ClipModel(
            spec=model.spec,
            module=copy.deepcopy(model.module).to(target),
            tokenizer=model.tokenizer,
            device=target,
            precision=model.precision if target == model.device else resolve_precision(target),
            weights_path=model.weights_path,
        )
    try:
        return load_model(model, weights=weights, device=device)
    except UnknownModelError as err:
        raise InputError(str(err)) from None


def _fresh_view(clip: ClipModel) -> ClipModel:
    """The same network with empty text memo and weights hash (both are stale after an update)."""
    return ClipModel(clip.spec, clip.module, clip.tokenizer, clip.device, clip.precision, clip.weights_path)


def _encode_unique_texts(module: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Text features with each distinct token row encoded once (template captions repeat a lot)."""
    unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
    if len(unique) == len(tokens):
        return module.encode_text(tokens, normalize=True)
    return module.encode_text(unique, normalize=True)[inverse]


def _derived_seed(*parts: int) -> int:
    return int(np.random.default_rng(list(parts)).integers(2**62))


class _Run:
    """Batches, forward passes and validation of one run (the loop itself is in `iter_train`)."""

    def __init__(self, clip: ClipModel, manifest: PairManifest, config: DaptConfig, val_rows: np.ndarray) -> None:
        self.clip, self.manifest, self.config, self.val_rows = clip, manifest, config, val_rows
        self.module = clip.module
        self.store = ImageStore(manifest.images) if manifest.images is not None else None
        device = clip.device
        self.precision = resolve_precision(device, config.precision) if device.type == "cuda" else "fp32"
        self.text_only = manifest.mode == "text-only"

    def batch(
        self, rows: np.ndarray, rng: np.random.Generator, aug: torch.Generator | None, train: bool = True
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor | None]:
        """The micro-batch chunks of one batch and its positive-pair mask (validation: first template)."""
        device, tokenize = self.clip.device, self.clip.tokenizer
        if self.text_only:
            views = [text_views(self.manifest.texts[i], rng) for i in rows]
            first, second = tokenize([v[0] for v in views]), tokenize([v[1] for v in views])
        else:
            texts = captions(self.manifest, rows, self.config.templates, rng if train else None)
            first = images_to_tensor(self.store.many(rows), self.clip.spec, device, generator=aug)
            second = tokenize(texts)
        pieces = np.array_split(np.arange(len(rows)), math.ceil(len(rows) / self.config.batch_size))
        chunks = [(first[p].to(device), second[p].to(device)) for p in pieces]
        keys = [self.manifest.texts[i] for i in rows] if self.text_only else pair_keys(self.manifest, rows)
        return chunks, positive_mask(keys, len(rows), device)

    def encode(self, chunk: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        first, second = chunk
        cfg, module = self.config, self.module
        frozen_image = contextlib.nullcontext() if not cfg.lock_image else torch.no_grad()
        frozen_text = contextlib.nullcontext() if not cfg.lock_text else torch.no_grad()
        with autocast(self.clip.device, self.precision):
            if self.text_only:
                a = module.encode_text(first, normalize=True)
            else:
                with frozen_image:
                    a = module.encode_image(first, normalize=True)
            with frozen_text:
                b = _encode_unique_texts(module, second)
        return a.float(), b.float()

    def scale(self) -> torch.Tensor:
        if self.text_only:
            return torch.tensor(1.0 / self.config.text_temperature, device=self.clip.device)
        return self.module.logit_scale.exp()

    def validate(self, epoch: int, hook: ValidationHook | None) -> dict:
        """Validation loss (fixed order and captions), zero-shot accuracy when labels exist, hook metrics."""
        self.module.eval()
        metrics: dict = {}
        rows, step = self.val_rows, self.config.effective_batch
        if len(rows) >= 2:
            total, count = 0.0, 0
            with torch.no_grad():
                for start in range(0, len(rows), step):
                    part = rows[start : start + step]
                    if len(part) < 2:
                        continue
                    chunks, positives = self.batch(part, np.random.default_rng([self.config.seed, 7]), None, train=False)
                    feats = [self.encode(c) for c in chunks]
                    loss = contrastive_loss(torch.cat([f[0] for f in feats]), torch.cat([f[1] for f in feats]),
                                            self.scale(), positives)
                    total, count = total + float(loss) * len(part), count + len(part)
            metrics["val_loss"] = total / count
        classes = self.manifest.classes
        if len(rows) and not self.text_only and len(classes) >= 2:
            from napari_clipmed.zeroshot import ZeroShotClassifier

            view = _fresh_view(self.clip)
            classifier = ZeroShotClassifier.from_prompts(view, classes, self.config.templates)
            embeddings = view.encode_images(self.store.many(rows), batch_size=self.config.batch_size)
            truth = np.array([classes.index(self.manifest.labels[i]) for i in rows])
            metrics["val_accuracy"] = float(np.mean(classifier.predict(embeddings) == truth))
        if hook is not None:
            metrics.update({str(k): float(v) for k, v in hook(_fresh_view(self.clip), epoch).items()})
        self.module.train()
        return metrics


def iter_train(
    model: str | ClipModel,
    manifest: str | os.PathLike[str] | PairManifest,
    config: DaptConfig | None,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = True,
    validate: ValidationHook | None = None,
    weights: str | os.PathLike[str] | None = None,
    device: str | None = None,
) -> ProgressGenerator[DaptResult]:
    """Fine-tune `model` (registry name, or a `ClipModel`, which is copied) on `manifest`'s pairs.

    Yields `Progress` per optimizer step (message with the loss), after validation and after each
    checkpoint; returns a `DaptResult`. With `resume`, a run in `out_dir` continues from its last
    complete checkpoint (same model, manifest and settings required); without, its files are
    removed first. `validate(model, epoch) -> {name: value}` adds metrics to each epoch's history.
    """
    config = config or DaptConfig()
    pairs = manifest if isinstance(manifest, PairManifest) else read_manifest(manifest)
    train_rows, val_rows = split_indices(pairs, config.val_fraction, config.seed)
    clip = _prepare_model(model, weights, device)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"the output folder {out} is a file; name a folder")
    fingerprint = {"base_model": clip.spec.name, "base_weights": clip.weights_hash,
                   "manifest": pairs.fingerprint, "config": config.to_dict()}
    previous = st.read_state(out) if resume and out.is_dir() else None
    if previous is not None:
        _check_same_run(previous.fingerprint, fingerprint, out)
    elif out.is_dir():
        st.clear_run(out)
    out.mkdir(parents=True, exist_ok=True)

    module = clip.module
    _freeze(module, pairs.mode, config)
    run = _Run(clip, pairs, config, val_rows)
    optimizer = torch.optim.AdamW(param_groups(module, config.weight_decay), lr=config.lr,
                                  betas=(config.beta1, config.beta2), eps=config.eps, foreach=True)
    steps_per_epoch = len(epoch_batches(train_rows, config.effective_batch, config.seed, 0))
    total = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_schedule(config.warmup_steps, total))
    scaler = torch.amp.GradScaler("cuda", enabled=clip.device.type == "cuda" and run.precision == "fp16")
    epoch, step, history = 0, 0, []
    if previous is not None:
        module.load_state_dict(read_checkpoint(out / previous.model_file).state_dict)
        optimizer.load_state_dict(previous.optimizer)
        scheduler.load_state_dict(previous.scheduler)
        scaler.load_state_dict(previous.scaler)
        epoch, step, history = previous.epoch, previous.step, list(previous.history)
        yield Progress(step, total, f"resuming from epoch {epoch} of {config.epochs} ({previous.model_file})")
    run_info = {"base_model": clip.spec.name, "base_weights": str(clip.weights_path or ""),
                "manifest": str(pairs.source or ""), "mode": pairs.mode, "n_train": len(train_rows),
                "n_val": len(val_rows), "classes": pairs.classes, "device": clip.device_label,
                "train_precision": run.precision, "config": config.to_dict()}
    write_json(out / st.CONFIG_FILE, {**run_info, "status": "running",
                                         "started": datetime.now(timezone.utc).isoformat(timespec="seconds")})

    module.train()
    backward = (lambda loss: scaler.scale(loss).backward()) if scaler.is_enabled() else torch.Tensor.backward
    for epoch in range(epoch, config.epochs):
        started = time.perf_counter()
        torch.manual_seed(_derived_seed(config.seed, epoch, 0))  # dropout, if the model has any
        rng = np.random.default_rng([config.seed, epoch, 1])
        aug = torch.Generator().manual_seed(_derived_seed(config.seed, epoch, 2)) if config.augment else None
        losses = []
        for index, rows in enumerate(epoch_batches(train_rows, config.effective_batch, config.seed, epoch)):
            chunks, positives = run.batch(rows, rng, aug)
            loss = accumulate_gradients(run.encode, chunks, run.scale, positives, backward)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            with torch.no_grad():
                module.logit_scale.clamp_(0.0, math.log(100.0))
            losses.append(loss)
            step += 1
            yield Progress(step, total, f"epoch {epoch + 1}/{config.epochs}, step {index + 1}/{steps_per_epoch}: "
                                        f"loss {loss:.4f}")
        row = {"epoch": epoch + 1, "step": step, "lr": float(optimizer.param_groups[0]["lr"]),
               "train_loss": float(np.mean(losses)), **run.validate(epoch + 1, validate),
               "seconds": time.perf_counter() - started}
        history.append(row)
        yield Progress(step, total, _summary(row))
        if (epoch + 1) % config.save_every == 0 or epoch + 1 == config.epochs:
            name = st.epoch_file(epoch + 1)
            clip.save(out / name, extra_meta={"dapt": {**run_info, "epoch": epoch + 1}})
            st.commit(out, st.TrainState(epoch + 1, step, name, optimizer.state_dict(), scheduler.state_dict(),
                                         scaler.state_dict(), history, fingerprint))
            yield Progress(step, total, f"saved checkpoint {out / name}")

    final = clip.save(out / st.FINAL_FILE, extra_meta={"dapt": {**run_info, "epoch": config.epochs,
                                                                  "history": history}})
    result = DaptResult(final, out, config, pairs.mode, clip.spec.name, history,
                        previous.epoch if previous is not None else 0)
    atomic_write(out / st.HISTORY_FILE, result.to_frame().to_csv(index=False))
    write_json(out / st.CONFIG_FILE, {**run_info, "status": "finished", "final_checkpoint": str(final),
                                         "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    yield Progress(total, total, f"wrote {final}")
    return result


def train(
    model: str | ClipModel,
    manifest: str | os.PathLike[str] | PairManifest,
    config: DaptConfig | None,
    out_dir: str | os.PathLike[str],
    **kwargs,
) -> DaptResult:
    """Plain-call form of `iter_train`."""
    return run_generator(iter_train(model, manifest, config, out_dir, **kwargs))


def _summary(row: dict) -> str:
    parts = [f"epoch {row['epoch']}: train loss {row['train_loss']:.4f}"]
    parts += [f"{k.replace('_', ' ')} {v:.4f}" for k, v in row.items()
              if k not in ("epoch", "step", "lr", "train_loss", "seconds") and isinstance(v, float)]
    return ", ".join(parts)


def _check_same_run(saved: dict, current: dict, out: Path) -> None:
    """A resumed run must continue the same training: same base model, data and settings."""
    problems = []
    if saved.get("base_model") != current["base_model"] or saved.get("base_weights") != current["base_weights"]:
        problems.append(f"it started from model {saved.get('base_model')!r} with other weights")
    if saved.get("manifest") != current["manifest"]:
        problems.append("its manifest rows differ")
    changed = DaptConfig.from_dict(saved["config"]).differences(DaptConfig.from_dict(current["config"]))
    if changed:
        problems.append("these settings differ: " + ", ".join(changed))
    if problems:
        raise InputError(f"{out} holds a run that this one cannot continue: " + "; ".join(problems)
                         + ". Use another output folder, or turn resume off to start over.")
