"""Tissue detection and the magnification-aware tiler on the real SVS (green marker ink) and the test pyramid.

References: HSV hue and saturation from scikit-image say independently which pixels are green ink;
the streamed tiles are compared with tiles read one by one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.color import rgb2hsv

from napari_clipmed.io.slide import open_slide
from napari_clipmed.pathology.slide_tiler import (
    iter_tile_batches,
    make_grid,
    read_tiles,
)
from napari_clipmed.pathology.tissue import INK, TISSUE, TissueMask, detect_tissue


def _green_fraction(tile: np.ndarray) -> float:
    hsv = rgb2hsv(tile)
    hue = hsv[..., 0] * 360
    return float(np.mean((hue > 90) & (hue < 200) & (hsv[..., 1] > 0.15)))


def test_ink_and_glass_tiles_are_excluded(slides: dict[str, Path]) -> None:
    with open_slide(slides["svs"]) as slide:
        tissue = detect_tissue(slide)
        grid = make_grid(slide, 0.5, 224, tissue)
        assert 20 < len(grid) < 60 and grid.level == 0
        assert (tissue.fractions(grid.boxes) >= 0.5).all() and (tissue.ink_fractions(grid.boxes) <= 0.02).all()
        # glass left of the skin: no tile there
        boxes = grid.boxes
        assert not ((boxes[:, 2] > 400) & (boxes[:, 0] < 900) & (boxes[:, 1] < 700)).any()
        # the tiles dropped only for ink are green where the kept ones are not
        plain = make_grid(slide, 0.5, 224, detect_tissue(slide, reject_ink=False))
        kept = {tuple(rc) for rc in grid.rowcol}
        dropped = [i for i, rc in enumerate(plain.rowcol) if tuple(rc) not in kept]
        assert dropped, "the inked tissue edge should cost some tiles"
        green_dropped = max(_green_fraction(t) for t in read_tiles(slide, plain, dropped))
        green_kept = np.mean([_green_fraction(t) for t in read_tiles(slide, grid, range(len(grid)))])
        assert green_dropped > 0.03 and green_kept < 0.01


def test_tissue_layer_round_trip_is_honoured_by_the_tiler(slides: dict[str, Path]) -> None:
    with open_slide(slides["pyramid"]) as slide:
        tissue = detect_tissue(slide)
        assert tissue.level == 1 and tissue.downsample == 2.0  # 1500 px: the coarsest level >= 1024
        labels, kwargs, kind = tissue.to_layer_data(slide.mpp)
        assert kind == "labels" and set(np.unique(labels)) <= {0, TISSUE, INK}
        assert kwargs["scale"] == (0.5, 0.5)
        full = make_grid(slide, 0.5, 224, tissue)
        edited = labels.copy()
        edited[:, : labels.shape[1] // 2] = 0  # the user erases the left half
        half = make_grid(slide, 0.5, 224, TissueMask.from_labels(edited, tissue.downsample))
        assert 0 < len(half) < len(full)
        assert (full.boxes[:, 1] == 0).any()
        assert (half.boxes[:, 1] >= 1500 - 448 / 2).all()  # at least half of each kept tile is right of x = 1500


def test_streamed_batches_equal_tiles_read_one_by_one(slides: dict[str, Path]) -> None:
    with open_slide(slides["pyramid"]) as slide:
        grid = make_grid(slide, 0.5, 224)
        assert grid.side == 448 and grid.level == 1 and len(grid) == 36
        assert grid.describe() == "36 tissue tiles at 0.50 µm/px from level 1"
        seen = []
        for indices, images in iter_tile_batches(slide, grid, batch_size=5):
            np.testing.assert_array_equal(images, read_tiles(slide, grid, indices))
            seen.extend(indices.tolist())
        assert seen == list(range(36))
        batches = iter_tile_batches(slide, grid, batch_size=4)
        next(batches)
        batches.close()  # cancel: readers stop, no error


def test_reader_threads_follow_the_cores() -> None:
    from napari_clipmed.pathology.slide_tiler import reader_threads

    assert [reader_threads(c) for c in (1, 2, 4, 8, 16, 64)] == [2, 2, 2, 4, 8, 8]
