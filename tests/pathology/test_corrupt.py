"""`corrupt` on real tiles: monotone damage, one result for every input form, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from napari_clipmed.errors import InputError
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.pathology.params import list_corruptions

KINDS = list_corruptions()


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=-1, data_range=255))


@pytest.mark.parametrize("kind", KINDS)
def test_similarity_to_the_clean_tile_strictly_decreases_with_severity(he_tiles: np.ndarray, kind: str) -> None:
    levels = [corrupt(he_tiles, kind, s, seed=7) for s in range(5)]
    for i, clean in enumerate(he_tiles):
        ssim = [_ssim(clean, level[i]) for level in levels]
        assert ssim[0] == pytest.approx(1.0)
        assert all(a > b for a, b in zip(ssim, ssim[1:])), (kind, i, ssim)


@pytest.mark.parametrize("kind", KINDS)
def test_severity_zero_returns_an_equal_copy(he_tiles: np.ndarray, kind: str) -> None:
    out = corrupt(he_tiles[0], kind, 0)
    assert out is not he_tiles[0] and not np.shares_memory(out, he_tiles[0])
    np.testing.assert_array_equal(out, he_tiles[0])


@pytest.mark.parametrize("kind", KINDS)
def test_numpy_torch_layouts_and_batching_agree(he_tiles: np.ndarray, kind: str) -> None:
    tiles = he_tiles[:3]
    reference = corrupt(tiles, kind, 2.5, seed=3)
    assert reference.dtype == np.uint8 and reference.shape == tiles.shape
    last = corrupt(torch.from_numpy(tiles), kind, 2.5, seed=3)
    first = corrupt(torch.from_numpy(tiles).permute(0, 3, 1, 2), kind, 2.5, seed=3)
    assert isinstance(last, torch.Tensor) and last.dtype == torch.uint8 and first.shape == (3, 3, 224, 224)
    np.testing.assert_array_equal(last.numpy(), reference)
    np.testing.assert_array_equal(first.permute(0, 2, 3, 1).numpy(), reference)
    single = corrupt(tiles[0], kind, 2.5, seed=3)  # a single image gets the first image's ink
    np.testing.assert_array_equal(single, reference[0])
    as_float = corrupt(tiles.astype(np.float32) / 255.0, kind, 2.5, seed=3)
    assert as_float.dtype == np.float32
    assert np.abs(as_float * 255.0 - reference).max() <= 1.0 + 1e-3  # rounding to 8 bits


@pytest.mark.parametrize("kind", KINDS)
def test_input_is_never_modified(he_tiles: np.ndarray, kind: str) -> None:
    tiles = he_tiles[:2].copy()
    before = tiles.copy()
    corrupt(tiles, kind, 3, seed=1)
    np.testing.assert_array_equal(tiles, before)
    tensor = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    tensor_before = tensor.clone()
    corrupt(tensor, kind, 3, seed=1)
    assert torch.equal(tensor, tensor_before)


def test_read_only_and_flipped_views_are_accepted(he_tiles: np.ndarray) -> None:
    view = he_tiles[0][::-1, ::2]  # negative and non-unit strides
    locked = he_tiles[1].copy()
    locked.flags.writeable = False
    np.testing.assert_array_equal(corrupt(view, "hue", 2), corrupt(np.ascontiguousarray(view), "hue", 2))
    np.testing.assert_array_equal(corrupt(locked, "blur", 1), corrupt(he_tiles[1].copy(), "blur", 1))


def test_continuous_severity_moves_smoothly(he_tiles: np.ndarray) -> None:
    tile = he_tiles[3]
    for kind in KINDS:
        change = [np.abs(corrupt(tile, kind, s, seed=2).astype(int) - tile).mean() for s in np.arange(0, 4.01, 0.5)]
        assert all(a < b for a, b in zip(change, change[1:])), (kind, change)


def test_rgba_alpha_passes_through(he_tiles: np.ndarray) -> None:
    alpha = np.linspace(0, 255, 224 * 224).reshape(224, 224, 1).astype(np.uint8)
    rgba = np.concatenate([he_tiles[0], alpha], axis=-1)
    out = corrupt(rgba, "saturation", 3)
    assert out.shape == rgba.shape
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])
    np.testing.assert_array_equal(out[..., :3], corrupt(he_tiles[0], "saturation", 3))


def test_empty_batch() -> None:
    empty = np.zeros((0, 32, 32, 3), dtype=np.uint8)
    assert corrupt(empty, "blur", 2).shape == (0, 32, 32, 3)


@pytest.mark.parametrize(
    "image",
    [np.zeros((64, 64), np.uint8), np.zeros((64, 64, 1), np.uint8), np.zeros((4, 64, 64), np.uint8)],
)
def test_grayscale_is_refused_with_advice(image: np.ndarray) -> None:
    with pytest.raises(InputError, match="grayscale|RGB"):
        corrupt(image, "hue", 1)


def test_grayscale_tensor_is_refused() -> None:
    with pytest.raises(InputError, match="grayscale"):
        corrupt(torch.zeros(2, 1, 32, 32), "contrast", 1)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((32, 32, 3), np.int16), "uint8"),
        (np.full((32, 32, 3), 2.0), r"\[0, 1\]"),
        (np.full((32, 32, 3), np.nan), r"\[0, 1\]"),
        ([[0, 1, 2]], "numpy array or torch tensor"),
        (np.zeros((2, 2, 32, 32, 3), np.uint8), "RGB"),
    ],
)
def test_bad_images_are_refused(image: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        corrupt(image, "contrast", 1)  # type: ignore[type-var]


def test_unknown_kind_and_bad_severity(he_tiles: np.ndarray) -> None:
    with pytest.raises(InputError, match="brightness, contrast, blur, resolution, saturation, hue, markup"):
        corrupt(he_tiles[0], "snow", 1)
    with pytest.raises(InputError, match="severity"):
        corrupt(he_tiles[0], "blur", 5)
    with pytest.raises(InputError, match="severity"):
        corrupt(he_tiles[0], "blur", -1)


def test_images_too_small_get_a_clear_error_and_are_left_alone() -> None:
    small = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    before = small.copy()
    with pytest.raises(InputError, match=r"at least 25 x 25 px"):
        corrupt(small, "blur", 3)  # sigma 3: kernel 25
    with pytest.raises(InputError, match="resolution"):
        corrupt(small[:5, :5], "resolution", 4)  # 5 px * 0.3 -> 1 px
    with pytest.raises(InputError, match="markup needs"):
        corrupt(small[:10], "markup", 1)
    np.testing.assert_array_equal(small, before)
    assert corrupt(small, "blur", 1).shape == small.shape  # sigma 1 (kernel 9) fits
