"""Batched image and text encoding into L2-normalised embeddings.

Images are grouped by shape, stacked, moved to the device and preprocessed there as tensors
(no PIL round trip per image); the model runs under `torch.inference_mode` and, on a GPU,
half-precision autocast. On a CPU, batches are cut into cache-sized forwards and a ViT runs through
`cpu_fastpath` (oneDNN GEMMs, fused attention; same result to fp32 rounding). With an
`EmbeddingCache`, images seen before skip the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_clipmed.errors import InputError
from napari_clipmed.models.cache import EmbeddingCache, image_key
from napari_clipmed.models.cpu_fastpath import supports_fast_forward, vision_forward
from napari_clipmed.models.device import autocast
from napari_clipmed.models.images import (
    ImageBatch,
    as_image_list,
    group_by_shape,
    preprocess_batch,
    stack_to_tensor,
    to_hwc,
)
from napari_clipmed.models.model import ClipModel
from napari_clipmed.models.tokens import check_context
from napari_clipmed.progress import Progress, ProgressGenerator

log = logging.getLogger(__name__)


def _validated(images: ImageBatch) -> list[np.ndarray]:
    items = as_image_list(images)
    if not items:
        raise InputError("no images to encode (the batch is empty)")
    return [to_hwc(image, i) for i, image in enumerate(items)]


# On a CPU, a ViT runs fastest when one forward's activations stay in cache: about this many
# tokens per forward (measured on ViT-B/16 and B/32, see docs/performance.md).
CPU_TOKENS_PER_FORWARD = 1024


def cpu_micro_batch(visual: torch.nn.Module) -> int:
    """Images per forward on a CPU: `CPU_TOKENS_PER_FORWARD` tokens, at least one image."""
    positions = getattr(visual, "positional_embedding", None)
    tokens = int(positions.shape[0]) if isinstance(positions, torch.Tensor) else 256
    return max(1, CPU_TOKENS_PER_FORWARD // tokens)


def _run_image_model(model: ClipModel, batch: torch.Tensor) -> torch.Tensor:
    spec = model.spec
    pixels = preprocess_batch(batch, spec.image_size, spec.mean, spec.std, resize=spec.resize,
                              interpolation=spec.interpolation)
    if model.device.type != "cpu":
        with autocast(model.device, model.precision):
            features = model.module.encode_image(pixels)
        return F.normalize(features.float(), dim=-1)
    visual = getattr(model.module, "visual", None)  # None: a backend's network (`models.backends`)
    fast = model.cpu_fastpath and model.precision == "fp32" and supports_fast_forward(visual)
    step = cpu_micro_batch(visual)
    chunks = []
    with autocast(model.device, model.precision):
        for start in range(0, len(pixels), step):
            chunk = pixels[start : start + step]
            if fast:
                try:
                    chunks.append(vision_forward(visual, chunk))
                    continue
                except (RuntimeError, TypeError) as error:  # a torch build whose oneDNN op differs
                    log.warning("CPU fast path failed (%s); using open_clip's forward from now on", error)
                    model.cpu_fastpath = fast = False
            chunks.append(model.module.encode_image(chunk))
    return F.normalize(torch.cat(chunks).float(), dim=-1)


def iter_encode_images(
    model: ClipModel,
    images: ImageBatch,
    *,
    batch_size: int = 64,
    cache: EmbeddingCache | None = None,
) -> ProgressGenerator[np.ndarray]:
    """Encode images in batches; yields `Progress` per batch, returns an (N, D) float32 array.

    Every image is validated before any model work, so bad input changes nothing (and writes
    nothing to the cache).
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    items = _validated(images)
    total = len(items)
    out = np.empty((total, model.embed_dim), dtype=np.float32)
    todo = list(range(total))
    keys: list[str] = []
    if cache is not None:
        cache = cache.for_signature(model.signature)
        keys = [image_key(cache.signature, image) for image in items]
        hits = cache.get_many(keys)
        todo = []
        for i, key in enumerate(keys):
            if key in hits:
                out[i] = hits[key]
            else:
                todo.append(i)
    done = total - len(todo)
    yield Progress(done, total, f"encoding {total} images ({done} cached)")
    groups = group_by_shape([items[i] for i in todo])
    with torch.inference_mode():
        for indices in groups.values():
            members = [todo[j] for j in indices]
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                tensor = stack_to_tensor([items[i] for i in chunk], model.device)
                vectors = _run_image_model(model, tensor).cpu().numpy()
                out[chunk] = vectors
                if cache is not None:
                    cache.put_many([keys[i] for i in chunk], vectors)
                done += len(chunk)
                yield Progress(done, total, f"encoded {done} of {total} images")
    return out


def encode_texts(model: ClipModel, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
    """Encode texts into an (N, D) float32 array; results are memoised per model."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise InputError("no texts to encode (the list is empty)")
    if any(not isinstance(t, str) or not t.strip() for t in texts):
        raise InputError("every prompt must be a non-empty string")
    memo = model.text_memo
    missing = list(dict.fromkeys(t for t in texts if t not in memo))
    check_context(model.tokenizer, missing, model=model.spec.name)
    with torch.inference_mode():
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            tokens = model.tokenizer(chunk).to(model.device)
            with autocast(model.device, model.precision):
                features = model.module.encode_text(tokens)
            vectors = F.normalize(features.float(), dim=-1).cpu().numpy()
            memo.update(zip(chunk, vectors))
    return np.stack([memo[t] for t in texts]).astype(np.float32, copy=False)
