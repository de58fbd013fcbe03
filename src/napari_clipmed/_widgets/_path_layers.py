"""Pure functions that turn pathology results into napari layer data (+ features), and back.

Used by the pathology widgets and by `napari_clipmed.api` (the retrieval hit grid lives in
`_gallery`). Nothing here imports Qt or creates a viewer: functions take layers (only their
`data`, `name`, `scale`, `translate`, `rgb` and `multiscale` attributes are read; multiscale
layers use level 0) or plain arrays, and return `(data, kwargs)` pairs ready for
`viewer.add_image(data, **kwargs)` / `viewer.add_shapes(data, **kwargs)`.

Geometry rule: a layer's world coordinates are ``pixel * scale + translate`` over its last two
(spatial) axes; rotate, shear and affine are ignored. Output layers copy the source's scale and
translate, so they overlay it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.ops.geometry import Geometry

if TYPE_CHECKING:
    import pandas as pd

# Live previews (and strips) corrupt at most this many pixels: larger images are corrupted on a
# centred crop of MAX_PREVIEW_SIDE x MAX_PREVIEW_SIDE pixels at full resolution (corruptions are
# defined per pixel, so downsampling would change what a tile sees); the crop is placed over the
# source with the right offset.
MAX_PREVIEW_SIDE = 4096


def geometry_of(layer: Any) -> Geometry:
    """The 2-D (last two axes) `Geometry` of a napari layer."""
    return Geometry(tuple(np.asarray(layer.scale)[-2:]), tuple(np.asarray(layer.translate)[-2:]))


@dataclass
class SourceImage:
    """Pixels taken from an image layer (a copy), where they sit, and the layer's name."""

    pixels: np.ndarray
    name: str
    geometry: Geometry
    offset: tuple[int, int] = (0, 0)  # top-left pixel of `pixels` in the layer (non-zero for crops)
    full_shape: tuple[int, int] = field(default=(0, 0))

    @property
    def cropped(self) -> bool:
        return tuple(self.pixels.shape[:2]) != tuple(self.full_shape)


def _base_data(layer: Any, level: int = 0) -> Any:
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[level]
    return data


def _spatial_shape(layer: Any, data: Any) -> tuple[int, ...]:
    rgb = bool(getattr(layer, "rgb", False))
    return tuple(data.shape[:-1] if rgb else data.shape)


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


def rgb_source(layer: Any, max_side: int | None = None) -> SourceImage:
    """Level-0 RGB pixels of an image layer as uint8 (a centred crop when a side exceeds
    `max_side`, default `MAX_PREVIEW_SIDE`)."""
    max_side = MAX_PREVIEW_SIDE if max_side is None else int(max_side)
    if not getattr(layer, "rgb", False):
        raise InputError(
            f"layer '{layer.name}' is not an RGB image: the corruptions are defined for RGB (H&E) images"
        )
    data = _base_data(layer)
    if data.ndim != 3:
        raise InputError(f"layer '{layer.name}' is a stack of shape {data.shape}: pick a 2-D RGB image layer")
    height, width = int(data.shape[0]), int(data.shape[1])
    top = max(0, (height - max_side) // 2)
    left = max(0, (width - max_side) // 2)
    crop = data[top : top + min(height, max_side), left : left + min(width, max_side)]
    pixels = as_rgb_uint8(np.asarray(crop), f"layer '{layer.name}'")
    return SourceImage(pixels, layer.name, geometry_of(layer), (top, left), (height, width))


def image_source(layer: Any) -> SourceImage:
    """Level-0 pixels of a 2-D grey or RGB(A) image layer, as a copy, in their own dtype."""
    data = _base_data(layer)
    shape = _spatial_shape(layer, data)
    if len(shape) != 2:
        raise InputError(f"layer '{layer.name}' has {len(shape)} spatial dimensions: pick a 2-D grey or RGB image")
    pixels = np.array(np.asarray(data), copy=True)
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    return SourceImage(pixels, layer.name, geometry_of(layer), (0, 0), (int(shape[0]), int(shape[1])))


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


# ----------------------------------------------------------------------------- corruptions
def corruption_tag(kind: str, severity: float) -> str:
    """'blur 2.5' (severity rounded to 0.1, as on the slider)."""
    return f"{kind} {round(float(severity), 1):g}"


def _corruption_meta(source: SourceImage, kind: str, severity: float, seed: int | None) -> dict[str, Any]:
    from napari_clipmed.pathology.params import get_corruption

    spec = get_corruption(kind)
    return {
        "corruption": {
            "source": source.name,
            "kind": spec.name,
            "severity": float(severity),
            "seed": seed,
            "parameter": spec.parameter,
            "value": spec.parameter_at(severity),
            "offset": list(source.offset),
            "cropped": source.cropped,
        }
    }


def corrupt_source(source: SourceImage, kind: str, severity: float, seed: int | None = 0) -> np.ndarray:
    """The corrupted pixels of `source` (a new array; `source.pixels` is left as is)."""
    from napari_clipmed.pathology.corrupt import corrupt

    return corrupt(source.pixels, kind, severity, seed=seed)


def corrupted_kwargs(source: SourceImage, kind: str, severity: float, seed: int | None = 0) -> dict[str, Any]:
    """Image-layer kwargs of a corrupted copy: name '<source> [kind severity]', same placement, metadata."""
    return {
        "name": f"{source.name} [{corruption_tag(kind, severity)}]",
        "rgb": True,
        "metadata": _corruption_meta(source, kind, severity, seed),
        **source.geometry.shifted(source.offset).kwargs(),
    }


def corrupted_layer_data(
    source_layer: Any, kind: str, severity: float, seed: int | None = 0, max_side: int | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """(data, kwargs) of a corrupted copy of an RGB image layer (centre crop of `max_side` px for huge images)."""
    source = rgb_source(source_layer, max_side)
    return corrupt_source(source, kind, severity, seed), corrupted_kwargs(source, kind, severity, seed)


def iter_severity_strip(
    source: SourceImage, kind: str, seed: int | None = 0, severities: Sequence[float] | None = None, gap: int = 16
) -> Any:
    """Generator: the image at each severity (default 0..MAX), side by side with white gaps; yields
    Progress per level and returns (strip, kwargs). The strip is placed just below the source."""
    from napari_clipmed.pathology.params import MAX_SEVERITY
    from napari_clipmed.progress import Progress

    levels = [float(s) for s in (severities if severities is not None else range(MAX_SEVERITY + 1))]
    h, w = source.pixels.shape[:2]
    strip = np.full((h, len(levels) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, severity in enumerate(levels):
        strip[:, i * (w + gap) : i * (w + gap) + w] = corrupt_source(source, kind, severity, seed)
        yield Progress(i + 1, len(levels), f"{corruption_tag(kind, severity)} done")
    meta = _corruption_meta(source, kind, levels[-1], seed)
    panel_cols = [i * (w + gap) for i in range(len(levels))]
    meta["corruption"] |= {"severity": None, "severities": levels, "panel_cols": panel_cols}
    below = source.geometry.shifted((source.offset[0] + h + max(gap, h // 20), source.offset[1]))
    kwargs = {
        "name": f"{source.name} [{kind} strip {levels[0]:g}-{levels[-1]:g}]",
        "rgb": True,
        "metadata": meta,
        **below.kwargs(),
    }
    return strip, kwargs


# ----------------------------------------------------------------------------- zero-shot labels
# A fixed, colour-blind-friendly palette (Okabe-Ito, then Tableau); class i gets PALETTE[i % len].
PALETTE: tuple[str, ...] = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7",
    "#9467BD", "#8C564B", "#17BECF", "#BCBD22", "#7F7F7F",
)
FACE_ALPHA = 0.35


def class_colors(classes: Sequence[str]) -> dict[str, str]:
    """The hex colour of each class, by its position."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(classes)}


def _rgba(hex_colour: str, alpha: float) -> np.ndarray:
    h = hex_colour.lstrip("#")
    return np.array([int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4)] + [alpha], dtype=np.float32)


def shapes_to_boxes(shapes: Any, image: SourceImage, *, min_side: int = 2) -> np.ndarray:
    """The rectangles of a Shapes layer as image pixel boxes ``(row0, col0, row1, col1)`` (int, end-exclusive).

    Each rectangle (rotated ones by their bounding box) goes from the Shapes layer's data to world
    coordinates with its scale/translate, then to the image's pixels; boxes are clipped to the image.
    Other shape types are ignored; an empty result is an InputError.
    """
    shape_geom = geometry_of(shapes)
    boxes = []
    height, width = image.full_shape
    for verts, kind in zip(shapes.data, shapes.shape_type):
        if kind != "rectangle":
            continue
        world = shape_geom.to_world(np.asarray(verts, dtype=float)[:, -2:])
        px = image.geometry.to_pixels(world)
        r0, c0 = np.floor(px.min(axis=0)).astype(int)
        r1, c1 = np.ceil(px.max(axis=0)).astype(int)
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, height), min(c1, width)
        if r1 - r0 >= min_side and c1 - c0 >= min_side:
            boxes.append((r0, c0, r1, c1))
    if not boxes:
        raise InputError(
            f"layer '{shapes.name}' has no rectangle over image '{image.name}' (at least {min_side} x {min_side} "
            "pixels); draw one with the rectangle tool"
        )
    return np.asarray(boxes, dtype=np.int64)


def crop_boxes(pixels: np.ndarray, boxes: np.ndarray, offset: Sequence[int] = (0, 0)) -> list[np.ndarray]:
    """The pixels inside each box (boxes in layer pixels; `offset` = where `pixels` starts)."""
    r, c = int(offset[0]), int(offset[1])
    return [pixels[r0 - r : r1 - r, c0 - c : c1 - c] for r0, c0, r1, c1 in np.asarray(boxes)]


def boxes_to_rectangles(boxes: np.ndarray) -> list[np.ndarray]:
    """Pixel boxes -> napari rectangle vertices (4 x 2, rows then columns, in pixel units)."""
    return [
        np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float) for r0, c0, r1, c1 in np.asarray(boxes)
    ]


def zeroshot_frame(boxes: np.ndarray, classes: Sequence[str], probabilities: np.ndarray) -> pd.DataFrame:
    """Features table: label, max_probability, p(<class>) for each class, and the pixel box."""
    import pandas as pd

    probs = np.asarray(probabilities, dtype=np.float32)
    if probs.shape != (len(boxes), len(classes)):
        raise InputError(f"{len(boxes)} boxes but probabilities of shape {probs.shape}")
    best = np.argmax(probs, axis=1)
    frame = pd.DataFrame(
        {
            "label": pd.Categorical([classes[i] for i in best], categories=list(classes)),
            "max_probability": probs.max(axis=1),
        }
    )
    for j, name in enumerate(classes):
        frame[f"p({name})"] = probs[:, j]
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    for j, col in enumerate(("row0", "col0", "row1", "col1")):
        frame[col] = boxes[:, j]
    return frame


def zeroshot_shapes(
    boxes: np.ndarray,
    classes: Sequence[str],
    probabilities: np.ndarray,
    geometry: Geometry,
    name: str,
    metadata: dict | None = None,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Shapes layer data + kwargs: one rectangle per box, coloured by predicted class, text = label."""
    frame = zeroshot_frame(boxes, classes, probabilities)
    colours = class_colors(classes)
    face = np.zeros((len(frame), 4), dtype=np.float32)
    for i, label in enumerate(frame["label"]):
        face[i] = _rgba(colours[str(label)], FACE_ALPHA)
    edge = face.copy()
    edge[:, 3] = 1.0
    sides = np.asarray(boxes, dtype=float).reshape(-1, 4)
    edge_width = max(1.0, float(np.median(sides[:, 2:] - sides[:, :2])) / 64.0) if len(sides) else 1.0
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "rectangle",
        "features": frame,
        "face_color": face,
        "edge_color": edge,
        "edge_width": edge_width,
        "text": {"string": "{label}", "size": 9, "color": "white", "anchor": "center"},
        "metadata": {"classes": list(classes), "colors": colours, **(metadata or {})},
        **geometry.kwargs(),
    }
    return boxes_to_rectangles(boxes), kwargs
