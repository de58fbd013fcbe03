"""A small labelled tile set cut from the real H&E sample images (label = source image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import tifffile

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "pathology"
TILE = 64
PER_IMAGE = 12


def _tiles(image: np.ndarray, n: int, size: int) -> list[np.ndarray]:
    """`n` tiles on a regular grid over the central part of the image."""
    h, w = image.shape[:2]
    cols = 4
    ys = np.linspace(h * 0.2, h * 0.8 - size, (n + cols - 1) // cols).astype(int)
    xs = np.linspace(w * 0.2, w * 0.8 - size, cols).astype(int)
    return [image[y : y + size, x : x + size] for y in ys for x in xs][:n]


def write_tile_folder(root: Path) -> Path:
    he = np.asarray(Image.open(DATA / "he_carcinoma_tiatoolbox.png").convert("RGB"))
    with tifffile.TiffFile(DATA / "cmu_small_region.svs") as tif:
        skin = tif.pages[0].asarray()
    for name, image in (("he_carcinoma", he), ("cmu_skin", skin)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, tile in enumerate(_tiles(image, PER_IMAGE, TILE)):
            Image.fromarray(np.ascontiguousarray(tile)).save(root / name / f"tile_{i:02d}.png")
    return root


@pytest.fixture(scope="session")
def tile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ImageFolder with classes cmu_skin and he_carcinoma, 12 tiles (64 x 64 RGB) each."""
    return write_tile_folder(tmp_path_factory.mktemp("tiles") / "tiles")
