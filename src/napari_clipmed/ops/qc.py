"""Operation: the quality gate on tiles (a tile folder, a slide cut into tiles, or arrays from napari).

`QcRequest` -> `iter_run` -> `QcResult`: per tile the quality measures, pass/fail and the reasons.
The result saves ``qc.csv`` (the table), ``qc.json`` (summary, notes, the gate used) and gives a
Shapes layer of the tiles outlined by verdict (when their places are known).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.ops.layerdata import rgba
from napari_clipmed.pathology.gate import Gate, GateResult
from napari_clipmed.progress import Progress, ProgressGenerator, forward, run_generator

if TYPE_CHECKING:
    import pandas as pd

    from napari_clipmed.ops.geometry import Geometry

PASS_COLOUR, FAIL_COLOUR = "#2ca02c", "#d62728"


@dataclass(frozen=True)
class QcRequest:
    """Tiles to check against a gate. `coords` (row, col of each tile's top-left pixel) place them in a source image."""

    images: tuple[np.ndarray, ...]
    gate: Gate
    ids: tuple[str, ...] = ()
    coords: np.ndarray | None = None
    tile_size: int | None = None
    batch_size: int = 64
    device: str | None = None
    skipped: tuple[tuple[str, str], ...] = ()  # unreadable files: (path, reason)

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(self.images))
        object.__setattr__(self, "ids", tuple(str(i) for i in self.ids))
        if not self.images:
            raise InputError("no tiles to check")
        if not isinstance(self.gate, Gate):
            raise InputError(f"gate must be a quality Gate (load one with Gate.load); got {type(self.gate).__name__}")
        if self.ids and len(self.ids) != len(self.images):
            raise InputError(f"{len(self.images)} tiles but {len(self.ids)} ids")
        if self.coords is not None and np.shape(self.coords) != (len(self.images), 2):
            raise InputError(f"coords must be (N, 2) row, col per tile; got shape {np.shape(self.coords)}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class QcResult:
    """The gate's verdict on every tile, where the tiles lie, and what the input conversion changed."""

    verdict: GateResult
    gate: Gate
    ids: tuple[str, ...] = ()
    coords: np.ndarray | None = None
    tile_size: int | None = None
    skipped: tuple[tuple[str, str], ...] = field(default=())

    @property
    def notes(self) -> tuple[str, ...]:
        return self.verdict.measures.notes

    def to_frame(self) -> pd.DataFrame:
        """One row per tile: [id,] [row, col,] the measures, passed, reasons."""
        frame = self.verdict.to_frame()
        if self.coords is not None:
            frame.insert(0, "col", self.coords[:, 1])
            frame.insert(0, "row", self.coords[:, 0])
        if self.ids:
            frame.insert(0, "id", list(self.ids))
        return frame

    def summary(self) -> dict[str, Any]:
        failed = {name: int(self.verdict.failed_by(name).sum()) for name in self.gate.bounds}
        return {"tiles": len(self.verdict), "passed": int(self.verdict.passed.sum()),
                "pass_rate": self.verdict.pass_rate, "failed_by": {k: v for k, v in failed.items() if v},
                "notes": list(self.notes), "skipped": [list(s) for s in self.skipped], "gate": self.gate.to_dict()}

    def save(self, folder: str | Path) -> dict[str, Path]:
        """``qc.csv`` and ``qc.json`` in `folder`, each written atomically."""
        from napari_clipmed.io.atomic import write_frame, write_json

        folder = Path(folder)
        return {"table": write_frame(folder / "qc.csv", self.to_frame()),
                "summary": write_json(folder / "qc.json", self.summary())}

    def to_layer_data(self, geometry: Geometry | None = None) -> list[tuple[Any, dict[str, Any], str]]:
        """A Shapes layer of the tile outlines (green passed, red failed; measures in `features`)."""
        if self.coords is None or self.tile_size is None:
            return []
        t = float(self.tile_size)
        boxes = [np.array([[r, c], [r, c + t], [r + t, c + t], [r + t, c]], dtype=float) for r, c in self.coords]
        kwargs: dict[str, Any] = {
            "name": "quality gate",
            "shape_type": "rectangle",
            "edge_color": [PASS_COLOUR if ok else FAIL_COLOUR for ok in self.verdict.passed],
            "face_color": "transparent",
            "edge_width": max(1.0, t / 56),
            "features": self.to_frame(),
        }
        if geometry is not None:
            kwargs.update(geometry.last(2).kwargs())
        return [(boxes, kwargs, "shapes")]


def iter_run(request: QcRequest, model: object = None) -> ProgressGenerator[QcResult]:
    """Measure every tile and apply the gate (no model is needed; the argument keeps the ops signature)."""
    from napari_clipmed.pathology.quality import iter_measure

    n = len(request.images)
    measures = yield from forward(iter_measure(list(request.images), batch_size=request.batch_size,
                                               device=request.device), 0, n + 1)
    verdict = request.gate.check(measures)
    yield Progress(n + 1, n + 1, f"{int(verdict.passed.sum())} of {n} tiles passed the gate")
    return QcResult(verdict, request.gate, request.ids, request.coords, request.tile_size, request.skipped)


def run(request: QcRequest, model: object = None) -> QcResult:
    """Plain-call form of `iter_run`."""
    return run_generator(iter_run(request, model))


# --------------------------------------------------------------------------- inputs from disk


def iter_read_source(
    path: str | Path, *, tile_size: int = 224, level: int = 0, min_tissue: float = 0.5
) -> ProgressGenerator[tuple[list[np.ndarray], list[str], np.ndarray | None, list[tuple[str, str]]]]:
    """Tiles from a folder of images (or a manifest), or cut from a slide/large image on a grid.

    Returns (images, ids, coords or None, unreadable files). A slide (SVS/TIFF, or an image at
    least twice the tile size on each side) is cut with `tiles.tile_image` (tissue tiles only).
    """
    from napari_clipmed.datasets import load_images
    from napari_clipmed.pathology.tiles import (
        TIFF_SUFFIXES,
        read_slide_level,
        tile_image,
    )

    path = Path(path)
    if not path.exists():
        raise InputError(f"no such tile folder or slide: {path}")
    if path.is_file() and path.suffix.lower() != ".csv":
        image = read_slide_level(path, level)
        if path.suffix.lower() in TIFF_SUFFIXES or min(image.shape[:2]) >= 2 * tile_size:
            tiles = tile_image(image, tile_size, min_tissue=min_tissue)
            if not len(tiles):
                raise InputError(f"{path.name} has no {tile_size} px tile with at least {min_tissue:.0%} tissue")
            ids = [f"{path.stem}_r{r}_c{c}" for r, c in tiles.coords]
            yield Progress(1, 1, f"cut {len(tiles)} tiles from {path.name}")
            return list(tiles.images), ids, tiles.coords, []
        return [image], [str(path)], None, []
    tileset, _ = load_images(path)
    images, ids, failed = [], [], []
    for i, tile_path in enumerate(tileset.paths):
        try:
            images.append(read_tile(tile_path))
            ids.append(str(tile_path))
        except Exception as err:  # noqa: BLE001 - an unreadable file is reported, not fatal
            failed.append((str(tile_path), f"{type(err).__name__}: {err}"))
        if (i + 1) % 64 == 0:
            yield Progress(i + 1, len(tileset), "reading tiles")
    if not images:
        raise InputError(f"none of the {len(tileset)} images could be read (first: {failed[0][0]}: {failed[0][1]})")
    return images, ids, None, failed


NATIVE_MODES = {"L", "RGB", "RGBA", "I;16", "I;16L", "I;16B"}


def read_tile(path: str | Path) -> np.ndarray:
    """A tile as stored: grayscale stays one channel and 16-bit stays 16-bit, so the measures convert it
    as the encoder does and say so (`datasets.read_image` makes 8-bit RGB of everything)."""
    from PIL import Image

    from napari_clipmed.datasets import read_image

    try:
        with Image.open(path) as im:
            if im.mode in NATIVE_MODES:
                return np.asarray(im)
    except OSError:
        pass
    return read_image(path)


def gate_images(images: Sequence[np.ndarray], gate: Gate | str | Path | None = None, **kwargs: Any) -> GateResult:
    """The gate's verdict on arrays (the default gate when none is given); for other operations."""
    from napari_clipmed.pathology.gate import load_gate

    return run(QcRequest(tuple(images), load_gate(gate), **kwargs)).verdict


def mark_failing(kwargs: dict[str, Any], verdict: GateResult, skip_failing: bool = False) -> dict[str, Any]:
    """Shapes-layer kwargs (one shape per tile, as the zero-shot layer's) with the gate shown on them.

    Failing tiles get a red, dashed-looking thick outline and the measures, `quality_passed` and
    `quality_reasons` join `features`. With `skip_failing` their `label` becomes "uncertain", their
    fill is cleared and `abstain_reason` says why.
    """
    from napari_clipmed.calibration import UNCERTAIN

    out = dict(kwargs)
    features = out["features"].copy().reset_index(drop=True)
    if len(features) != len(verdict):
        raise InputError(f"{len(features)} shapes but a gate verdict on {len(verdict)} tiles")
    measures = verdict.measures.to_frame()
    for name in measures.columns:
        features[f"quality_{name}"] = measures[name].to_numpy()
    failed = ~verdict.passed
    features["quality_passed"] = verdict.passed
    features["quality_reasons"] = list(verdict.reasons)
    edge_in = out.get("edge_color")
    if isinstance(edge_in, str):  # one colour for all: one row per shape, so failing ones can differ
        from matplotlib.colors import to_rgba

        try:
            edge_in = np.tile(to_rgba(edge_in), (len(features), 1))
        except ValueError:  # a feature name (colour by feature): keep it, the width still marks failures
            edge_in = None
    edge = np.array(edge_in if edge_in is not None else [], dtype=float, copy=True)
    width = float(np.max(out.get("edge_width", 1.0)))
    widths = np.where(failed, 3.0 * width, width)
    if edge.ndim == 2 and len(edge) == len(features):
        edge[failed] = rgba(FAIL_COLOUR, 1.0)
        out["edge_color"] = edge
    out["edge_width"] = widths.tolist()
    if skip_failing and failed.any():
        if "label" in features:
            features["label"] = features["label"].astype(object)
            features.loc[failed, "label"] = UNCERTAIN
        features["abstain_reason"] = ["failed the quality gate: " + r if f else "" for r, f in zip(verdict.reasons, failed)]
        face = out.get("face_color")
        if face is not None and np.ndim(face) == 2:
            face = np.array(face, dtype=float, copy=True)
            face[failed, 3] = 0.0
            out["face_color"] = face
    out["features"] = features
    return out


def gate_or_reason(images: Sequence[np.ndarray]) -> GateResult | str:
    """The shipped gate's verdict on `images`, or the reason it could not be applied (e.g. tiles too
    small to measure): the tiles are still labelled, and the user is told why they are unmarked."""
    try:
        return gate_images(images)
    except InputError as err:
        return str(err)


def gate_slide_top_tiles(result: Any) -> GateResult | str | None:
    """The quality gate on a slide zero-shot result's top tiles (their pixels are in the result), in
    `ranking()` order, or the reason it could not be applied; None when there are no top tiles."""
    tiles = [result.top_tiles[int(t)] for t in result.ranking()["tile"]]
    return gate_or_reason(tiles) if tiles else None


def mark_layer_data(layer_data: Sequence[tuple[Any, dict[str, Any], str]], verdict: GateResult,
                    skip_failing: bool = False) -> list[tuple[Any, dict[str, Any], str]]:
    """Layer data with its Shapes layers' boxes marked by the gate's verdict (`mark_failing`)."""
    return [(d, mark_failing(k, verdict, skip_failing=skip_failing), kind) if kind == "shapes" else (d, k, kind)
            for d, k, kind in layer_data]
