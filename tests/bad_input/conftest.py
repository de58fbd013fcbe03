"""Shared helpers for the bad-input tests: run `clipmed` in-process and check the one-line error."""

from __future__ import annotations

import re

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_clipmed.cli import main

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"  # as the other test packages find it
CT = DATA / "ct"
PATHOLOGY = DATA / "pathology"


def tree(folder: Path) -> list[str]:
    """Every path under `folder` (empty when it does not exist): 'nothing written' checks."""
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture()
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run `clipmed ARGS` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def one_line_error(err: str, command: str, *needles: str) -> None:
    """stderr is exactly one line `clipmed COMMAND: error: ...` holding every needle, and no traceback
    (besides the line naming the loaded model, `model NAME:HASH on DEVICE, PRECISION`)."""
    lines = [line for line in err.splitlines() if line.strip() and not re.match(r"model \S+ on ", line)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"clipmed {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="session")
def tile_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder of 2 classes x 6 tiles (48 px) cut from the real H&E sample."""
    he = np.asarray(Image.open(PATHOLOGY / "he_carcinoma_tiatoolbox.png").convert("RGB"))
    root = tmp_path_factory.mktemp("tiles") / "tiles"
    for c, name in enumerate(("tumour", "stroma")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            y, x = 100 + 120 * i, 100 + 400 * c
            Image.fromarray(np.ascontiguousarray(he[y : y + 48, x : x + 48])).save(root / name / f"t{i}.png")
    return root


@pytest.fixture()
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path
