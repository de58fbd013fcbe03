"""Slides built from the real H&E samples (../shared/data/pathology) with tifffile, once per session.

`pyramid`: the carcinoma PNG tiled 3 x 3 (3000 x 3000 px), three levels (1, 2, 4), JPEG tiles of
256 px, 0.25 µm/px in the TIFF resolution tags; plus the real SVS, a slide without pixel size, a
truncated copy, and a grey (non-RGB) TIFF.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from slide_support import PNG, SVS, write_pyramid


@pytest.fixture(scope="session")
def he_png() -> np.ndarray:
    return np.asarray(Image.open(PNG).convert("RGB"))


@pytest.fixture(scope="session")
def slides(tmp_path_factory: pytest.TempPathFactory, he_png: np.ndarray) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slides")
    level0 = np.tile(he_png, (3, 3, 1))
    paths = {"pyramid": root / "carcinoma.tif", "no_mpp": root / "no_mpp.tif", "svs": SVS}
    write_pyramid(paths["pyramid"], level0)
    write_pyramid(paths["no_mpp"], he_png, levels=2, mpp=None)
    data = paths["pyramid"].read_bytes()
    paths["truncated"] = root / "truncated.tif"
    paths["truncated"].write_bytes(data[: len(data) // 2])
    paths["grey"] = root / "grey.tif"
    tifffile.imwrite(paths["grey"], np.zeros((300, 300), np.uint16), tile=(256, 256))
    paths["junk"] = root / "junk.svs"
    paths["junk"].write_bytes(b"II*\x00" + b"\x00" * 20)
    return paths
