"""Zero-shot labels on an image: tiles of it (tissue only, optionally) or given rectangles, each
classified against a `PromptSet`; the result is a table and a Shapes layer coloured by class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.ops.geometry import Geometry, SourceImage
from napari_clipmed.ops.layerdata import (
    FACE_ALPHA,
    LayerData,
    boxes_to_rectangles,
    class_colors,
    crop_boxes,
    display_uint8,
    rgba,
)
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator
from napari_clipmed.zeroshot import PromptSet, PromptSource

if TYPE_CHECKING:
    import pandas as pd

    from napari_clipmed.models.model import ClipModel

TILES, RECTANGLES = "tiles", "rectangles"
MIN_TILE = 8


def image_tiles(pixels: np.ndarray, tile: int, stride: int, tissue_only: bool, min_tissue: float = 0.5) -> np.ndarray:
    """Pixel boxes (row0, col0, row1, col1) of the full tiles of `pixels` on a `stride` grid; with
    `tissue_only`, only tiles at least `min_tissue` inside the tissue mask."""
    from napari_clipmed.pathology.tiles import tile_image

    rgb = display_uint8(pixels)
    mask = None if tissue_only else np.ones(rgb.shape[:2], dtype=bool)
    tiles = tile_image(rgb, tile, stride, min_tissue=min_tissue if tissue_only else 0.0, mask=mask)
    corners = tiles.coords.reshape(-1, 2)
    return np.concatenate([corners, corners + tile], axis=1).astype(np.int64)


def source_tiles(source: SourceImage, tile: int, stride: int, tissue_only: bool, min_tissue: float = 0.5) -> np.ndarray:
    """`image_tiles` of a layer snapshot, in the layer's pixel frame (its offset added); one clear error when no
    tile fits, so every operation that tiles a layer says the same thing."""
    boxes = image_tiles(source.pixels, tile, stride, tissue_only, min_tissue) + np.tile(np.asarray(source.offset), 2)
    if len(boxes) == 0:
        where = "with tissue " if tissue_only else ""
        raise InputError(
            f"no {tile} x {tile} tile {where}fits in '{source.name}' "
            f"({source.pixels.shape[0]} x {source.pixels.shape[1]} px); lower the tile size"
            + (" or untick 'tissue tiles only'" if tissue_only else "")
        )
    return boxes


@dataclass(frozen=True, eq=False)
class ZeroShotRequest:
    """Label `source` zero-shot: its tiles (`tile_size`, `stride`) or the pixel `boxes` given."""

    source: SourceImage
    prompts: PromptSource
    boxes: np.ndarray | None = None  # (N, 4) pixel boxes of the layer; None: tiles
    tile_size: int = 224
    stride: int | None = None  # None: the tile size
    tissue_only: bool = True
    min_tissue: float = 0.5
    batch_size: int = 64
    quality_gate: bool = False  # check every box against the shipped quality gate (docs/quality.md)
    skip_failing: bool = False  # leave boxes that fail the gate unlabelled ('uncertain'); implies the gate

    def __post_init__(self) -> None:
        object.__setattr__(self, "prompts", PromptSet.parse(self.prompts))
        if int(self.tile_size) < MIN_TILE:
            raise InputError(f"tile size must be at least {MIN_TILE} px, got {self.tile_size}")
        stride = int(self.tile_size if self.stride is None else self.stride)
        if stride < 1:
            raise InputError(f"stride must be at least 1 px, got {self.stride}")
        object.__setattr__(self, "stride", stride)
        object.__setattr__(self, "tile_size", int(self.tile_size))
        if not 0.0 <= float(self.min_tissue) <= 1.0:
            raise InputError(f"min_tissue must lie in 0..1, got {self.min_tissue}")
        if int(self.batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        pixels = np.asarray(self.source.pixels)
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[-1] != 3):
            raise InputError(f"'{self.source.name}' has shape {pixels.shape}: label a 2-D grey or RGB image")
        if self.boxes is not None:
            boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 4)
            r, c = self.source.offset
            h, w = pixels.shape[:2]
            if len(boxes) == 0:
                raise InputError("no rectangles to label: draw at least one, or run on tiles")
            bad = (boxes[:, 0] < r) | (boxes[:, 1] < c) | (boxes[:, 2] > r + h) | (boxes[:, 3] > c + w) | (
                boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bad.any():
                raise InputError(f"rectangle {boxes[bad][0].tolist()} lies outside '{self.source.name}' ({h} x {w} px)")
            object.__setattr__(self, "boxes", boxes)

    @property
    def mode(self) -> str:
        return TILES if self.boxes is None else RECTANGLES

    def describe(self) -> str:
        return f"tiles {self.tile_size}px" if self.mode == TILES else RECTANGLES


@dataclass(frozen=True, eq=False)
class ZeroShotLabels:
    """Per box: the class probabilities; with the run's settings for the table, files and layer."""

    boxes: np.ndarray  # (N, 4) pixel boxes of the source layer
    classes: tuple[str, ...]
    probabilities: np.ndarray  # (N, C)
    prompts: PromptSet
    source_name: str
    mode: str
    model: str  # ClipModel.identity
    tile_size: int | None = None
    stride: int | None = None
    quality: Any = None  # the gate's GateResult per box, or the reason it could not be applied (str); None: no gate
    skip_failing: bool = False

    @property
    def predicted(self) -> list[str]:
        return [self.classes[i] for i in np.argmax(self.probabilities, axis=1)]

    def to_frame(self) -> pd.DataFrame:
        """label, max_probability, p(<class>)..., row0, col0, row1, col1 (one row per box)."""
        return zeroshot_frame(self.boxes, self.classes, self.probabilities)

    def config(self) -> dict[str, Any]:
        return {
            "source": self.source_name,
            "mode": self.mode,
            "prompts": {"classes": {k: list(v) for k, v in self.prompts.classes.items()},
                        "templates": list(self.prompts.templates), "preset": self.prompts.name},
            "model": self.model,
            "tile_size": self.tile_size,
            "stride": self.stride,
        }

    def save(self, folder: str | Path) -> dict[str, Path]:
        """labels.csv and config.json in `folder`, each written atomically."""
        from napari_clipmed.io.atomic import write_frame, write_json

        out = Path(folder)
        frame = self.to_frame()
        return {"labels": write_frame(out / "labels.csv", frame), "config": write_json(out / "config.json", self.config())}

    def to_layer_data(self, geometry: Geometry) -> list[LayerData]:
        """One Shapes layer over the source: a rectangle per box, coloured by class, text = label."""
        what = f"{self.mode} {self.tile_size}px" if self.mode == TILES else self.mode
        data, kwargs = zeroshot_shapes(self.boxes, self.classes, self.probabilities, geometry,
                                       name=f"{self.source_name} labels [{what}]", metadata=self.config())
        if self.quality is not None and not isinstance(self.quality, str):
            from napari_clipmed.ops.qc import mark_failing

            kwargs = mark_failing(kwargs, self.quality, skip_failing=self.skip_failing)
        return [(data, kwargs, "shapes")]

    def quality_note(self) -> str | None:
        """One sentence on the quality gate for the user (None when all passed or no gate ran)."""
        if isinstance(self.quality, str):
            return f"quality gate not applied: {self.quality}"
        if self.quality is None:
            return None
        failed = int((~self.quality.passed).sum())
        if not failed:
            return None
        return (f"{failed} of {len(self.quality)} tiles failed the quality gate"
                + (" and were left unlabelled ('uncertain')" if self.skip_failing else " (red outline)")
                + "; see quality_reasons in the layer's features")


def iter_run(request: ZeroShotRequest, model: ClipModel) -> ProgressGenerator[ZeroShotLabels]:
    """Embed the prompts, find the tiles (or take the boxes), classify their pixels."""
    from napari_clipmed.zeroshot import ZeroShotClassifier, iter_classify_images

    prompts = request.prompts
    assert isinstance(prompts, PromptSet)  # parsed in __post_init__
    source = request.source
    yield Progress(0, 1, "embedding the class prompts")
    classifier = ZeroShotClassifier.from_prompts(model, prompts)
    boxes = request.boxes
    if boxes is None:
        yield Progress(0, 1, "finding tissue tiles")
        boxes = source_tiles(source, request.tile_size, int(request.stride or request.tile_size), request.tissue_only,
                             request.min_tissue)
    crops = crop_boxes(source.pixels, boxes, source.offset)
    result = yield from iter_classify_images(model, crops, classifier, batch_size=request.batch_size)
    quality: Any = None
    if request.quality_gate or request.skip_failing:
        from napari_clipmed.ops.qc import gate_or_reason

        yield Progress(0, 1, "checking tile quality")
        quality = gate_or_reason(crops)
    tiles = request.mode == TILES
    return ZeroShotLabels(
        boxes=np.asarray(boxes, dtype=np.int64), classes=tuple(result.classes), probabilities=result.probabilities,
        prompts=prompts, source_name=source.name, mode=request.mode, model=model.identity,
        tile_size=request.tile_size if tiles else None, stride=request.stride if tiles else None,
        quality=quality, skip_failing=request.skip_failing,
    )


def run(request: ZeroShotRequest, model: ClipModel) -> ZeroShotLabels:
    """Plain-call twin of `iter_run`."""
    return run_generator(iter_run(request, model))


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
        face[i] = rgba(colours[str(label)], FACE_ALPHA)
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
