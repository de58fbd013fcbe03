"""Bad input through the scripted API (`napari_clipmed.api`): one `InputError`, layers untouched, none added."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from napari_clipmed import api
from napari_clipmed.errors import InputError


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"patch_size_mm": float("inf")}, "size_mm must be a finite number"),
        ({"stride_mm": float("nan")}, "stride"),
        ({"k": 0}, "k .*must be at least 1"),
    ],
)
def test_ct_montage_bad_values(viewer: Any, ct_layer: Any, tiny_model: Any, config: dict, needle: str) -> None:
    api.load_model(viewer, "tiny-random")
    before = np.array(ct_layer.data, copy=True)
    n_layers = len(viewer.layers)
    with pytest.raises(InputError, match=needle):
        api.ct_montage(viewer, ct_layer, **config)
    assert len(viewer.layers) == n_layers
    np.testing.assert_array_equal(ct_layer.data, before)


def test_corrupt_layer_bad_kind_and_severity(viewer: Any) -> None:
    (he,) = viewer.open_sample("napari-clipmed", "he_carcinoma")
    before = np.array(he.data, copy=True)
    for kind, severity in (("blurr", 2), ("blur", float("inf")), ("blur", -1)):
        with pytest.raises(InputError):
            api.corrupt_layer(viewer, he, kind, severity)
    assert len(viewer.layers) == 1
    np.testing.assert_array_equal(he.data, before)
