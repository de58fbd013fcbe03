"""`corrupt`: the study's seven corruptions at severities 0..4 on one image or a batch.

Accepts numpy arrays (H, W, C) or (N, H, W, C) and torch tensors in the same channels-last
layout or channels-first (C, H, W) / (N, C, H, W); C is 3 (RGB) or 4 (RGBA: the alpha channel
is passed through untouched). Values are uint8 (0..255) or float in [0, 1]. The result has the
input's type, dtype, layout and device (a CUDA tensor is corrupted on the GPU). The input is
never modified. Grayscale is refused: colour corruptions (hue, saturation) are undefined on it.

The work is done once, on float tensors (N, 3, H, W) in small chunks, by `ops` and `markup`.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

from napari_clipmed.errors import InputError
from napari_clipmed.pathology import markup, ops
from napari_clipmed.pathology.params import Corruption, check_severity, get_corruption

ImageT = TypeVar("ImageT", np.ndarray, torch.Tensor)

CHUNK_PIXELS = 1 << 18  # images per chunk: about 260 k pixels (5 tiles of 224 x 224), cache-sized
MIN_RESOLUTION_SIDE = 2  # the downscaled image must keep at least this many pixels per side
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NUMPY_DTYPES = (torch.uint8, torch.float32, torch.float64)


def corrupt(
    images: ImageT,
    kind: str,
    severity: float,
    seed: int | np.random.SeedSequence | None = None,
    first: int = 0,
) -> ImageT:
    """Corrupt `images` with `kind` at `severity` (0 = unchanged, 1..4 = the study's levels).

    Fractional severities interpolate the parameter (`params.parameter_at`). `seed` only
    matters for "markup": image i of a batch gets strokes from `SeedSequence(seed).spawn(N)[i]`,
    so a single image gets the same ink as the first image of a batch; None draws fresh ink.
    `first` says the batch is images first, first+1, ... of a larger one: image i then gets child
    first + i, so corrupting a batch in chunks (e.g. one per cluster task) gives the whole batch's ink.
    """
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
        raise InputError(f"first (the batch's offset in a larger batch) must be a whole number >= 0; got {first!r}")
    spec = get_corruption(kind)
    s = check_severity(severity)
    x, channels_last, batched = _as_batch(images)
    n, h, w = _dims(x, channels_last)
    _check_size(spec, s, h, w)
    if s == 0 or n == 0:
        return images.copy() if isinstance(images, np.ndarray) else images.clone()

    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    seeds = markup.seed_sequences(seed, n, int(first)) if spec.name == "markup" else []
    chunk = max(1, min(n, CHUNK_PIXELS // max(1, h * w)))
    work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    top = 255.0 if x.dtype == torch.uint8 else 1.0  # work in the input's own scale: no /255 and *255
    buffer = torch.empty((chunk, 3, h, w), dtype=work_dtype, device=x.device)
    staging = torch.empty((chunk, h, w, 3), dtype=work_dtype, device=x.device) if channels_last else None
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        part, target = x[start:stop], out[start:stop]
        work = buffer[: stop - start]
        _copy(work, part[..., :3].permute(0, 3, 1, 2) if channels_last else part[:, :3])
        y = _apply(spec, s, work, seeds[start:stop], top)
        if x.dtype == torch.uint8:
            y = y.clamp_(0.0, 255.0).add_(0.5)  # the cast truncates: round half up
        if staging is not None:  # transpose in float (fast), then a contiguous cast
            stage = staging[: stop - start]
            stage.copy_(y.permute(0, 2, 3, 1))
            _copy(target[..., :3], stage)
            if x.shape[-1] == 4:  # RGBA: alpha passes through
                target[..., 3] = part[..., 3]
        else:
            _copy(target[:, :3], y)
            if x.shape[1] == 4:
                target[:, 3] = part[:, 3]

    result = out if batched else out[0]
    return result.numpy() if isinstance(images, np.ndarray) else result


def _copy(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst[...] = src with dtype conversion (float -> uint8 truncates); numpy's casts are faster on CPU."""
    numpy_ok = dst.dtype in _NUMPY_DTYPES and src.dtype in _NUMPY_DTYPES
    if numpy_ok and dst.device.type == "cpu" and src.device.type == "cpu":
        np.copyto(dst.numpy(), src.numpy(), casting="unsafe")
    else:
        dst.copy_(src)


def _apply(
    spec: Corruption, severity: float, x: torch.Tensor, seeds: Sequence[np.random.SeedSequence], top: float
) -> torch.Tensor:
    """Run one corruption on a float work chunk (N, 3, H, W) in [0, top]; may overwrite it."""
    value = spec.parameter_at(severity)
    name = spec.name
    if name == "brightness":
        return ops.shift_brightness(x, value, top)
    if name == "contrast":
        return ops.scale_contrast(x, value, top)
    if name == "blur":
        return ops.gaussian_blur(x, value, top)
    if name == "resolution":
        return ops.pixelate(x, value, top, quantize=top == 255.0)
    if name == "saturation":
        return ops.shift_saturation(x, value, top)
    if name == "hue":
        return ops.shift_hue(x, value, top)
    if name == "markup":
        return markup.apply_markup(x, severity, seeds, top)
    raise AssertionError(f"no implementation for {name}")  # the table and this dispatch disagree


# --------------------------------------------------------------------------- boundary


def _as_batch(images: object) -> tuple[torch.Tensor, bool, bool]:
    """A 4-D tensor view of `images` (no copy), whether channels are last, whether it was a batch."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise InputError(
                f"images must be uint8 (0..255) or float (0..1); got {images.dtype}. "
                "Convert first, e.g. (img / img.max() * 255).astype(np.uint8)."
            )
        arr = images
        if not arr.flags.writeable or any(st < 0 for st in arr.strides):
            arr = np.array(arr)  # torch needs writable memory with positive strides; we only read it
        x = torch.from_numpy(arr)
        channels_last = True
    elif isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 and images.dtype not in _FLOAT_DTYPES:
            raise InputError(f"images must be uint8 (0..255) or float (0..1); got {images.dtype}")
        x = images.detach()
        channels_last = x.dim() >= 3 and x.shape[-1] in (3, 4)
    else:
        raise InputError(
            f"images must be a numpy array or torch tensor (H, W, 3) or (N, H, W, 3); got {type(images).__name__}"
        )
    _check_channels(x, channels_last, is_numpy=isinstance(images, np.ndarray))
    if x.dtype != torch.uint8:
        _check_unit_range(x)
    batched = x.dim() == 4
    return (x if batched else x.unsqueeze(0)), channels_last, batched


def _check_channels(x: torch.Tensor, channels_last: bool, is_numpy: bool) -> None:
    """Accept 3 (RGB) or 4 (RGBA) channels; explain grayscale and other shapes."""
    shape = tuple(x.shape)
    layout = "(H, W, 3) or (N, H, W, 3)" if is_numpy else "(H, W, 3), (N, H, W, 3), (3, H, W) or (N, 3, H, W)"
    grey = x.dim() == 2 or (
        x.dim() in (3, 4) and (x.shape[-1] == 1 or (not is_numpy and not channels_last and x.shape[-3] == 1))
    )
    if grey:
        raise InputError(
            f"grayscale images (shape {shape}) are not supported: hue and saturation need colour. "
            f"Repeat the channel to make RGB (numpy: np.repeat(img[..., None], 3, axis=-1)); expected {layout}"
        )
    channels = x.shape[-1] if channels_last else (x.shape[-3] if x.dim() >= 3 else 0)
    if x.dim() not in (3, 4) or channels not in (3, 4):
        raise InputError(
            f"expected an RGB(A) image or a batch of them, {layout}; got shape {shape} "
            "(a stack of grayscale images has no channel axis: repeat it to make RGB)"
        )


def _check_unit_range(x: torch.Tensor) -> None:
    if x.numel() == 0:
        return
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise InputError(
            f"float images must hold values in [0, 1]; got min {lo:g}, max {hi:g}. "
            "Divide 8-bit data by 255 or pass it as uint8."
        )


def _dims(x: torch.Tensor, channels_last: bool) -> tuple[int, int, int]:
    return (x.shape[0], x.shape[1], x.shape[2]) if channels_last else (x.shape[0], x.shape[2], x.shape[3])


def _check_size(spec: Corruption, severity: float, h: int, w: int) -> None:
    """Refuse images too small for the corruption at this severity, with the size it needs."""
    if h < 1 or w < 1:
        raise InputError(f"images must have at least one pixel; got {h} x {w}")
    if severity == 0:
        return
    value = spec.parameter_at(severity)
    if spec.name == "blur":
        size = 2 * ops.blur_radius(value) + 1
        if min(h, w) < size:
            raise InputError(
                f"blur at severity {severity:g} (sigma {value:g} px) needs images of at least "
                f"{size} x {size} px, the size of its kernel; got {h} x {w}"
            )
    elif spec.name == "resolution":
        if min(ops.scaled_size(h, value), ops.scaled_size(w, value)) < MIN_RESOLUTION_SIDE:
            side = math.ceil(MIN_RESOLUTION_SIDE / value)
            raise InputError(
                f"resolution at severity {severity:g} (scale {value:g}) needs images of at least "
                f"{side} x {side} px so the downscaled image keeps {MIN_RESOLUTION_SIDE} px per side; got {h} x {w}"
            )
    elif spec.name == "markup" and min(h, w) < markup.MIN_SIDE:
        raise InputError(f"markup needs images of at least {markup.MIN_SIDE} x {markup.MIN_SIDE} px; got {h} x {w}")


class _CallableModule(types.ModuleType):
    """`from napari_clipmed.pathology import corrupt` may give this module (once it is imported, the
    package attribute is the submodule): calling it calls `corrupt`, so the documented call works."""

    def __call__(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN204
        return corrupt(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
