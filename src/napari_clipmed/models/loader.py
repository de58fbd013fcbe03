"""Load a registry model into a `ClipModel`: network, tokenizer, preprocessing and device together."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_clipmed.errors import CheckpointError
from napari_clipmed.models import encode as _encode
from napari_clipmed.models.cache import EmbeddingCache
from napari_clipmed.models.checkpoint import Checkpoint, check_compatible, read_checkpoint, save_checkpoint
from napari_clipmed.models.device import Precision, describe, pick_device, resolve_precision
from napari_clipmed.models.images import ImageBatch
from napari_clipmed.models.precision import PrecisionChoice, decide
from napari_clipmed.models.registry import ModelSpec, get_spec
from napari_clipmed.models.weights import resolve_weights
from napari_clipmed.progress import ProgressGenerator, run_generator

ENCODER_VERSION = "1"  # bump when preprocessing changes, so cached embeddings are not reused


@dataclass(eq=False)
class ClipModel:
    """A CLIP network ready to encode: module in eval mode on its device, with tokenizer and spec."""

    spec: ModelSpec
    module: torch.nn.Module
    tokenizer: object
    device: torch.device
    precision: str
    weights_path: Path | None = None
    cpu_fastpath: bool = True  # use `cpu_fastpath.vision_forward` for fp32 ViTs on a CPU
    precision_choice: PrecisionChoice | None = None  # why this precision (CPU: measured, see `precision`)
    text_memo: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _weights_hash: str | None = field(default=None, repr=False)

    @property
    def embed_dim(self) -> int:
        return int(self.module.text_projection.shape[1]) if hasattr(self.module, "text_projection") else int(
            self.module.visual.output_dim
        )

    @property
    def logit_scale(self) -> float:
        return float(self.module.logit_scale.detach().exp().clamp(max=100.0).item())

    @property
    def device_label(self) -> str:
        """E.g. 'CPU, bf16 (AMX)', 'CPU, fp32 (bf16 not faster)', 'CUDA (NVIDIA H100), bf16'."""
        choice = self.precision_choice
        reason = choice.reason if choice is not None and choice.precision == self.precision else ""
        return describe(self.device, self.precision, reason)

    @property
    def precision_record(self) -> dict:
        """For run configs: the precision, why, and the probe's numbers where one ran."""
        choice = self.precision_choice
        if choice is None or choice.precision != self.precision:
            return {"precision": self.precision, "device": self.device_label}
        return {**choice.to_dict(), "device": self.device_label}

    @property
    def weights_hash(self) -> str:
        """Content hash of the weights (computed once): the cache must not mix checkpoints."""
        if self._weights_hash is None:
            digest = hashlib.blake2b(digest_size=16)
            for key, tensor in sorted(self.module.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
            self._weights_hash = digest.hexdigest()
        return self._weights_hash

    @property
    def signature(self) -> str:
        """What decides an image's embedding: model, weights, preprocessing, precision, encoder version."""
        spec = self.spec
        parts = (spec.name, spec.arch, self.weights_hash, spec.image_size, spec.mean, spec.std, self.precision, ENCODER_VERSION)
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()

    def iter_encode_images(
        self, images: ImageBatch, *, batch_size: int = 64, cache: EmbeddingCache | None = None
    ) -> ProgressGenerator[np.ndarray]:
        """Generator form of `encode_images` (yields Progress per batch)."""
        return _encode.iter_encode_images(self, images, batch_size=batch_size, cache=cache)

    def encode_images(
        self, images: ImageBatch, *, batch_size: int = 64, cache: EmbeddingCache | None = None
    ) -> np.ndarray:
        """(N, D) float32 L2-normalised image embeddings."""
        return run_generator(self.iter_encode_images(images, batch_size=batch_size, cache=cache))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 L2-normalised text embeddings (memoised)."""
        return _encode.encode_texts(self, texts)

    def save(self, path: str | os.PathLike[str], extra_meta: dict | None = None) -> Path:
        """Write a napari-clipmed checkpoint that `load_model("local", weights=path)` rebuilds."""
        meta = spec_to_meta(self.spec, arch_config_of(self.spec)) | (extra_meta or {})
        return save_checkpoint(self.module.state_dict(), path, meta)


def arch_config_of(spec: ModelSpec) -> dict:
    """The open_clip config dict of `spec`'s architecture."""
    if spec.arch_config is not None:
        return spec.arch_config
    import open_clip

    config = open_clip.get_model_config(spec.arch)
    if config is None:
        raise CheckpointError(
            f"unknown open_clip architecture {spec.arch!r}; known ones include: "
            + ", ".join(open_clip.list_models()[:12])
            + " ..."
        )
    return config


def spec_to_meta(spec: ModelSpec, arch_config: dict) -> dict:
    return {
        "name": spec.name,
        "arch": spec.arch,
        "arch_config": arch_config,
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "tokenizer": spec.tokenizer_name,
    }


def _spec_from_checkpoint(spec: ModelSpec, checkpoint: Checkpoint) -> ModelSpec:
    meta = checkpoint.meta
    changes: dict = {}
    if meta:
        changes = {
            "arch": meta.get("arch", spec.arch),
            "image_size": int(meta.get("image_size", spec.image_size)),
            "mean": tuple(meta.get("mean", spec.mean)),
            "std": tuple(meta.get("std", spec.std)),
            "tokenizer": meta.get("tokenizer", spec.tokenizer),
        }
    if checkpoint.arch_config is not None:
        changes["arch_config"] = checkpoint.arch_config
        changes["image_size"] = int(checkpoint.arch_config["vision_cfg"].get("image_size", spec.image_size))
    return spec.with_changes(**changes) if changes else spec


def build_module(spec: ModelSpec) -> torch.nn.Module:
    """An open_clip CLIP network for `spec`, randomly initialised with `spec.seed`."""
    import open_clip

    config = dict(arch_config_of(spec))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if "custom_text" in config or config.get("text_cfg", {}).get("hf_model_name"):
            return open_clip.CustomTextCLIP(**config)
        return open_clip.CLIP(**config)


def _make_tokenizer(spec: ModelSpec, module: torch.nn.Module) -> object:
    import open_clip

    context = int(getattr(module, "context_length", 77))
    try:
        return open_clip.get_tokenizer(spec.tokenizer_name, context_length=context)
    except Exception:  # noqa: BLE001 - an unknown or unreachable tokenizer: fall back to CLIP's BPE
        return open_clip.SimpleTokenizer(context_length=context)


def load_model(
    name: str | ModelSpec,
    weights: str | os.PathLike[str] | None = None,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    precision: Precision = "auto",
    allow_download: bool = True,
) -> ClipModel:
    """Build model `name` from the registry and load its weights.

    `weights` names a checkpoint (file or Hugging Face folder) explicitly; otherwise the weights
    folder and then the hub are tried (see `weights.resolve_weights`).
    """
    spec = get_spec(name)
    path = resolve_weights(spec, weights, weights_dir=weights_dir, allow_download=allow_download)
    checkpoint = read_checkpoint(path) if path is not None else None
    if checkpoint is not None:
        spec = _spec_from_checkpoint(spec, checkpoint)
    module = build_module(spec)
    if checkpoint is not None:
        check_compatible(module, checkpoint.state_dict, what=f"model {spec.name!r} (architecture {spec.arch})")
        module.load_state_dict(checkpoint.state_dict, strict=True)
    target = pick_device(device)
    module = module.to(target).eval()
    model = ClipModel(
        spec=spec,
        module=module,
        tokenizer=_make_tokenizer(spec, module),
        device=target,
        precision="fp32" if target.type == "cpu" else resolve_precision(target, precision),
        weights_path=path,
    )
    if target.type == "cpu":  # once per load: the user's precision, or auto's measured choice
        model.precision_choice = decide(model, precision)
        model.precision = model.precision_choice.precision
    return model
