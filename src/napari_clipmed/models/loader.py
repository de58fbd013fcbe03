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
from napari_clipmed.models.backends import OPEN_CLIP, get_backend
from napari_clipmed.models.bundle import is_bundle, spec_for_bundle
from napari_clipmed.models.cache import EmbeddingCache
from napari_clipmed.models.checkpoint import (
    Checkpoint,
    check_compatible,
    read_checkpoint,
    save_checkpoint,
)
from napari_clipmed.models.device import (
    Precision,
    describe,
    pick_device,
    resolve_precision,
)
from napari_clipmed.models.folders import is_open_clip_folder, spec_from_folder
from napari_clipmed.models.images import ImageBatch
from napari_clipmed.models.registry import FOLDER_ARCH, ModelSpec, get_spec
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
    text_memo: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _weights_hash: str | None = field(default=None, repr=False)

    @property
    def embed_dim(self) -> int:
        if isinstance(getattr(self.module, "embed_dim", None), int):  # a backend's network says it
            return int(self.module.embed_dim)
        if hasattr(self.module, "text_projection"):
            return int(self.module.text_projection.shape[1])
        towers = (getattr(self.module, "visual", None), getattr(self.module, "text", None))  # timm / HF towers
        return next(int(t.output_dim) for t in towers if isinstance(getattr(t, "output_dim", None), int))

    @property
    def logit_scale(self) -> float:
        scale = self.module.logit_scale.detach().exp().reshape(-1)[0]
        return float(scale.clamp(max=100.0) if self.scoring == "softmax" else scale)

    @property
    def scoring(self) -> str:
        """The model's own zero-shot rule: ``softmax`` over classes, or ``sigmoid`` per class (SigLIP)."""
        return self.spec.scoring

    @property
    def logit_bias(self) -> float:
        """The bias of sigmoid scoring (0 for models without one)."""
        bias = getattr(self.module, "logit_bias", None)
        return float(bias.detach().reshape(-1)[0]) if isinstance(bias, torch.Tensor) else 0.0

    @property
    def device_label(self) -> str:
        return describe(self.device, self.precision)

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
    if spec.arch == FOLDER_ARCH:
        raise CheckpointError(
            f"model {spec.name!r} is published as an open_clip folder (open_clip_config.json, weights, text "
            f"tower files): pass that folder, e.g. a bundle from `clipmed models pull {spec.name} --to DIR`, not a file"
        )
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
    custom_text = config.pop("custom_text", False) or config.get("text_cfg", {}).get("hf_model_name")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if "multimodal_cfg" in config:
            return open_clip.CoCa(**config)
        if custom_text:
            return open_clip.CustomTextCLIP(**config)
        return open_clip.CLIP(**config)


def _make_tokenizer(spec: ModelSpec, module: torch.nn.Module) -> object:
    import open_clip

    context = int(arch_config_of(spec).get("text_cfg", {}).get("context_length") or getattr(module, "context_length", 77))
    if spec.hf_tokenizer:  # a Hugging Face text tower: its tokenizer from the local folder, never the hub
        from open_clip.tokenizer import HFTokenizer

        from napari_clipmed.models.tokens import require_tokenizer_files

        require_tokenizer_files(Path(spec.hf_tokenizer), what=f"model {spec.name!r}")
        kwargs = arch_config_of(spec).get("text_cfg", {}).get("tokenizer_kwargs", {})
        return HFTokenizer(spec.hf_tokenizer, context_length=context, local_files_only=True, **kwargs)
    try:
        return open_clip.get_tokenizer(spec.tokenizer_name, context_length=context)
    except Exception:  # noqa: BLE001 - an unknown or unreachable tokenizer: fall back to CLIP's BPE
        return open_clip.SimpleTokenizer(context_length=context)


def _drop_stale_buffers(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Remove buffers older checkpoints saved that today's modules no longer keep (as open_clip does)."""
    expected = module.state_dict()
    for key in [k for k in state if k.endswith("embeddings.position_ids") and k not in expected]:
        del state[key]


def _load_with_backend(spec: ModelSpec, path: Path | None, device: str | torch.device | None,
                       precision: Precision) -> ClipModel:
    """A model built by a non-open_clip backend (`models.backends`), wrapped like any other."""
    target = pick_device(device)
    network = get_backend(spec.backend).load(spec, path, target)
    return ClipModel(
        spec=network.spec,
        module=network.module.to(target).eval(),
        tokenizer=network.tokenizer,
        device=target,
        precision=resolve_precision(target, precision),
        weights_path=path,
    )


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
    if path is not None and is_bundle(path):
        spec = spec_for_bundle(spec, path)
    if spec.backend != OPEN_CLIP:
        return _load_with_backend(spec, path, device, precision)
    if path is not None and is_open_clip_folder(path):
        spec = spec_from_folder(spec, path)
    checkpoint = read_checkpoint(path, trusted_pickle=spec.trusted_pickle) if path is not None else None
    if checkpoint is not None:
        spec = _spec_from_checkpoint(spec, checkpoint)
    module = build_module(spec)
    if checkpoint is not None:
        _drop_stale_buffers(module, checkpoint.state_dict)
        check_compatible(module, checkpoint.state_dict, what=f"model {spec.name!r} (architecture {spec.arch})")
        module.load_state_dict(checkpoint.state_dict, strict=True)
    target = pick_device(device)
    module = module.to(target).eval()
    return ClipModel(
        spec=spec,
        module=module,
        tokenizer=_make_tokenizer(spec, module),
        device=target,
        precision=resolve_precision(target, precision),
        weights_path=path,
    )
