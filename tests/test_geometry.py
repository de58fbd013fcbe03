"""`ops.geometry.Geometry`: the pixel <-> world mapping every result layer is placed with."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clipmed.errors import InputError
from napari_clipmed.ops.geometry import Geometry


def test_round_trip_crop_and_axes() -> None:
    g = Geometry((2.0, 0.5, 0.25), (10.0, -4.0, 1.0), unit="mm", shape=(5, 40, 60))
    pixels = np.array([[1.0, 2.0, 3.0], [4.0, 0.0, 8.0]])
    np.testing.assert_allclose(g.to_world(pixels), pixels * [2.0, 0.5, 0.25] + [10.0, -4.0, 1.0])
    np.testing.assert_allclose(g.to_pixels(g.to_world(pixels)), pixels)
    crop = g.shifted((1, 2, 4))
    np.testing.assert_allclose(crop.to_world([0, 0, 0]), g.to_world([1, 2, 4]))
    plane = g.last(2)
    assert (plane.scale, plane.translate, plane.shape, plane.unit) == ((0.5, 0.25), (-4.0, 1.0), (40, 60), "mm")
    assert plane.kwargs() == {"scale": (0.5, 0.25), "translate": (-4.0, 1.0)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scale": (1.0,), "translate": (0.0, 0.0)}, "one scale, translate"),
        ({"scale": (1.0, 0.0)}, "positive and finite"),
        ({"scale": (1.0, float("nan"))}, "positive and finite"),
        ({"shape": (3, 4, 5)}, "one scale, translate"),
    ],
)
def test_bad_geometry(kwargs, message) -> None:
    with pytest.raises(InputError, match=message):
        Geometry(**kwargs)
