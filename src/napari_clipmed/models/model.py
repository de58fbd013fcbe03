"""The loaded-model type: a CLIP network with its tokenizer, preprocessing spec, device and identity.

This module holds the type only. Building one is `models.loader.load_model`; encoding is
`models.encode`, which imports this module (never the other way round at import time: the
encoding methods below import it when called), so the package has no import cycle.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from napari_clipmed.models.device import describe
from napari_clipmed.models.registry import ModelSpec
from napari_clipmed.progress import ProgressGenerator, run_generator

if TYPE_CHECKING:
    from napari_clipmed.models.cache import EmbeddingCache
    from napari_clipmed.models.images import ImageBatch

ENCODER_VERSION = "1"  # bump when preprocessing changes, so cached embeddings are not reused
IDENTITY_HEX = 16  # hex digits of the weights hash in `ClipModel.identity`


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
    def name(self) -> str:
        """The registry name (``plip``, ``openai-vit-b-16``, ``local``...)."""
        return self.spec.name

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
    def identity(self) -> str:
        """The one name of this model and its exact weights, e.g. ``plip:0123456789abcdef``.

        Every index, store and run record names its model with this string, so an index saved by
        the CLI loads in the widget and in `api` and the other way round; embeddings of two
        identities are never mixed. (The embedding cache keys on the finer `signature`, which also
        covers preprocessing and precision.)
        """
        return f"{self.spec.name}:{self.weights_hash[:IDENTITY_HEX]}"

    @property
    def signature(self) -> str:
        """What decides an image's embedding: model, weights, preprocessing, precision, encoder version."""
        spec = self.spec
        parts: tuple = (spec.name, spec.arch, self.weights_hash, spec.image_size, spec.mean, spec.std, self.precision,
                        ENCODER_VERSION)
        if (spec.resize, spec.interpolation) != ("crop", "bicubic"):  # only then, so existing caches stay valid
            parts += (spec.resize, spec.interpolation)
        return hashlib.blake2b(repr(parts).encode(), digest_size=16).hexdigest()

    def iter_encode_images(
        self, images: ImageBatch, *, batch_size: int = 64, cache: EmbeddingCache | None = None
    ) -> ProgressGenerator[np.ndarray]:
        """Generator form of `encode_images` (yields Progress per batch)."""
        from napari_clipmed.models import encode

        return encode.iter_encode_images(self, images, batch_size=batch_size, cache=cache)

    def encode_images(
        self, images: ImageBatch, *, batch_size: int = 64, cache: EmbeddingCache | None = None
    ) -> np.ndarray:
        """(N, D) float32 L2-normalised image embeddings."""
        return run_generator(self.iter_encode_images(images, batch_size=batch_size, cache=cache))

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32 L2-normalised text embeddings (memoised)."""
        from napari_clipmed.models import encode

        return encode.encode_texts(self, texts)

    def save(self, path: str | os.PathLike[str], extra_meta: dict | None = None) -> Path:
        """Write a napari-clipmed checkpoint that `load_model("local", weights=path)` rebuilds."""
        from napari_clipmed.models.checkpoint import save_checkpoint
        from napari_clipmed.models.loader import arch_config_of, spec_to_meta

        meta = spec_to_meta(self.spec, arch_config_of(self.spec)) | (extra_meta or {})
        return save_checkpoint(self.module.state_dict(), path, meta)
