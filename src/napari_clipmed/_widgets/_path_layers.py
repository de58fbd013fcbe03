"""Pure functions that turn pathology results into napari layer data (+ features), and back.

Used by the pathology widgets and by `napari_clipmed.api`. Nothing here imports Qt or creates a
viewer: functions take layers (only their `data`, `name`, `scale`, `translate`, `rgb`,
`multiscale` attributes are read) or plain arrays, and return `(data, kwargs)` pairs ready for
`viewer.add_image(data, **kwargs)` / `viewer.add_shapes(data, **kwargs)`.

Geometry rule: a layer's world coordinates are ``pixel * scale + translate`` over its last two
(spatial) axes; rotate, shear and affine are ignored. Output layers copy the source's scale and
translate, so they overlay it exactly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

# Live previews (and strips) corrupt at most this many pixels: larger images are corrupted on a
# centred crop of MAX_PREVIEW_SIDE x MAX_PREVIEW_SIDE pixels at full resolution (corruptions are
# defined per pixel, so downsampling would change what a tile sees); the crop is placed over the
# source with the right offset.
MAX_PREVIEW_SIDE = 4096


@dataclass(frozen=True)
class Geometry:
    """Pixel -> world mapping of a 2-D layer: ``world = pixel * scale + translate``."""

    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def of(cls, layer: Any) -> Geometry:
        scale = tuple(float(s) for s in np.asarray(layer.scale)[-2:])
        translate = tuple(float(t) for t in np.asarray(layer.translate)[-2:])
        return cls(scale, translate)  # type: ignore[arg-type]

    def to_pixels(self, world: np.ndarray) -> np.ndarray:
        return (np.asarray(world, dtype=float) - np.asarray(self.translate)) / np.asarray(self.scale)

    def to_world(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(pixels, dtype=float) * np.asarray(self.scale) + np.asarray(self.translate)

    def shifted(self, offset_rc: Sequence[int]) -> Geometry:
        """The geometry of a crop whose top-left pixel is `offset_rc` of this layer."""
        new = self.to_world(np.asarray(offset_rc, dtype=float))
        return replace(self, translate=(float(new[0]), float(new[1])))

    def kwargs(self) -> dict[str, tuple[float, float]]:
        return {"scale": self.scale, "translate": self.translate}


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


def rgb_source(layer: Any, max_side: int = MAX_PREVIEW_SIDE) -> SourceImage:
    """Level-0 RGB pixels of an image layer as uint8 (a centred crop when a side exceeds `max_side`)."""
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
    return SourceImage(pixels, layer.name, Geometry.of(layer), (top, left), (height, width))


def image_source(layer: Any) -> SourceImage:
    """Level-0 pixels of a 2-D grey or RGB(A) image layer, as a copy, in their own dtype."""
    data = _base_data(layer)
    shape = _spatial_shape(layer, data)
    if len(shape) != 2:
        raise InputError(f"layer '{layer.name}' has {len(shape)} spatial dimensions: pick a 2-D grey or RGB image")
    pixels = np.array(np.asarray(data), copy=True)
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    return SourceImage(pixels, layer.name, Geometry.of(layer), (0, 0), (int(shape[0]), int(shape[1])))


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


def atomic_write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write `frame` as CSV via a temp file in the same folder and `os.replace` (never half-written)."""
    path = Path(path)
    if path.suffix.lower() != ".csv":
        path = path.with_name(path.name + ".csv")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: the folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
            frame.to_csv(fh, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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


def parse_classes(text: str) -> dict[str, tuple[str, ...]]:
    """One class per line, ``name`` or ``name: synonym 1; synonym 2`` (blank and ``#`` lines skipped)."""
    classes: dict[str, tuple[str, ...]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        name = name.strip()
        if not name:
            raise InputError(f"classes, line {number}: a class needs a name before the ':'")
        if name in classes:
            raise InputError(f"class '{name}' is listed twice; give each class one line")
        synonyms = tuple(s.strip() for s in rest.split(";") if s.strip()) if rest.strip() else (name,)
        classes[name] = synonyms
    return classes


def format_classes(classes: dict[str, tuple[str, ...]]) -> str:
    """The inverse of `parse_classes`."""
    lines = []
    for name, names in classes.items():
        lines.append(name if tuple(names) == (name,) else f"{name}: {'; '.join(names)}")
    return "\n".join(lines)


def parse_templates(text: str) -> list[str]:
    """One template per line; blank lines are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def prompts_from_text(classes_text: str, templates_text: str, name: str = "custom") -> Any:
    """A validated `PromptSet` from the widget's two text boxes (InputError says what is wrong)."""
    from napari_clipmed.zeroshot import PromptSet

    templates = parse_templates(templates_text)
    if not templates:
        raise InputError("add at least one prompt template, e.g. 'an H&E image of {}.'")
    return PromptSet.from_spec(parse_classes(classes_text), templates, name=name)


def shapes_to_boxes(shapes: Any, image: SourceImage, *, min_side: int = 2) -> np.ndarray:
    """The rectangles of a Shapes layer as image pixel boxes ``(row0, col0, row1, col1)`` (int, end-exclusive).

    Each rectangle (rotated ones by their bounding box) goes from the Shapes layer's data to world
    coordinates with its scale/translate, then to the image's pixels; boxes are clipped to the image.
    Other shape types are ignored; an empty result is an InputError.
    """
    shape_geom = Geometry.of(shapes)
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
    face = np.stack([_rgba(colours[str(label)], FACE_ALPHA) for label in frame["label"]]) if len(frame) else np.zeros((0, 4))
    edge = face.copy()
    edge[:, 3] = 1.0
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "rectangle",
        "features": frame,
        "face_color": face,
        "edge_color": edge,
        "edge_width": max(1.0, float(np.median(np.asarray(boxes)[:, 2:] - np.asarray(boxes)[:, :2])) / 64.0)
        if len(frame)
        else 1.0,
        "text": {"string": "{label}", "size": 9, "color": "white", "anchor": "center"},
        "metadata": {"classes": list(classes), "colors": colours, **(metadata or {})},
        **geometry.kwargs(),
    }
    return boxes_to_rectangles(boxes), kwargs


# ----------------------------------------------------------------------------- retrieval hits
HIT_COLUMNS: tuple[str, ...] = ("query", "rank", "path", "label", "similarity")


def hits_frame(hits: Any, query: str, row: int = 0) -> pd.DataFrame:
    """One row per hit of query `row` of a `RetrievalHits`: query, rank (1 = best), path, label, similarity."""
    import pandas as pd

    k = int(hits.indices.shape[1])
    ids = hits.ids[row] if hits.ids is not None else hits.indices[row].astype(str)
    labels = hits.labels[row] if hits.labels is not None else np.full(k, "", dtype=object)
    return pd.DataFrame(
        {
            "query": [query] * k,
            "rank": np.arange(1, k + 1),
            "path": [str(p) for p in ids],
            "label": [str(x) for x in labels],
            "similarity": np.asarray(hits.similarities[row], dtype=np.float64),
        }
    )


def _fit(tile: np.ndarray, cell: int) -> np.ndarray:
    """`tile` resized (aspect kept) to fit a cell x cell square, centred on white."""
    from PIL import Image

    rgb = display_uint8(tile)
    h, w = rgb.shape[:2]
    f = cell / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    resized = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    out = np.full((cell, cell, 3), 255, dtype=np.uint8)
    top, left = (cell - resized.shape[0]) // 2, (cell - resized.shape[1]) // 2
    out[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return out


def hits_grid(
    tiles: Sequence[np.ndarray | None],
    frame: pd.DataFrame,
    *,
    cell: int = 128,
    columns: int | None = None,
    gap: int = 4,
    name: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """An RGB grid image of the hit tiles (rank order, row by row) + image-layer kwargs.

    Missing tiles (None) are grey cells. The hits table, extended with each cell's pixel box
    (cell_row0, cell_col0, cell_row1, cell_col1), is in ``metadata["hits"]``.
    """
    n = len(tiles)
    if n == 0 or len(frame) != n:
        raise InputError(f"a hit grid needs one table row per tile, got {n} tiles and {len(frame)} rows")
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    step = cell + gap
    grid = np.full((rows * step - gap, cols * step - gap, 3), 255, dtype=np.uint8)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        r0, c0 = r * step, c * step
        grid[r0 : r0 + cell, c0 : c0 + cell] = _fit(tile, cell) if tile is not None else 128
        boxes[i] = (r0, c0, r0 + cell, c0 + cell)
    table = frame.reset_index(drop=True).copy()
    for j, col in enumerate(("cell_row0", "cell_col0", "cell_row1", "cell_col1")):
        table[col] = boxes[:, j]
    query = str(table["query"].iloc[0]) if "query" in table else "query"
    kwargs = {"name": name or f"hits: {query}", "rgb": True, "metadata": {"hits": table, "query": query}}
    return grid, kwargs


def hits_labels(table: pd.DataFrame, name: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """A Shapes overlay for a hit grid: one frame per cell, text = rank, label and similarity, features = the table."""
    boxes = table[["cell_row0", "cell_col0", "cell_row1", "cell_col1"]].to_numpy()
    text = "#{rank} {label} {similarity:.3f}" if (table["label"] != "").any() else "#{rank} {similarity:.3f}"
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "features": table.reset_index(drop=True),
        "face_color": "transparent",
        "edge_color": "#56B4E9",
        "edge_width": 2.0,
        "text": {"string": text, "size": 8, "color": "black", "anchor": "upper_left"},
    }
    return boxes_to_rectangles(boxes), kwargs
