"""Test slides written with tifffile from the real H&E samples (used by tests/slides and tests/gui)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pathology"
SVS = DATA / "cmu_small_region.svs"
PNG = DATA / "he_carcinoma_tiatoolbox.png"
MPP = 0.25  # µm per level-0 pixel of the test pyramids


def write_pyramid(path: Path, level0: np.ndarray, levels: int = 3, mpp: float | None = MPP) -> list[np.ndarray]:
    """A pyramidal tiled TIFF (JPEG) with each level the 2x box reduction of the one above."""
    images = [level0]
    for _ in range(levels - 1):
        images.append(np.asarray(Image.fromarray(images[-1]).reduce(2)))
    extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"} if mpp else {}
    with tifffile.TiffWriter(path) as tw:
        tw.write(images[0], tile=(256, 256), compression="jpeg", photometric="rgb", subifds=levels - 1, **extra)
        for image in images[1:]:
            tw.write(image, tile=(256, 256), compression="jpeg", photometric="rgb", subfiletype=1)
    return images


def carcinoma_pyramid(path: Path, repeat: int = 3) -> Path:
    """The carcinoma PNG tiled `repeat` x `repeat` as a 3-level JPEG pyramid at `MPP`."""
    png = np.asarray(Image.open(PNG).convert("RGB"))
    write_pyramid(path, np.tile(png, (repeat, repeat, 1)))
    return path
