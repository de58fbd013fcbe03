"""Batched image and text encoding into L2-normalised embeddings.

Images are grouped by shape, stacked, moved to the device and preprocessed there as tensors
(no PIL round trip per image); the model runs under `torch.inference_mode` and, on a GPU,
half-precision autocast. On a CPU, batches are cut into cache-sized forwards; in fp32 a ViT runs
through `cpu_fastpath` (oneDNN GEMMs, fused attention; same result to fp32 rounding), in bf16 a bf16
copy of the image tower runs (see `precision`). Text embeddings are always fp32, and so is every
embedding returned or cached. With an `EmbeddingCache`, images seen before skip the model.
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
from napari_clipmed.models.precision import bf16_copy
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


def tokens_per_image(visual: torch.nn.Module | None) -> int:
    """A ViT's tokens per image (256 for towers without positional embeddings)."""
    positions = getattr(visual, "positional_embedding", None)
    return int(positions.shape[0]) if isinstance(positions, torch.Tensor) else 256


def cpu_micro_batch(visual: torch.nn.Module | None) -> int:
    """Images per forward on a CPU: `CPU_TOKENS_PER_FORWARD` tokens, at least one image."""
    return max(1, CPU_TOKENS_PER_FORWARD // tokens_per_image(visual))


def image_features(model: ClipModel, pixels: torch.Tensor, precision: str | None = None) -> torch.Tensor:
    """The image tower's float32 features of preprocessed `pixels`, in `precision` (default: the model's).

    On a GPU, half precision is autocast. On a CPU, forwards are cut into cache-sized chunks; fp32
    runs a ViT through the fast path, bf16 runs a bf16 copy of the image tower on bf16 inputs (not
    autocast, which was measured slower than fp32); the output is cast back to float32.
    """
    precision = precision or model.precision
    if model.device.type != "cpu":
        with autocast(model.device, precision):
            return model.module.encode_image(pixels).float()
    visual = getattr(model.module, "visual", None)  # None: a backend's network (`models.backends`)
    if precision == "bf16":
        if visual is None:
            raise InputError(f"model {model.spec.name!r} runs in fp32 only on a CPU (its backend has no image tower to cast)")
        visual = bf16_copy(visual)
        step = cpu_micro_batch(visual)
        chunks = [visual(pixels[s : s + step].to(torch.bfloat16)).float() for s in range(0, len(pixels), step)]
        return torch.cat(chunks)
    if precision != "fp32":
        raise InputError(f"precision {precision!r} does not run on a CPU: use fp32 or bf16")
    fast = model.cpu_fastpath and supports_fast_forward(visual)
    step = cpu_micro_batch(visual)
    chunks = []
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
    return torch.cat(chunks).float()


# On a CPU, images that the model's preprocessing shrinks are converted and resized in pieces of at
# most this many bytes of float input. A whole batch's float copies (64 tiles of 224 px: 38.5 MB
# each) are above glibc's largest mmap threshold (32 MB), so every batch mapped and page-faulted them
# afresh, only to resize them away: about 40 % of the tiny model's CPU time, most of it the kernel's.
# At the model's own size the float copy is the model's input, and one piece was measured 1-3 %
# faster (docs/performance.md, Encoder).
CPU_PREPROCESS_BYTES = 8 * 2**20


def preprocess_images(model: ClipModel, images: Sequence[np.ndarray]) -> torch.Tensor:
    """Same-shaped H x W x C arrays -> the model's normalised input pixels on its device."""
    spec = model.spec

    def pixels_of(part: Sequence[np.ndarray]) -> torch.Tensor:
        return preprocess_batch(stack_to_tensor(part, model.device), spec.image_size, spec.mean, spec.std,
                                resize=spec.resize, interpolation=spec.interpolation)

    height, width = images[0].shape[:2]
    step = max(1, CPU_PREPROCESS_BYTES // (height * width * 3 * 4))
    shrinks = min(height, width) > spec.image_size
    if model.device.type != "cpu" or not shrinks or step >= len(images):
        return pixels_of(images)
    return torch.cat([pixels_of(images[s : s + step]) for s in range(0, len(images), step)])


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
                pixels = preprocess_images(model, [items[i] for i in chunk])
                vectors = F.normalize(image_features(model, pixels), dim=-1).cpu().numpy()
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
            features = model.module.encode_text(tokens)  # fp32 in every precision: text is cheap, prompts matter
            vectors = F.normalize(features.float(), dim=-1).cpu().numpy()
            memo.update(zip(chunk, vectors))
    return np.stack([memo[t] for t in texts]).astype(np.float32, copy=False)
