from __future__ import annotations

import pytest

from napari_clipmed.models.loader import ClipModel, load_model


@pytest.fixture(scope="module")
def tiny() -> ClipModel:
    return load_model("tiny-random", device="cpu")
