"""`clipmed corrupt` and `clipmed tile` write what the library computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_clipmed.cli import main
from napari_clipmed.pathology.corrupt import corrupt

from .conftest import PNG


def test_corrupt_command_writes_the_corrupted_image(tmp_path: Path, png_image: np.ndarray) -> None:
    out = tmp_path / "blurred.png"
    assert main(["corrupt", str(PNG), "--kind", "hue", "--severity", "1.5", "--out", str(out)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), corrupt(png_image, "hue", 1.5))
    assert [p.name for p in tmp_path.iterdir()] == ["blurred.png"]  # no temporary file left


def test_corrupt_command_lists_and_refuses(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["corrupt", "--list"]) == 0
    assert "markup" in capsys.readouterr().out
    assert main(["corrupt", str(PNG), "--kind", "fog", "--out", str(tmp_path / "x.png")]) == 2
    assert "unknown corruption" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_tile_command_writes_tiles_and_table(tmp_path: Path, png_image: np.ndarray) -> None:
    assert main(["tile", str(PNG), "--size", "256", "--min-tissue", "0.9", "--out", str(tmp_path)]) == 0
    table = pd.read_csv(tmp_path / "tiles.csv")
    assert len(table) > 0 and (table["tissue_fraction"] >= 0.9).all()
    first = table.iloc[0]
    pixels = np.asarray(Image.open(tmp_path / first["file"]))
    row, col = int(first["row"]), int(first["col"])
    np.testing.assert_array_equal(pixels, png_image[row : row + 256, col : col + 256])
