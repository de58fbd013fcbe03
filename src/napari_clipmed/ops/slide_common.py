"""What slide operations share: the tiling parameters, opening and tiling a slide, streaming tile embeddings.

`SlideTiling` holds the parameters every slide operation validates the same way; `tile_slide`
opens the slide, finds its tissue (unless given) and makes the grid; `iter_embed_grid` streams
the grid's tiles from disk (reader threads run ahead) through the model (on a CPU several batches at
once, `models.stream`), yielding progress per batch so a cancelled run stops reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.io.slide import Slide, check_mpp, open_slide
from napari_clipmed.pathology.slide_tiler import (
    DEFAULT_MPP,
    DEFAULT_TILE,
    TileGrid,
    check_tiling,
    iter_tile_batches,
    make_grid,
    reader_threads,
)
from napari_clipmed.pathology.tissue import TissueMask, detect_tissue
from napari_clipmed.progress import Progress, ProgressGenerator

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SlideTiling:
    """How a slide is cut: target µm/px, tile side, tissue threshold, optional user pixel size, region, mask."""

    target_mpp: float = DEFAULT_MPP
    tile: int = DEFAULT_TILE
    min_tissue: float = 0.5
    slide_mpp: float | None = None  # µm per level-0 pixel when the file does not say (or says wrong)
    region: Box | None = None  # level-0 y0, x0, y1, x1
    tissue: TissueMask | None = field(default=None, compare=False, repr=False)  # e.g. an edited tissue layer
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_tiling(self.target_mpp, self.tile, self.min_tissue)
        if self.slide_mpp is not None:
            object.__setattr__(self, "slide_mpp", check_mpp(self.slide_mpp, "the slide's pixel size"))
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch_size must be a positive whole number; got {self.batch_size!r}")
        if self.region is not None:
            region = tuple(float(v) for v in self.region)
            if len(region) != 4 or region[2] <= region[0] or region[3] <= region[1]:
                raise InputError(f"a region is (y0, x0, y1, x1) with y1 > y0 and x1 > x0; got {self.region!r}")
            object.__setattr__(self, "region", region)

    def config(self) -> dict[str, Any]:
        return {
            "target_mpp": self.target_mpp,
            "tile": self.tile,
            "min_tissue": self.min_tissue,
            "slide_mpp": self.slide_mpp,
            "region": self.region,
            "tissue": "user" if self.tissue is not None else "detected",
        }


def check_slide_path(path: str | os.PathLike[str]) -> str:
    """The path as a string, or one clear InputError when nothing is there."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise InputError(f"a slide is given by its file path; got {path!r}")
    if not Path(path).exists():
        raise InputError(f"no such slide: {path}")
    return str(path)


def tile_slide(path: str, tiling: SlideTiling) -> tuple[Slide, TissueMask, TileGrid]:
    """Open the slide and make its grid of tissue tiles (the caller closes the slide)."""
    slide = open_slide(path, mpp=tiling.slide_mpp)
    try:
        tissue = tiling.tissue if tiling.tissue is not None else detect_tissue(slide)
        grid = make_grid(slide, tiling.target_mpp, tiling.tile, tissue, tiling.min_tissue, tiling.region)
        if len(grid) == 0:
            raise InputError(
                f"{slide.name}: no tile of {tiling.tile} px at {tiling.target_mpp} µm/px has "
                f"{tiling.min_tissue:.0%} tissue (lower min_tissue, or check the tissue layer)"
            )
    except BaseException:
        slide.close()
        raise
    return slide, tissue, grid


def iter_embed_grid(slide: Slide, grid: TileGrid, model: Any, batch_size: int = 64) -> ProgressGenerator[np.ndarray]:
    """(N, D) embeddings of the grid's tiles, streamed from disk; yields progress per batch."""
    n = len(grid)
    out = np.empty((n, model.embed_dim), dtype=np.float32)
    what = grid.describe()
    yield Progress(0, n, what)
    import torch

    from napari_clipmed.models.stream import balanced_batch_size, cpu_lanes, iter_encode_batches  # torch: when used

    lanes = cpu_lanes(model)  # on a CPU, batches encode side by side so that reading hides behind them
    batch_size = balanced_batch_size(n, batch_size, lanes)  # the lanes finish together
    readers = reader_threads(torch.get_num_threads())  # this process's core budget (a cluster worker's share)
    batches = iter_tile_batches(slide, grid, batch_size, readers, prefetch=lanes + 1)  # close() stops its readers
    encoded = iter_encode_batches(model, batches, lanes)
    try:
        done = 0
        for indices, vectors in encoded:
            out[indices] = vectors
            done += len(indices)
            yield Progress(done, n, f"{what}: {done:,} encoded")
    finally:
        encoded.close()  # a cancelled run drops the batches not started ...
        batches.close()  # ... and stops the readers here
    return out


def slide_geometry_args(slide_mpp: float, geometry: Any | None) -> tuple[np.ndarray, np.ndarray]:
    """(scale, translate) of level-0 pixels in the world: the slide layer's geometry, or µm from the origin."""
    if geometry is None:
        return np.array([slide_mpp, slide_mpp]), np.zeros(2)
    return np.asarray(geometry.scale[-2:], dtype=float), np.asarray(geometry.translate[-2:], dtype=float)


def rectangles(boxes: np.ndarray) -> list[np.ndarray]:
    """Level-0 boxes (pixel edges) as napari rectangles in pixel-centre coordinates (4 corners each)."""
    shapes = []
    for y0, x0, y1, x1 in np.asarray(boxes, dtype=float) - 0.5:
        shapes.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]))
    return shapes


def as_prompts(spec: Any) -> Any:
    """A PromptSet by the one prompt syntax (`PromptSet.parse`: preset, file, class text, list or mapping)."""
    from napari_clipmed.zeroshot import PromptSet

    return PromptSet.parse(spec)
