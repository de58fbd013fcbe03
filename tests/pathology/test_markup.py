"""Procedural pen ink: seeded, documented coverage per severity, nested across severities, ink colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_clipmed.errors import InputError
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.pathology.markup import (
    COVERAGE_RANGES,
    INK_COLOURS,
    coverage_range,
    ink_batch,
    ink_layer,
    seed_sequences,
)


def test_same_seed_same_ink_different_seeds_different_ink(he_tiles: np.ndarray) -> None:
    a = corrupt(he_tiles[:2], "markup", 2, seed=11)
    b = corrupt(he_tiles[:2], "markup", 2, seed=11)
    c = corrupt(he_tiles[:2], "markup", 2, seed=12)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.02
    assert np.mean(a[0] != corrupt(he_tiles[1], "markup", 2, seed=11)) > 0  # own strokes per image
    different = corrupt(np.stack([he_tiles[0], he_tiles[0]]), "markup", 2, seed=11)
    assert np.mean(different[0] != different[1]) > 0.02  # even for identical images


@pytest.mark.parametrize("severity", [1, 2, 3, 4])
def test_coverage_falls_in_its_documented_range_over_many_seeds(severity: int) -> None:
    lo, hi = COVERAGE_RANGES[severity - 1]
    _, density = ink_batch(224, 224, severity, seed_sequences(2024, 48))
    coverage = (density >= 0.5).float().mean(dim=(1, 2, 3)).numpy()
    assert coverage.min() >= lo and coverage.max() <= hi, (coverage.min(), coverage.max())
    assert coverage.std() > 0.003  # each seed draws its own target inside the range


def test_coverage_on_other_sizes_and_fractional_severity() -> None:
    for h, w, severity in ((97, 300, 2), (512, 512, 3.5), (16, 16, 4)):
        lo, hi = coverage_range(severity)
        layer = ink_layer(h, w, severity, seed=5)
        assert layer.transmittance.shape == (h, w, 3) and layer.density.shape == (h, w)
        assert lo - 0.01 <= layer.coverage <= hi + 0.01, (h, w, severity, layer.coverage)


def test_ink_grows_with_severity_for_one_seed() -> None:
    layers = [ink_layer(224, 224, s, seed=3) for s in (0.5, 1, 1.5, 2, 3, 4)]
    for weaker, stronger in zip(layers, layers[1:]):
        assert stronger.coverage > weaker.coverage
        inked = weaker.density >= 0.5
        assert np.mean(stronger.density[inked] >= 0.5) > 0.99  # nested: the pen only draws further


def test_ink_colour_on_white_follows_its_absorbance() -> None:
    white = np.full((8, 224, 224, 3), 255, dtype=np.uint8)
    inked = corrupt(white, "markup", 4, seed=9)
    colours = set()
    for i, image in enumerate(inked):
        colour = ink_layer(224, 224, 4, seed=9, index=i).colour
        colours.add(colour)
        dense = image.min(axis=-1) < 200
        od = -np.log(np.clip(image[dense].astype(float), 1, 255) / 255.0)
        direction = od.mean(axis=0) / od.mean(axis=0).max()
        np.testing.assert_allclose(direction, INK_COLOURS[colour], atol=0.12)
    assert len(colours) >= 2


def test_a_seed_sequence_can_be_reused() -> None:
    seq = np.random.SeedSequence([5, 1])
    first = ink_layer(64, 64, 2, seed=seq)
    np.testing.assert_array_equal(first.density, ink_layer(64, 64, 2, seed=seq).density)
    third = seed_sequences(seq, 3)[2].generate_state(2)
    np.testing.assert_array_equal(third, seed_sequences(seq, 1, first=2)[0].generate_state(2))
    np.testing.assert_array_equal(third, np.random.SeedSequence([5, 1]).spawn(3)[2].generate_state(2))


def test_ink_is_translucent_and_only_darkens(he_tiles: np.ndarray) -> None:
    out = corrupt(he_tiles, "markup", 4, seed=1).astype(int)
    assert np.all(out <= he_tiles.astype(int) + 1)  # absorbance removes light, never adds it
    layer = ink_layer(224, 224, 4, seed=1, index=0)
    core = layer.density >= 0.99
    texture = he_tiles[0].astype(float).std()
    assert out[0][core].astype(float).std() > 0.2 * texture  # tissue still shows under the ink


def test_markup_on_float_tensor_matches_uint8(he_tiles: np.ndarray) -> None:
    t = torch.from_numpy(he_tiles[:2]).float() / 255.0
    as_float = corrupt(t, "markup", 3, seed=4).numpy()
    assert np.abs(as_float * 255 - corrupt(he_tiles[:2], "markup", 3, seed=4)).max() <= 1.0 + 1e-3


def test_too_small_for_markup() -> None:
    with pytest.raises(InputError, match="at least 16 x 16"):
        ink_layer(12, 40, 1)
