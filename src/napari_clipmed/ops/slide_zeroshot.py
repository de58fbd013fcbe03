"""Zero-shot classification of a whole slide: per-tile probabilities, heat maps, top tiles, slide score.

Every tissue tile (at the target magnification, `ops.slide_common`) is classified with the prompt
ensemble. The slide-level score follows MI-Zero (Lu et al., 2023): for each class, the mean of its
`top_j` highest tile similarities; the slide's probabilities are the softmax of those pooled
similarities times the model's logit scale. Heat maps hold one probability per grid cell (NaN off
tissue) and are placed so that heat pixel (r, c) covers exactly its tile's level-0 box.

`run(request, model)` is the per-slide unit of work: with `request.out` set it saves the slide's
outputs atomically (so a cluster can map it over slides, and a resumed batch skips finished ones).
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.ops.layerdata import LayerData, class_colors, rgba
from napari_clipmed.ops.slide_common import (
    SlideTiling,
    as_prompts,
    check_slide_path,
    iter_embed_grid,
    rectangles,
    slide_geometry_args,
    tile_slide,
)
from napari_clipmed.pathology.slide_tiler import TileGrid, read_tiles
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    import pandas as pd


def heat_colormap(index: int, name: str) -> dict[str, Any]:
    """White (probability 0) to the class's tab10 colour (1): with minimum blending, 0 leaves the slide as it is."""
    from matplotlib import colormaps

    colour = list(colormaps["tab10"](index % 10))
    return {"colors": [[1.0, 1.0, 1.0, 1.0], colour], "name": f"clipmed p({name})"}


@dataclass(frozen=True)
class SlideZeroShotRequest:
    """One slide, the prompts, the tiling, MI-Zero's `top_j`, top tiles per class, optional output folder."""

    slide: str
    prompts: Any  # PromptSet, preset name/file, class list or mapping
    tiling: SlideTiling = field(default_factory=SlideTiling)
    top_j: int = 10
    top_k: int = 5
    out: str | None = None
    table_format: str = "csv"  # or "parquet"
    heatmap_format: str = "tiff"  # pyramidal TIFF, or "zarr"

    def __post_init__(self) -> None:
        object.__setattr__(self, "slide", check_slide_path(self.slide))
        object.__setattr__(self, "prompts", as_prompts(self.prompts))
        if not isinstance(self.top_j, int) or self.top_j < 1:
            raise InputError(f"top_j (tiles pooled per class for the slide score) must be >= 1; got {self.top_j!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k (top tiles shown per class) must be >= 0; got {self.top_k!r}")
        if self.table_format not in ("csv", "parquet"):
            raise InputError(f"the tile table is csv or parquet; got {self.table_format!r}")
        if self.heatmap_format not in ("tiff", "zarr"):
            raise InputError(f"the heat map is written as tiff or zarr; got {self.heatmap_format!r}")

    def config(self) -> dict[str, Any]:
        prompts = self.prompts
        return {
            "operation": "slide-zeroshot",
            "slide": self.slide,
            "classes": {k: list(v) for k, v in prompts.classes.items()},
            "templates": list(prompts.templates),
            "top_j": self.top_j,
            "top_k": self.top_k,
            **self.tiling.config(),
        }


@dataclass(frozen=True)
class SlideZeroShotResult:
    """Tile similarities and probabilities over the grid, with the top tiles' pixels."""

    slide: str
    grid: TileGrid
    classes: tuple[str, ...]
    similarities: np.ndarray  # (N, C) cosine
    probabilities: np.ndarray  # (N, C)
    logit_scale: float
    top_j: int
    top_k: int
    top_tiles: dict[int, np.ndarray]  # tile index -> (tile, tile, 3) uint8
    config: dict[str, Any]

    @property
    def name(self) -> str:
        from napari_clipmed.io.slide import slide_stem

        return slide_stem(self.slide)

    def slide_scores(self) -> dict[str, Any]:
        """MI-Zero top-j mean pooling: pooled similarity per class, slide probabilities, predicted class."""
        j = min(self.top_j, len(self.similarities))
        pooled = -np.sort(-self.similarities, axis=0)[:j].mean(axis=0)
        logits = self.logit_scale * pooled.astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        return {
            "slide": self.slide,
            "tiles": len(self.grid),
            "top_j": j,
            "pooled_similarity": dict(zip(self.classes, pooled.round(6).tolist())),
            "probability": dict(zip(self.classes, probs.round(6).tolist())),
            "predicted": self.classes[int(np.argmax(probs))],
        }

    def ranking(self) -> pd.DataFrame:
        """The `top_k` tiles of each class: class, rank, tile, probability, level-0 box."""
        import pandas as pd

        rows = []
        boxes = self.grid.boxes
        for c, name in enumerate(self.classes):
            order = np.argsort(-self.probabilities[:, c], kind="stable")[: self.top_k]
            for rank, i in enumerate(order, start=1):
                y0, x0, y1, x1 = boxes[i]
                rows.append({"class": name, "rank": rank, "tile": int(i), "probability": float(self.probabilities[i, c]),
                             "y0_px": y0, "x0_px": x0, "y1_px": y1, "x1_px": x1})
        return pd.DataFrame(rows)

    def heatmap(self) -> np.ndarray:
        """(C, rows, cols) float32 probabilities on the tile grid, NaN where no tile was kept."""
        rows, cols = self.grid.grid_shape
        heat = np.full((len(self.classes), rows, cols), np.nan, dtype=np.float32)
        r, c = self.grid.rowcol[:, 0], self.grid.rowcol[:, 1]
        heat[:, r, c] = self.probabilities.T
        return heat

    def to_frame(self) -> pd.DataFrame:
        """The tile table: grid position, level-0 box (px and µm), tissue, probability and cosine per class, prediction."""
        frame = self.grid.to_frame()
        for c, name in enumerate(self.classes):
            frame[f"p({name})"] = self.probabilities[:, c]
        for c, name in enumerate(self.classes):
            frame[f"sim({name})"] = self.similarities[:, c]
        frame["predicted"] = [self.classes[i] for i in np.argmax(self.probabilities, axis=1)]
        return frame

    def heat_geometry(self, geometry: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scale, translate) that put heat pixel (r, c) over its tile's box, in the slide layer's world."""
        scale, translate = slide_geometry_args(self.grid.slide_mpp, geometry)
        side = self.grid.side
        centre = np.asarray(self.grid.origin) + side / 2.0 - 0.5  # level-0 pixel-centre coordinate of cell (0, 0)
        return scale * side, translate + centre * scale

    def to_layer_data(self, geometry: Any | None = None) -> list[LayerData]:
        """One heat-map Image layer per class and a Shapes layer of the top tiles (with features)."""
        heat_scale, heat_translate = self.heat_geometry(geometry)
        scale, translate = slide_geometry_args(self.grid.slide_mpp, geometry)
        layers: list[LayerData] = []
        for c, name in enumerate(self.classes):
            kwargs = {
                "name": f"{self.name}: p({name})",
                "scale": tuple(float(v) for v in heat_scale),
                "translate": tuple(float(v) for v in heat_translate),
                "colormap": heat_colormap(c, name),
                "contrast_limits": (0.0, 1.0),
                "blending": "minimum",  # white (p = 0, and cells off tissue) leaves the slide unchanged
                "visible": c == 0,
                "metadata": {"slide": self.slide, "class": name, "tile_um": self.grid.side * self.grid.slide_mpp},
            }
            layers.append((np.nan_to_num(self.heatmap()[c], nan=0.0), kwargs, "image"))
        ranking = self.ranking()
        if len(ranking):
            boxes = ranking[["y0_px", "x0_px", "y1_px", "x1_px"]].to_numpy()
            colours = class_colors(self.classes)  # the colours of the widget's legend and the tile labels
            edge = np.array([rgba(colours[str(c)], 1.0) for c in ranking["class"]], dtype=np.float32).reshape(-1, 4)
            kwargs = {
                "name": f"{self.name}: top tiles",
                "shape_type": "rectangle",
                "scale": tuple(float(v) for v in scale),
                "translate": tuple(float(v) for v in translate),
                "edge_width": max(2.0, self.grid.side / 40),
                "edge_color": edge,  # one row per tile, so the quality gate can paint failing ones red
                "face_color": "transparent",
                "features": ranking,
                "text": {"string": "{class} #{rank}", "size": 8, "color": "white", "anchor": "upper_left"},
            }
            layers.append((rectangles(boxes), kwargs, "shapes"))
        return layers

    def save(self, folder: str | Path, table_format: str = "csv", heatmap_format: str = "tiff") -> Path:
        """The slide's outputs in `folder`, built in a temporary sibling and renamed into place."""
        from napari_clipmed.io.atomic import atomic_dir, write_frame, write_json

        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            write_frame(tmp / f"tiles.{table_format}", self.to_frame())
            write_frame(tmp / "top_tiles.csv", self.ranking())
            write_heatmap(tmp / ("heatmap.tif" if heatmap_format == "tiff" else "heatmap.zarr"), self)
            _write_top_pngs(tmp / "top_tiles", self)
            write_json(tmp / "config.json", self.config)
            write_json(tmp / "scores.json", self.slide_scores())  # written last: the slide is done
        return folder


def _write_top_pngs(folder: Path, result: SlideZeroShotResult) -> None:
    from PIL import Image

    folder.mkdir()
    for row in result.ranking().itertuples(index=False):
        name = "".join(ch if ch.isalnum() else "_" for ch in str(row[0]))
        Image.fromarray(result.top_tiles[int(row.tile)]).save(folder / f"{name}_{row.rank:02d}_tile{row.tile}.png")


def write_heatmap(path: Path, result: SlideZeroShotResult) -> None:
    """(C, rows, cols) float32 heat maps: a pyramidal TIFF (µm resolution tags) or a zarr array."""
    heat = result.heatmap()
    um = result.grid.side * result.grid.slide_mpp  # µm per heat pixel
    if path.suffix == ".zarr":
        import zarr

        array = zarr.create_array(str(path), shape=heat.shape, dtype="float32", chunks=(1, 256, 256), fill_value=np.nan)
        array[:] = heat
        array.attrs.update({"classes": list(result.classes), "um_per_pixel": um, "origin_px": list(result.grid.origin)})
        return
    import tifffile

    levels = [heat]
    while min(levels[-1].shape[1:]) >= 64:
        h, w = levels[-1].shape[1] // 2 * 2, levels[-1].shape[2] // 2 * 2
        block = levels[-1][:, :h, :w].reshape(len(heat), h // 2, 2, w // 2, 2)
        with warnings.catch_warnings():  # 2x2 blocks outside the tissue are all NaN, and stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            levels.append(np.nanmean(block, axis=(2, 4)).astype(np.float32))
    meta = {"axes": "CYX", "classes": list(result.classes), "um_per_pixel": um}
    with tifffile.TiffWriter(path) as tw:
        for k, level in enumerate(levels):
            res = 1e4 / (um * 2**k)  # pixels per cm
            tw.write(level, photometric="minisblack", planarconfig="separate",
                     subifds=len(levels) - 1 if k == 0 else None, subfiletype=1 if k else 0,
                     metadata=meta if k == 0 else None, resolution=(res, res), resolutionunit="CENTIMETER")


def iter_run(request: SlideZeroShotRequest, model: Any) -> ProgressGenerator[SlideZeroShotResult]:
    """Classify every tissue tile of the slide; yields Progress per batch of tiles."""
    from napari_clipmed.zeroshot import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_prompts(model, request.prompts)
    slide, _tissue, grid = tile_slide(request.slide, request.tiling)
    try:
        embeddings = yield from iter_embed_grid(slide, grid, model, request.tiling.batch_size)
        sims = classifier.scores(embeddings)
        probs = classifier.predict_proba(embeddings)
        top = np.unique(np.concatenate([np.argsort(-probs[:, c], kind="stable")[: request.top_k] for c in range(probs.shape[1])]))
        pixels = read_tiles(slide, grid, top)
    finally:
        slide.close()
    config = {**request.config(), "model": model.identity, "slide_mpp_used": grid.slide_mpp, "level": grid.level}
    result = SlideZeroShotResult(
        request.slide, grid, tuple(classifier.classes), sims, probs, float(classifier.logit_scale),
        request.top_j, request.top_k, dict(zip(top.tolist(), pixels)), config,
    )
    if request.out is not None:
        result.save(request.out, request.table_format, request.heatmap_format)
    yield Progress(len(grid), len(grid), f"{result.name}: slide score {result.slide_scores()['predicted']}")
    return result


def run(request: SlideZeroShotRequest, model: Any) -> SlideZeroShotResult:
    """Plain call of `iter_run` (saves to `request.out` when set)."""
    return run_generator(iter_run(request, model))


def item_outputs(request: SlideZeroShotRequest, model: Any) -> dict[str, object]:
    """One slide as an item of `distributed.iter_run_items`: it saves the result in ``items/<slide>/slide/``."""
    from dataclasses import replace

    return {"slide": run(replace(request, out=None), model)}
