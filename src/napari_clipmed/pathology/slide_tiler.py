"""Tiles of a whole slide at a target magnification, streamed from disk in batches.

The grid lives in level-0 pixels: a tile of `tile` px at `target_mpp` µm/px covers
`tile * target_mpp / slide.mpp` level-0 px (448 px for 224 px at 0.5 µm/px on a 0.25 µm/px scan),
so every tile knows its box on the slide. Each tile is read from the coarsest level that is still
at least as fine as the target (`Slide.best_level`), as the integer region that covers its box on
that level, and resized to `tile` px by Pillow (area averaging when shrinking, bilinear when a
slide is coarser than the target) with the box's exact, fractional position. Only tiles are read,
never a whole level; a few reader threads fetch the next batches while the model encodes the current one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from napari_clipmed.io.slide import Slide
    from napari_clipmed.pathology.tissue import TissueMask

DEFAULT_MPP = 0.5  # µm/px at which PLIP, QuiltNet, CONCH and PathCLIP tiles were made (20x)
DEFAULT_TILE = 224


@dataclass(frozen=True)
class TileGrid:
    """Tissue tiles of one slide: level-0 boxes, grid positions and tissue fractions."""

    slide_shape: tuple[int, int]  # level-0 (H, W)
    slide_mpp: float  # µm per level-0 pixel
    target_mpp: float
    tile: int  # output side, px
    level: int  # pyramid level the tiles are read from
    level_downsample: float
    origin: tuple[float, float]  # level-0 (y, x) of the grid's corner
    grid_shape: tuple[int, int]  # rows, columns of the full grid
    rowcol: np.ndarray  # (N, 2) int64 grid position of each kept tile
    tissue: np.ndarray  # (N,) tissue fraction

    @property
    def side(self) -> float:
        """Tile side in level-0 pixels."""
        return self.tile * self.target_mpp / self.slide_mpp

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float64 level-0 boxes y0, x0, y1, x1 (pixel edges: pixel i spans [i, i + 1))."""
        top_left = np.asarray(self.origin) + self.rowcol * self.side
        return np.concatenate([top_left, top_left + self.side], axis=1)

    def __len__(self) -> int:
        return len(self.rowcol)

    def describe(self) -> str:
        return f"{len(self):,} tissue tiles at {self.target_mpp:.2f} µm/px from level {self.level}"

    def to_frame(self) -> pd.DataFrame:
        """One row per tile: grid row/col, level-0 box (px), box in µm, tissue fraction."""
        import pandas as pd

        b = self.boxes
        return pd.DataFrame(
            {
                "tile": np.arange(len(self)),
                "grid_row": self.rowcol[:, 0],
                "grid_col": self.rowcol[:, 1],
                "y0_px": b[:, 0],
                "x0_px": b[:, 1],
                "y1_px": b[:, 2],
                "x1_px": b[:, 3],
                "y_um": b[:, 0] * self.slide_mpp,
                "x_um": b[:, 1] * self.slide_mpp,
                "size_um": np.full(len(self), self.side * self.slide_mpp),
                "tissue_fraction": self.tissue,
            }
        )


def check_tiling(target_mpp: float, tile: int, min_tissue: float) -> None:
    """One clear InputError per bad tiling parameter."""
    if not (isinstance(target_mpp, (int, float)) and math.isfinite(target_mpp) and target_mpp > 0):
        raise InputError(f"the target magnification must be a positive number of µm per pixel; got {target_mpp!r}")
    if not isinstance(tile, (int, np.integer)) or isinstance(tile, bool) or not 16 <= tile <= 4096:
        raise InputError(f"the tile size must be a whole number of pixels between 16 and 4096; got {tile!r}")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise InputError(f"min_tissue is a fraction between 0 and 1; got {min_tissue!r}")


def make_grid(
    slide: Slide,
    target_mpp: float = DEFAULT_MPP,
    tile: int = DEFAULT_TILE,
    tissue: TissueMask | None = None,
    min_tissue: float = 0.5,
    region: tuple[float, float, float, float] | None = None,
    level: int | None = None,
    max_ink: float = 0.02,
) -> TileGrid:
    """The grid of tiles over `region` (level-0 y0, x0, y1, x1; default the whole slide) kept by `tissue`.

    A tile is kept when at least `min_tissue` of it is tissue and at most `max_ink` of it is pen
    ink. Without a `tissue` mask every tile is kept. `level` forces the level tiles are read from.
    """
    check_tiling(target_mpp, tile, min_tissue)
    if slide.mpp is None:
        raise InputError(
            f"{slide.name} has no pixel size, so its tiles cannot be cut at {target_mpp} µm/px; "
            "set the slide's µm/px (widget field or --slide-mpp)"
        )
    side = tile * target_mpp / slide.mpp
    H, W = slide.shapes[0]
    y0, x0, y1, x1 = region if region is not None else (0.0, 0.0, float(H), float(W))
    y0, x0, y1, x1 = max(0.0, y0), max(0.0, x0), min(float(H), y1), min(float(W), x1)
    rows, cols = int((y1 - y0 + 1e-6) // side), int((x1 - x0 + 1e-6) // side)
    if rows < 1 or cols < 1:
        raise InputError(
            f"the region ({y1 - y0:.0f} x {x1 - x0:.0f} level-0 px) is smaller than one tile "
            f"({side:.0f} px = {tile} px at {target_mpp} µm/px)"
        )
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    rowcol = np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int64)
    chosen = slide.best_level(side / tile) if level is None else level
    if not 0 <= chosen < len(slide.levels):
        raise InputError(f"{slide.name} has levels 0..{len(slide.levels) - 1}; got level {chosen}")
    grid = TileGrid(
        (H, W), float(slide.mpp), float(target_mpp), int(tile), chosen, slide.downsamples[chosen],
        (y0, x0), (rows, cols), rowcol, np.ones(len(rowcol)),
    )
    if tissue is None:
        return grid
    fraction = tissue.fractions(grid.boxes)
    keep = fraction >= float(min_tissue) if min_tissue > 0 else np.ones(len(fraction), bool)
    keep &= tissue.ink_fractions(grid.boxes) <= max_ink
    return TileGrid(
        grid.slide_shape, grid.slide_mpp, grid.target_mpp, grid.tile, grid.level, grid.level_downsample,
        grid.origin, grid.grid_shape, rowcol[keep], fraction[keep],
    )


def read_box(slide: Slide, level: int, box: np.ndarray | tuple[float, ...], size: int | tuple[int, int]) -> np.ndarray:
    """The level-0 `box` (y0, x0, y1, x1) read from `level` and resized to `size` (side, or (h, w)) RGB uint8."""
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else size
    from PIL import Image

    ds = slide.downsamples[level]
    fy0, fx0, fy1, fx1 = (float(v) / ds for v in box)
    iy0, ix0 = math.floor(fy0), math.floor(fx0)
    iy1, ix1 = math.ceil(fy1 - 1e-9), math.ceil(fx1 - 1e-9)
    region = slide.read_region(level, iy0, ix0, iy1 - iy0, ix1 - ix0)
    if region.shape[:2] == (out_h, out_w) and (fy0, fx0, fy1, fx1) == (iy0, ix0, iy1, ix1):
        return region
    image = Image.fromarray(region)
    shrink = (fx1 - fx0) >= out_w and (fy1 - fy0) >= out_h
    resized = image.resize(
        (out_w, out_h), Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR, box=(fx0 - ix0, fy0 - iy0, fx1 - ix0, fy1 - iy0)
    )
    return np.asarray(resized)


def read_tiles(slide: Slide, grid: TileGrid, indices: np.ndarray | list[int]) -> np.ndarray:
    """(n, tile, tile, 3) uint8 tiles of the grid."""
    boxes = grid.boxes
    out = np.empty((len(indices), grid.tile, grid.tile, 3), dtype=np.uint8)
    for k, i in enumerate(indices):
        out[k] = read_box(slide, grid.level, boxes[i], grid.tile)
    return out


def reader_threads(cores: int | None = None) -> int:
    """Tile reader threads: half the cores, at least 2 and at most 8 (JPEG decoding releases the GIL, so
    readers scale with cores; a GPU or a many-core CPU encodes faster than two threads decode)."""
    return max(2, min(8, (cores or os.cpu_count() or 2) // 2))


def iter_tile_batches(
    slide: Slide, grid: TileGrid, batch_size: int = 64, workers: int | None = None, prefetch: int = 2
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """(indices, tiles) batches in grid order, read ahead by `workers` threads (default `reader_threads()`),
    `prefetch` batches in flight beyond the one being used.

    Closing the iterator (a cancelled run) drops the batches not yet started and stops reading.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1; got {batch_size}")
    workers = reader_threads() if workers is None else workers
    prefetch = max(prefetch, workers)  # every reader has a batch to work on
    order = np.arange(len(grid))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="clipmed-tiles")
    pending: list[Future[np.ndarray]] = []
    try:
        for k in range(min(len(chunks), prefetch + 1)):
            pending.append(pool.submit(read_tiles, slide, grid, chunks[k]))
        for k, chunk in enumerate(chunks):
            images = pending.pop(0).result()
            nxt = k + prefetch + 1
            if nxt < len(chunks):
                pending.append(pool.submit(read_tiles, slide, grid, chunks[nxt]))
            yield chunk, images
    finally:  # without waiting: a reader finishes its current batch, then its thread ends
        for future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)

