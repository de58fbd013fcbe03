"""Turn the arrays users hold into RGB float tensors, and preprocess them in batches on tensors.

Conversion rules (documented in docs/models.md):
- layout: HxW, HxWxC or CxHxW (C in 1, 3, 4; channel-first is recognised when the last axis
  is not a channel axis and the first is);
- channels: grayscale is repeated to RGB; RGBA drops alpha; two channels are refused;
- dtype: uint8 / 255, uint16 / 65535, other integers by their dtype's maximum, bool as 0/1,
  floats are taken to be in [0, 1] and clipped (window CT to [0, 1] or uint8 first).
  NaN or infinite pixels are an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_clipmed.errors import InputError

ImageBatch = Sequence[np.ndarray] | np.ndarray


def as_image_list(images: ImageBatch) -> list[np.ndarray]:
    """A list of single images from a list or a stacked N x H x W [x C] array."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4 or (images.ndim == 3 and images.shape[-1] not in (1, 3, 4)):
            return list(images)
        return [images]
    if isinstance(images, torch.Tensor):
        raise InputError("pass images as numpy arrays (H x W x 3), not torch tensors")
    return list(images)


def to_hwc(image: np.ndarray, index: int = 0) -> np.ndarray:
    """A view of `image` as H x W x 3 (or H x W x 1) in its own dtype; validates shape and values."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim == 3:
        if image.shape[-1] not in (1, 3, 4) and image.shape[0] in (1, 3, 4):
            image = np.moveaxis(image, 0, -1)
    else:
        raise InputError(f"image {index} has shape {image.shape}: expected H x W, H x W x C or C x H x W")
    channels = image.shape[-1]
    if channels == 4:
        image = image[:, :, :3]
    elif channels not in (1, 3):
        raise InputError(f"image {index} has {channels} channels: expected 1 (grey), 3 (RGB) or 4 (RGBA)")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"image {index} is {image.shape[0]} x {image.shape[1]} pixels: too small to encode")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise InputError(f"image {index} contains NaN or infinite values")
    if image.dtype.kind not in "biuf":
        raise InputError(f"image {index} has dtype {image.dtype}: expected an integer, bool or float array")
    return image


def _scale(dtype: np.dtype) -> float:
    if dtype.kind == "b" or dtype.kind == "f":
        return 1.0
    return float(np.iinfo(dtype).max)


def stack_to_tensor(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Same-shaped H x W x C arrays -> N x 3 x H x W float32 in [0, 1] on `device`."""
    batch = np.stack(images)
    dtype = batch.dtype
    if dtype == np.uint16 or dtype.kind == "b":
        batch = batch.astype(np.float32)
    tensor = torch.from_numpy(batch).to(device, non_blocking=True)
    tensor = tensor.permute(0, 3, 1, 2).float()
    scale = _scale(dtype)
    if scale != 1.0:
        tensor = tensor / scale
    if dtype != np.uint8:  # uint8 / 255 is already in [0, 1]
        tensor = tensor.clamp(0.0, 1.0)
    if tensor.shape[1] == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    return tensor


def preprocess_batch(
    batch: torch.Tensor,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    resize: str = "crop",
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """open_clip's eval transform on a batch: shorter side to `image_size` (bicubic, antialiased),
    centre crop, normalise. `resize="squash"` resizes both sides to `image_size` instead (SigLIP's
    processor), with the given `interpolation`."""
    _, _, height, width = batch.shape
    if resize == "squash" and (height, width) != (image_size, image_size):
        batch = F.interpolate(batch, size=(image_size, image_size), mode=interpolation, antialias=True,
                              align_corners=False).clamp(0.0, 1.0)
    elif (height, width) != (image_size, image_size):
        scale = image_size / min(height, width)
        new_h, new_w = max(image_size, round(height * scale)), max(image_size, round(width * scale))
        batch = F.interpolate(batch, size=(new_h, new_w), mode=interpolation, antialias=True, align_corners=False)
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        batch = batch[:, :, top : top + image_size, left : left + image_size].clamp(0.0, 1.0)
    mean_t = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean_t) / std_t


def group_by_shape(images: Sequence[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    """Indices of images grouped by shape and dtype, so each group stacks into one tensor."""
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((*image.shape, image.dtype.str), []).append(i)
    return groups
