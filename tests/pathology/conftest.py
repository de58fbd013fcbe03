"""Real H&E tiles for the pathology tests, cut once per session from ../shared/data/pathology."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_clipmed.pathology.tiles import read_slide_level

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pathology"
SVS = DATA / "cmu_small_region.svs"
PNG = DATA / "he_carcinoma_tiatoolbox.png"
TILE = 224


@pytest.fixture(scope="session")
def svs_level0() -> np.ndarray:
    return read_slide_level(SVS)


@pytest.fixture(scope="session")
def png_image() -> np.ndarray:
    return read_slide_level(PNG)


@pytest.fixture(scope="session")
def he_tiles(svs_level0: np.ndarray, png_image: np.ndarray) -> np.ndarray:
    """Six 224 x 224 tiles: three of skin (SVS, dermis/epidermis, one at the inked edge), three of carcinoma."""
    corners_svs = [(1600, 900), (2300, 700), (1150, 1700)]  # the last holds green margin ink
    corners_png = [(0, 0), (400, 500), (760, 100)]
    tiles = [svs_level0[y : y + TILE, x : x + TILE] for y, x in corners_svs]
    tiles += [png_image[y : y + TILE, x : x + TILE] for y, x in corners_png]
    return np.ascontiguousarray(np.stack(tiles))
