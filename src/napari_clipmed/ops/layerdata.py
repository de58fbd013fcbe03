"""Plain helpers that every operation's `to_layer_data` shares: pixel conversion, boxes, colours.

No napari here: layer data are ``(data, kwargs, layer_type)`` tuples that `napari_clipmed.layers`
(or ``viewer._add_layer_from_data``) turns into layers. Boxes are pixel boxes
``(row0, col0, row1, col1)``, end-exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_clipmed.errors import InputError

LayerData = tuple[Any, dict[str, Any], str]
"""One napari layer as plain data: (data, kwargs, "image" | "shapes" | "labels")."""

# A fixed, colour-blind-friendly palette (Okabe-Ito, then Tableau); class i gets PALETTE[i % len].
PALETTE: tuple[str, ...] = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#9467BD", "#8C564B", "#17BECF", "#BCBD22", "#7F7F7F",
)


FACE_ALPHA = 0.35


def class_colors(classes: Sequence[str]) -> dict[str, str]:
    """The hex colour of each class, by its position."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(classes)}


def rgba(hex_colour: str, alpha: float) -> np.ndarray:
    """RGBA floats in [0, 1] of a ``#RRGGBB`` colour with `alpha`."""
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4)] + [alpha], dtype=np.float32)


def as_rgb_uint8(data: np.ndarray, what: str) -> np.ndarray:
    """An H x W x 3 uint8 copy of RGB(A) pixels.

    Rule: uint8 as is; RGBA drops alpha; uint16 is divided by 257 (rounded); floats must lie in
    [0, 1] and are multiplied by 255 (rounded). Grey, other dtypes and floats outside [0, 1] are
    refused, since a silent guess would corrupt something other than what the user sees.
    """
    arr = np.asarray(data)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise InputError(
            f"{what} has shape {arr.shape}: pick a 2-D RGB image layer (H x W x 3); grey images and stacks "
            "cannot be corrupted like H&E tiles"
        )
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return np.array(arr, copy=True)
    if arr.dtype == np.uint16:
        return np.round(arr.astype(np.float32) / 257.0).astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise InputError(f"{what} has float pixels outside [0, 1]; convert it to uint8 RGB first")
        return np.round(arr * 255.0).astype(np.uint8)
    raise InputError(f"{what} has dtype {arr.dtype}; RGB images must be uint8 (or uint16, or float in [0, 1])")


def display_uint8(pixels: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 for tissue detection and thumbnails: grey repeated, ints and floats rescaled
    by their dtype range (floats: [0, 1]), like the model's input conversion."""
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        if arr.dtype.kind == "f":
            arr = np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0
        elif arr.dtype.kind == "b":
            arr = arr.astype(np.float32) * 255.0
        else:
            arr = np.clip(arr.astype(np.float64) / np.iinfo(arr.dtype).max, 0.0, 1.0) * 255.0
        arr = np.round(arr).astype(np.uint8)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return np.ascontiguousarray(arr)


def crop_boxes(pixels: np.ndarray, boxes: np.ndarray, offset: Sequence[int] = (0, 0)) -> list[np.ndarray]:
    """The pixels inside each box (boxes in layer pixels; `offset` = where `pixels` starts)."""
    r, c = int(offset[0]), int(offset[1])
    return [pixels[r0 - r : r1 - r, c0 - c : c1 - c] for r0, c0, r1, c1 in np.asarray(boxes)]


def boxes_to_rectangles(boxes: np.ndarray) -> list[np.ndarray]:
    """Pixel boxes -> napari rectangle vertices (4 x 2, rows then columns, in pixel units)."""
    return [
        np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float) for r0, c0, r1, c1 in np.asarray(boxes)
    ]
