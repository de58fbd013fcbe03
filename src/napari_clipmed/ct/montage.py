"""A grid image of chosen CT patches, with each cell's provenance (where in the volume, which score).

The montage is what the ILD classifier sees and what a reader checks: every cell maps back to
its slice, row and column in voxels and mm (`Montage.cell_at(y, x)`), so a surprising
prediction can be traced to the patches that caused it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_clipmed.ct.patches import AXES, Patches
from napari_clipmed.errors import InputError


@dataclass(eq=False)
class Montage:
    """`image` (H, W, 3) uint8 of `grid` cells of `cell_size` px, `pad` px apart; `columns` one row per cell."""

    image: np.ndarray
    grid: tuple[int, int]  # (rows, cols)
    cell_size: int
    pad: int
    columns: dict[str, np.ndarray]  # rank, patch, axis, slice, row, col, z.., *_mm, score, cell_row, cell_col

    def __len__(self) -> int:
        return int(self.columns["rank"].shape[0])

    def cell_box(self, rank: int) -> tuple[int, int, int, int]:
        """(y0, x0, y1, x1) pixel box of the cell that shows patch number `rank` (0 = best)."""
        r, c = int(self.columns["cell_row"][rank]), int(self.columns["cell_col"][rank])
        y0 = self.pad + r * (self.cell_size + self.pad)
        x0 = self.pad + c * (self.cell_size + self.pad)
        return y0, x0, y0 + self.cell_size, x0 + self.cell_size

    def cell_at(self, y: float, x: float) -> int | None:
        """Rank of the patch shown at montage pixel (y, x), or None on padding or an empty cell."""
        step = self.cell_size + self.pad
        yy, xx = int(math.floor(y)) - self.pad, int(math.floor(x)) - self.pad
        if yy < 0 or xx < 0:
            return None
        r, ry = divmod(yy, step)
        c, rx = divmod(xx, step)
        if ry >= self.cell_size or rx >= self.cell_size or r >= self.grid[0] or c >= self.grid[1]:
            return None
        rank = r * self.grid[1] + c
        return rank if rank < len(self) else None

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        return pd.DataFrame(self.columns)


def grid_shape(n: int, grid: tuple[int, int] | None = None) -> tuple[int, int]:
    """Rows and columns for `n` cells: as square as possible (more columns than rows) unless given."""
    if grid is not None:
        rows, cols = int(grid[0]), int(grid[1])
        if rows < 1 or cols < 1 or rows * cols < n:
            raise InputError(f"a {rows} x {cols} grid cannot hold {n} patches")
        return rows, cols
    cols = max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def build_montage(
    patches: Patches,
    scores: Sequence[float] | np.ndarray,
    indices: Sequence[int] | np.ndarray | None = None,
    grid: tuple[int, int] | None = None,
    pad: int = 2,
    cell_size: int = 128,
) -> Montage:
    """Tile patches `indices` (in rank order; default all) into a grid, row by row.

    `scores` holds one score per patch of `patches` (the montage keeps those of the chosen ones).
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(patches),):
        raise InputError(f"need one score per patch ({len(patches)}), got shape {scores.shape}")
    idx = np.arange(len(patches)) if indices is None else np.asarray(indices, dtype=np.int64)
    if idx.size == 0:
        raise InputError("no patches to put in the montage")
    if idx.min() < 0 or idx.max() >= len(patches):
        raise InputError(f"patch indices must lie in 0..{len(patches) - 1}")
    if pad < 0 or cell_size < 1:
        raise InputError(f"pad must be >= 0 and cell_size >= 1, got {pad} and {cell_size}")
    rows, cols = grid_shape(len(idx), grid)
    height = rows * cell_size + (rows + 1) * pad
    width = cols * cell_size + (cols + 1) * pad
    image = np.zeros((height, width, 3), dtype=np.uint8)
    pixels = patches.images(idx, size=cell_size)
    ranks = np.arange(len(idx))
    cell_row, cell_col = ranks // cols, ranks % cols
    # All cells in one assignment: a (rows*cols) view of the grid without the padding.
    step = cell_size + pad
    full = np.zeros((rows * cols, cell_size, cell_size, 3), dtype=np.uint8)
    full[: len(idx)] = pixels
    tiles = full.reshape(rows, cols, cell_size, cell_size, 3).transpose(0, 2, 1, 3, 4)
    body = image[pad : pad + rows * step, pad : pad + cols * step]
    body.reshape(rows, step, cols, step, 3)[:, :cell_size, :, :cell_size] = tiles
    sub = patches.subset(idx)
    centre, mm, world = sub.centre_voxel, sub.centre_mm, sub.world_mm
    columns = {
        "rank": ranks, "patch": idx, "score": scores[idx],
        "axis": np.array([AXES[int(a)] for a in sub.axis]),
        "slice": sub.slice_index, "row": sub.row, "col": sub.col,
        "height_px": sub.heights, "width_px": sub.widths,
        "z": centre[:, 0], "y": centre[:, 1], "x": centre[:, 2],
        "z_mm": mm[:, 0], "y_mm": mm[:, 1], "x_mm": mm[:, 2],
        "world_x": world[:, 0], "world_y": world[:, 1], "world_z": world[:, 2],
        "lung_fraction": sub.lung_fraction, "cell_row": cell_row, "cell_col": cell_col,
    }
    return Montage(image=image, grid=(rows, cols), cell_size=cell_size, pad=pad, columns=columns)
