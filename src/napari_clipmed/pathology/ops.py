"""Photometric and resampling corruptions as batched torch operations.

Every function takes and returns a float tensor of shape (N, 3, H, W) with values in [0, 1]
(contiguous, on any device) and never writes into its input. The formulas follow the
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


def _value_chroma(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HSV value (max channel) and chroma (max - min), each (N, 1, H, W)."""
    v = x.amax(dim=1, keepdim=True)
    c = v - x.amin(dim=1, keepdim=True)
    return v, c


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV like skimage.color.rgb2hsv (hue in turns, 0 for grey), channels stay on dim 1."""
    v, c = _value_chroma(x)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    safe_c = torch.where(c > 0, c, torch.ones_like(c))
    h = torch.where(
        b == v,
        4.0 + (r - g) / safe_c,
        torch.where(g == v, 2.0 + (b - r) / safe_c, (g - b) / safe_c),
    )
    h = torch.remainder(h / 6.0, 1.0)
    h = torch.where(c > 0, h, torch.zeros_like(h))
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    return torch.cat([h, s, v], dim=1)


def _hsv_to_rgb_vc(h: torch.Tensor, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """HSV -> RGB from hue (turns), value and chroma (= s * v), all (N, 1, H, W)."""
    n = torch.tensor([5.0, 3.0, 1.0], dtype=h.dtype, device=h.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h, 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return v - c * ramp


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV (hue in turns) -> RGB like skimage.color.hsv2rgb, channels on dim 1."""
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    return _hsv_to_rgb_vc(h, v, s * v)


def shift_brightness(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Add `delta` to HSV value, clipped to 1. With hue and saturation fixed, RGB scales by V'/V."""
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + delta).clamp_(0.0, 1.0)
    positive = v > 0
    scale = v_new / torch.where(positive, v, torch.ones_like(v))
    return torch.where(positive, x * scale, v_new.expand_as(x)).clamp_(0.0, 1.0)


def shift_saturation(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Add `delta` to HSV saturation, clipped to [0, 1]; grey pixels (hue 0) turn towards red as in skimage."""
    v, c = _value_chroma(x)
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    s_new = (s + delta).clamp_(0.0, 1.0)
    chromatic = c > 0
    # rgb = v - s * v * g(h): keep g(h) = (v - rgb) / c, replace s by s_new.
    ratio = s_new * v / torch.where(chromatic, c, torch.ones_like(c))
    coloured = v - ratio * (v - x)
    grey_pattern = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    grey = v - v * s_new * grey_pattern
    return torch.where(chromatic, coloured, grey).clamp_(0.0, 1.0)


def shift_hue(x: torch.Tensor, delta: float) -> torch.Tensor:
    """Rotate HSV hue by `delta` turns (wrapping around); saturation and value kept."""
    hsv = rgb_to_hsv(x)
    v, c = _value_chroma(x)
    h = torch.remainder(hsv[:, 0:1] + delta, 1.0)
    return _hsv_to_rgb_vc(h, v, c).clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- contrast


def scale_contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """ImageNet-C contrast: (x - mean) * factor + mean, mean per image and channel, clipped to [0, 1]."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp_(0.0, 1.0)


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


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of each channel, as scipy.ndimage.gaussian_filter(mode='reflect')."""
    if blur_radius(sigma) == 0:
        return x.clone()
    n, ch, h, w = x.shape
    kernel = torch.as_tensor(gaussian_kernel(sigma), dtype=x.dtype, device=x.device)
    planes = x.reshape(n * ch, h, w)
    vertical = _blur_rows(planes.contiguous(), kernel)  # along H, the W columns as channels
    horizontal = _blur_rows(vertical.transpose(1, 2).contiguous(), kernel)  # along W
    return horizontal.transpose(1, 2).reshape(n, ch, h, w).clamp_(0.0, 1.0)


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


def _box_down(x: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """Pillow BOX downscale of `x` along `dim` via a cumulative sum (exact run means)."""
    in_size = x.shape[dim]
    first, last = box_bounds(in_size, out_size)
    csum = torch.cumsum(x, dim=dim)
    zero_shape = list(x.shape)
    zero_shape[dim] = 1
    csum = torch.cat([torch.zeros(zero_shape, dtype=x.dtype, device=x.device), csum], dim=dim)
    lo = torch.as_tensor(first, device=x.device)
    hi = torch.as_tensor(last, device=x.device)
    count_shape = [1] * x.dim()
    count_shape[dim] = out_size
    count = torch.as_tensor(last - first, dtype=x.dtype, device=x.device).view(count_shape)
    return (csum.index_select(dim, hi) - csum.index_select(dim, lo)) / count


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


def _quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to the 256 levels of an 8-bit image (Pillow keeps uint8 between resampling passes)."""
    return torch.floor(x * 255.0 + (0.5 + 1e-3)) / 255.0  # Pillow rounds halves up; 1e-3 absorbs float error


def pixelate(x: torch.Tensor, factor: float, quantize: bool = True) -> torch.Tensor:
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
        out = _quantize(out) if quantize else out
    if small_h != h:
        out = _box_down(out, small_h, dim=2)
        out = _quantize(out) if quantize else out
    rows = torch.as_tensor(nearest_index(small_h, h), device=x.device)
    cols = torch.as_tensor(nearest_index(small_w, w), device=x.device)
    return out.index_select(2, rows).index_select(3, cols).clamp_(0.0, 1.0)
