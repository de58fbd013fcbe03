"""Photometric and resampling corruptions as batched torch operations.

Every function takes a float work tensor of shape (N, 3, H, W) (contiguous, on any device)
with values in [0, top] (top = 1 for [0, 1] data, 255 for 8-bit levels) and returns the result;
the photometric ones work in place on that buffer (the caller owns a copy of the user's data).
Channels-first keeps each channel a contiguous plane, so per-pixel arithmetic across channels
vectorises (on CPU it is several times faster than on interleaved channels-last data). The formulas follow the
reference implementations named in `docs/corruptions.md` (scikit-image HSV conversions,
scipy.ndimage.gaussian_filter, Pillow BOX/NEAREST resizing) so the tests can compare
against them directly; the tensors make them run on a whole batch at once, on CPU or GPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

BLUR_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: kernel radius = int(4 * sigma + 0.5)


# --------------------------------------------------------------------------- HSV

_TINY = 1e-12


def _ch(x: torch.Tensor, i: int) -> torch.Tensor:
    """Channel i as an (N, 1, H, W) view."""
    return x[:, i : i + 1]


def _max3(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel maximum over the three channels, (N, 1, H, W): HSV value."""
    out = torch.maximum(_ch(x, 0), _ch(x, 1))
    return torch.maximum(out, _ch(x, 2), out=out)


def _min3(x: torch.Tensor) -> torch.Tensor:
    out = torch.minimum(_ch(x, 0), _ch(x, 1))
    return torch.minimum(out, _ch(x, 2), out=out)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] -> HSV like skimage.color.rgb2hsv (hue in turns, 0 for grey), channels on dim 1."""
    v = _max3(x)
    c = v - _min3(x)
    h6 = _hue6(x, v, c)
    h = torch.where(c > 0, h6 / 6.0, torch.zeros_like(h6))
    s = c / v.clamp(min=_TINY)
    return torch.cat([h, s, v], dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV (hue in turns) -> RGB like skimage.color.hsv2rgb, channels on dim 1."""
    h, s, v = _ch(hsv, 0), _ch(hsv, 1), _ch(hsv, 2)
    out = torch.empty_like(hsv)
    _write_rgb(out, h * 6.0, v, s * v)
    return out


def _hue6(x: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Hue in sixths of a turn, [0, 6), with skimage's tie order (blue, then green, then red max)."""
    r, g, b = _ch(x, 0), _ch(x, 1), _ch(x, 2)
    safe = c.clamp(min=_TINY)
    h6 = (g - b).div_(safe)
    h6 = torch.where(g == v, (b - r).div_(safe).add_(2.0), h6)
    h6 = torch.where(b == v, (r - g).div_(safe).add_(4.0), h6)
    return h6.remainder_(6.0)


def _write_rgb(out: torch.Tensor, h6: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> None:
    """RGB from hue (sixths), value and chroma into `out`: channel = v - c * clamp(min(k, 4 - k), 0, 1).

    k = (n + h6) mod 6 with n = 5, 3, 1 for R, G, B: the closed form of the HSV hexcone.
    """
    for channel, n in enumerate((5.0, 3.0, 1.0)):
        k = torch.remainder(h6 + n, 6.0)
        ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.addcmul(v, c, ramp, value=-1.0, out=_ch(out, channel))


def shift_brightness(x: torch.Tensor, delta: float, top: float = 1.0) -> torch.Tensor:
    """Add `delta` (fraction of full scale) to HSV value, clipped; hue and saturation kept. In place.

    With H and S fixed every channel scales by V'/V; black pixels (no hue) become grey V'.
    `top` is the full-scale value of `x` (1 for [0, 1] data, 255 for 8-bit levels).
    """
    v = _max3(x)
    new_v = (v + delta * top).clamp_(0.0, top)
    black = v <= 0
    x.mul_(new_v.div_(v.clamp_(min=_TINY)))
    if bool(black.any()):
        x.masked_fill_(black, min(max(delta, 0.0), 1.0) * top)
    return x.clamp_(0.0, top)


def shift_saturation(x: torch.Tensor, delta: float, top: float = 1.0) -> torch.Tensor:
    """Add `delta` to HSV saturation, clipped to [0, 1]. In place.

    Each channel keeps its position between V and the grey axis: c' = V - (S'/S)(V - c). Grey
    pixels have hue 0 (red) in skimage, so they become (V, V(1 - S'), V(1 - S')) as there.
    """
    v = _max3(x)
    chroma = v - _min3(x)
    s = chroma / v.clamp(min=_TINY)
    ratio = (s + delta).clamp_(0.0, 1.0).div_(s.clamp(min=_TINY))
    x.sub_(v).mul_(ratio).add_(v)
    grey = chroma <= 0
    if bool(grey.any()):
        gb = x[:, 1:3]
        gb[grey.expand_as(gb)] = (v * (1.0 - min(max(delta, 0.0), 1.0))).expand_as(gb)[grey.expand_as(gb)]
    return x.clamp_(0.0, top)


def shift_hue(x: torch.Tensor, delta: float, top: float = 1.0) -> torch.Tensor:
    """Rotate HSV hue by `delta` turns (wrapping around); saturation and value kept. In place."""
    v = _max3(x)
    chroma = v - _min3(x)
    h6 = _hue6(x, v, chroma).add_(6.0 * delta).remainder_(6.0)
    _write_rgb(x, h6, v, chroma)
    return x.clamp_(0.0, top)


# --------------------------------------------------------------------------- contrast


def scale_contrast(x: torch.Tensor, factor: float, top: float = 1.0) -> torch.Tensor:
    """ImageNet-C contrast: (x - mean) * factor + mean, mean per image and channel, clipped. In place."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return x.mul_(factor).add_(mean.mul_(1.0 - factor)).clamp_(0.0, top)


# --------------------------------------------------------------------------- Gaussian blur


def blur_radius(sigma: float) -> int:
    """Kernel radius scipy.ndimage.gaussian_filter uses for `sigma` (truncate = 4)."""
    return int(BLUR_TRUNCATE * float(sigma) + 0.5)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian kernel scipy uses (float64, length 2 * radius + 1)."""
    radius = blur_radius(sigma)
    if radius == 0:
        return np.ones(1)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / (float(sigma) ** 2) * t * t)
    return phi / phi.sum()


def _mirror_index(length: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a row padded by `radius` with scipy's 'reflect' mode (d c b a | a b c d | d c b a)."""
    i = torch.arange(-radius, length + radius, device=device)
    period = 2 * length
    j = torch.remainder(i, period)
    return torch.where(j >= length, period - 1 - j, j)


def _blur_rows(planes: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve (M, L, C) along L; the C columns are independent channels of a depthwise conv.

    Viewing the contiguous (M, L, C) block as a channels-last (M, C, L, 1) image lets the conv
    run over long contiguous channel vectors, much faster than many tiny 1-D convolutions.
    """
    m, length, cols = planes.shape
    radius = (kernel.numel() - 1) // 2
    padded = planes.index_select(1, _mirror_index(length, radius, planes.device))
    as_image = padded.view(m, length + 2 * radius, 1, cols).permute(0, 3, 1, 2)
    weight = kernel.view(1, 1, -1, 1).expand(cols, 1, -1, 1).contiguous()
    out = F.conv2d(as_image, weight, groups=cols)
    return out.permute(0, 2, 3, 1).reshape(m, length, cols)


def gaussian_blur(x: torch.Tensor, sigma: float, top: float = 1.0) -> torch.Tensor:
    """Separable Gaussian blur of each channel, as scipy.ndimage.gaussian_filter(mode='reflect').

    The vertical pass treats the W columns of each plane as channels; the horizontal pass does
    the same on the transposed planes.
    """
    if blur_radius(sigma) == 0:
        return x.clone()
    n, ch, h, w = x.shape
    kernel = torch.as_tensor(gaussian_kernel(sigma), dtype=x.dtype, device=x.device)
    vertical = _blur_rows(x.reshape(n * ch, h, w), kernel)
    horizontal = _blur_rows(vertical.transpose(1, 2).contiguous(), kernel)
    return horizontal.transpose(1, 2).reshape(n, ch, h, w).clamp_(0.0, top)


# --------------------------------------------------------------------------- resolution


def scaled_size(size: int, factor: float) -> int:
    """Downscaled side length, as ImageNet-C's pixelate computes it: int(size * factor)."""
    return int(size * float(factor))


def box_bounds(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last input pixel averaged into each output pixel by Pillow's BOX filter.

    Replicates Pillow's `precompute_coeffs` (Resample.c) for the box filter, whose weights are
    all 0 or 1, so each output pixel is a plain mean over a run of input pixels.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    centers = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((centers - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum((centers + support + 0.5).astype(np.int64), in_size)
    ksize = int(math.ceil(support)) * 2 + 1
    offsets = np.arange(ksize)
    pos = xmin[:, None] + offsets[None, :]
    arg = (pos - centers[:, None] + 0.5) / filterscale
    weight = (arg > -0.5) & (arg <= 0.5) & (pos < xmax[:, None])
    first = xmin + np.argmax(weight, axis=1)
    last = xmin + ksize - np.argmax(weight[:, ::-1], axis=1)
    return first, last


def _take(x: torch.Tensor, index: np.ndarray, dim: int) -> torch.Tensor:
    """x gathered at `index` along `dim` (rows: index_select; the last dim: gather, faster there)."""
    idx = torch.as_tensor(index, device=x.device)
    if dim != x.dim() - 1:
        return x.index_select(dim, idx)
    shape = list(x.shape)
    shape[-1] = len(index)
    return torch.gather(x, dim, idx.expand(shape))


def _box_down(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """Pillow BOX downscale along `dim`: each output is the mean of a run of 1..k input pixels.

    Computed as k weighted gathers (k = the longest run, about 1 / factor), no dense matrix.
    """
    first, last = box_bounds(x.shape[dim], out_size)
    count = last - first
    shape = [1] * x.dim()
    shape[dim] = out_size
    out = None
    for k in range(int(count.max())):
        weight = torch.as_tensor(np.where(k < count, 1.0 / count, 0.0), dtype=x.dtype, device=x.device)
        term = _take(x, np.minimum(first + k, last - 1), dim).mul_(weight.view(shape))
        out = term if out is None else out.add_(term)
    assert out is not None
    return out


def nearest_index(in_size: int, out_size: int) -> np.ndarray:
    """Source pixel of each output pixel for Pillow's NEAREST resize, about floor((i + 0.5) * in / out).

    Pillow (Geometry.c, ImagingScaleAffine) accumulates the position by repeated float64
    additions; a sequential cumulative sum reproduces its rounding exactly.
    """
    step = in_size / out_size
    steps = np.full(out_size, step, dtype=np.float64)
    steps[0] = step * 0.5
    idx = np.floor(np.cumsum(steps)).astype(np.int64)
    return np.clip(idx, 0, in_size - 1)


def _quantize(x: torch.Tensor, top: float) -> torch.Tensor:
    """Round to the 256 levels of an 8-bit image in place (Pillow keeps uint8 between passes)."""
    if top == 255.0:
        return x.add_(0.5 + 1e-3).floor_()  # Pillow rounds halves up; 1e-3 absorbs float error
    return x.mul_(255.0 / top).add_(0.5 + 1e-3).floor_().mul_(top / 255.0)


def pixelate(x: torch.Tensor, factor: float, top: float = 1.0, quantize: bool = True) -> torch.Tensor:
    """BOX downscale by `factor` then NEAREST upscale to the input size, like Pillow (ImageNet-C pixelate).

    `quantize` rounds to 8-bit levels after each BOX pass, as Pillow does for uint8 images.
    """
    n, ch, h, w = x.shape
    small_h, small_w = max(scaled_size(h, factor), 1), max(scaled_size(w, factor), 1)
    if (small_h, small_w) == (h, w):
        return x.clone()
    out = x
    if small_w != w:  # Pillow resamples horizontally first
        out = _box_down(out, small_w, dim=3)
        out = _quantize(out, top) if quantize else out
    if small_h != h:
        out = _box_down(out, small_h, dim=2)
        out = _quantize(out, top) if quantize else out
    out = _take(out, nearest_index(small_h, h), dim=2)
    return _take(out, nearest_index(small_w, w), dim=3).clamp_(0.0, top)
