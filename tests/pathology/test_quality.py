"""Quality measures against independent computations (scikit-image, numpy) and on the real H&E samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2gray, rgb2hsv
from skimage.filters import laplace
from skimage.transform import downscale_local_mean

from napari_clipmed.errors import InputError
from napari_clipmed.pathology import quality as q
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.pathology.markup import ink_layer
from napari_clipmed.pathology.tiles import tile_image


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).double() / 255.0


@pytest.fixture(scope="module")
def real_tiles(he_tiles: np.ndarray) -> np.ndarray:
    return he_tiles


def test_luminance_and_focus_match_skimage_scipy_and_numpy(real_tiles: np.ndarray) -> None:
    """Focus = Laplacian energy / gradient energy of the windowed tile (edges wrapped), computed in space here."""
    from scipy.ndimage import laplace as scipy_laplace

    x = _tensor(real_tiles)
    got = q.focus(q.luminance(x)).numpy()
    for i, tile in enumerate(real_tiles):
        gray = rgb2gray(tile)
        np.testing.assert_allclose(q.luminance(x[i : i + 1])[0, 0].numpy(), gray, atol=1e-12)
        windowed = (gray - gray.mean()) * np.outer(np.hanning(gray.shape[0]), np.hanning(gray.shape[1]))
        lap = scipy_laplace(windowed, mode="wrap")
        gx = (np.roll(windowed, -1, axis=1) - np.roll(windowed, 1, axis=1)) / 2
        gy = (np.roll(windowed, -1, axis=0) - np.roll(windowed, 1, axis=0)) / 2
        assert got[i] == pytest.approx(np.sum(lap**2) / np.sum(gx**2 + gy**2), rel=1e-9)
        # the kernel is skimage's: on the interior the two Laplacians agree
        np.testing.assert_allclose(np.abs(laplace(windowed))[1:-1, 1:-1], np.abs(lap)[1:-1, 1:-1], atol=1e-12)


def test_resolution_matches_a_numpy_spectrum(real_tiles: np.ndarray) -> None:
    x = _tensor(real_tiles)
    got = q.high_frequency_share(q.luminance(x)).numpy()
    for i, tile in enumerate(real_tiles):
        gray = rgb2gray(tile)
        window = np.outer(np.hanning(gray.shape[0]), np.hanning(gray.shape[1]))
        power = np.abs(np.fft.fft2((gray - gray.mean()) * window)) ** 2  # full spectrum: same shares
        fy = np.fft.fftfreq(gray.shape[0])[:, None]
        fx = np.fft.fftfreq(gray.shape[1])[None, :]
        r = np.hypot(fy, fx)
        ref = power[r > q.HIGH_BAND].sum() / power[r > q.LOW_CUT].sum()
        assert got[i] == pytest.approx(ref, rel=1e-6)


def test_colour_measures_match_skimage_on_the_binned_tile(real_tiles: np.ndarray) -> None:
    m = q.measure(real_tiles)
    for i, tile in enumerate(real_tiles):
        small = downscale_local_mean(tile / 255.0, (2, 2, 1))
        hsv = rgb2hsv(small)
        gray = rgb2gray(small)
        assert m["saturation"][i] == pytest.approx(hsv[..., 1].mean(), abs=1e-5)
        assert m["tissue"][i] == pytest.approx(np.mean(np.sqrt(hsv[..., 1]) > q.TISSUE_LEVEL), abs=2e-4)
        assert m["over_exposed"][i] == pytest.approx(np.mean(gray >= q.OVER), abs=2e-4)
        assert m["under_exposed"][i] == pytest.approx(np.mean(gray <= q.UNDER), abs=2e-4)


def test_tissue_fraction_agrees_with_the_slide_tissue_mask(png_image: np.ndarray) -> None:
    tiles = tile_image(png_image, 200, min_tissue=0.0)  # fractions from tissue_mask on the whole image
    got = q.measure(tiles.images)["tissue"]
    assert np.median(np.abs(got - tiles.tissue)) < 0.1


def test_ink_measure_follows_the_markup_engines_coverage(svs_level0: np.ndarray) -> None:
    """Synthetic ink of known coverage (markup.ink_layer) on the slide's glass is measured as such.

    Ink is told by its colour, so it is found where it dominates the pixel (on glass and pale
    tissue, as at real margins); faint ink over dense tissue is not (docs/quality.md).
    """
    corners = [(100, 100), (600, 200), (1500, 100), (2000, 300)]
    tiles = np.stack([svs_level0[y : y + 160, x : x + 160] for y, x in corners])
    assert q.measure(tiles)["ink"].max() < 0.002
    for severity in (2, 4):
        inked = corrupt(tiles, "markup", severity, seed=3)
        got = q.measure(inked)["ink"]
        truth = np.array([ink_layer(160, 160, severity, seed=3, index=i).coverage for i in range(len(tiles))])
        assert np.all(got > 0.7 * truth), (got, truth)
        assert np.all(got < 1.3 * truth + 0.01), (got, truth)


def test_measures_on_gpu_match_cpu(real_tiles: np.ndarray) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")  # the CPU path is tested everywhere above
    cpu = q.measure(real_tiles, device="cpu")
    gpu = q.measure(real_tiles, device="cuda")
    for name in q.MEASURES:
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-3, atol=1e-3)


def test_grayscale_and_16_bit_are_converted_as_the_encoder_does_and_said_so(real_tiles: np.ndarray) -> None:
    grey8 = (rgb2gray(real_tiles[0]) * 255).round().astype(np.uint8)
    wide = real_tiles[1].astype(np.uint16) * 257  # the same picture in 16 bits
    m = q.measure([grey8, wide, real_tiles[1]])
    assert any("grayscale" in n for n in m.notes) and any("16-bit" in n for n in m.notes)
    assert m["saturation"][0] == 0.0 and m["tissue"][0] == 0.0
    for name in q.MEASURES:
        assert m[name][1] == pytest.approx(m[name][2], rel=1e-5, abs=1e-7)
    assert q.measure(real_tiles[:2]).notes == ()


def test_bad_input_is_one_clear_error() -> None:
    with pytest.raises(InputError, match="at least 16"):
        q.measure(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="empty"):
        q.measure([])
    with pytest.raises(InputError, match="2 channels"):
        q.measure([np.zeros((32, 32, 2), np.uint8)])
