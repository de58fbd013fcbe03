"""Fixtures for the napari GUI tests (run them under `xvfb-run -a`).

`viewer` is napari's `make_napari_viewer` with strict leak checks; `tiny_model` is the tiny random
CLIP (loaded once); `ct_crop` is a small crop of the packaged chest CT, so CT runs take seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.gui)


@pytest.fixture
def viewer(make_napari_viewer: Any) -> Any:
    """A hidden napari viewer; widgets left behind after the test make it fail."""
    return make_napari_viewer(strict_qt="raise")


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    from napari_clipmed.session import preload_triton
    from napari_clipmed.models.loader import load_model

    preload_triton()  # as the widgets' sessions do: a GL context may already exist
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def ct_crop() -> Any:
    """A 12-slice crop (3 mm voxels) of the sample chest CT through both lungs, as a CTVolume."""
    from napari_clipmed._sample_data import CHEST_CT_FILE
    from napari_clipmed.ct.io import CTVolume, read_ct

    full = read_ct(CHEST_CT_FILE)
    z0, z1 = 40, 52
    array = np.ascontiguousarray(full.array[z0:z1])
    origin = full.index_to_physical(np.array([[z0, 0, 0]]))[0]
    return CTVolume(array, full.spacing, tuple(float(v) for v in origin), full.direction, source="chest CT crop")


@pytest.fixture
def ct_layer(viewer: Any, ct_crop: Any) -> Any:
    """The CT crop added the way the reader adds volumes (HU, scale = spacing, translate = origin)."""
    from napari_clipmed._reader import ct_layer_data

    data, kwargs, _ = ct_layer_data(ct_crop, name="CT")
    return viewer.add_image(data, **kwargs)
