"""Each photometric corruption against an independent implementation, on real H&E tiles.

References: scikit-image's rgb2hsv/hsv2rgb (brightness, saturation, hue: additive HSV shifts),
numpy with ImageNet-C's contrast formula, scipy.ndimage.gaussian_filter (blur, mode 'reflect',
truncate 4), Pillow BOX downscale + NEAREST upscale (resolution, ImageNet-C pixelate) and
torchvision's adjust_hue for the hue rotation. Tolerance: at most 1 grey level on uint8
(rounding of float32 vs float64 and of Pillow's fixed point), and 1e-5 on float [0, 1] input.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import ndimage as ndi
from skimage import color

from napari_clipmed.pathology import ops
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.pathology.params import parameter_at

SEVERITIES = [1, 2, 3, 4, 2.5]


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def _hsv_reference(image: np.ndarray, channel: int, delta: float) -> np.ndarray:
    hsv = color.rgb2hsv(image)
    if channel == 0:
        hsv[..., 0] = (hsv[..., 0] + delta) % 1.0
    else:
        hsv[..., channel] = np.clip(hsv[..., channel] + delta, 0.0, 1.0)
    return color.hsv2rgb(hsv)


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int64) - b.astype(np.int64)).max())


@pytest.mark.parametrize(("kind", "channel"), [("hue", 0), ("saturation", 1), ("brightness", 2)])
@pytest.mark.parametrize("severity", SEVERITIES)
def test_hsv_shifts_match_skimage(he_tiles: np.ndarray, kind: str, channel: int, severity: float) -> None:
    delta = parameter_at(kind, severity)
    tiles = he_tiles[[SEVERITIES.index(severity) % 3, 3 + SEVERITIES.index(severity) % 3]]  # skin and carcinoma
    out = corrupt(tiles, kind, severity)
    for tile, got in zip(tiles, out):
        reference = _hsv_reference(tile, channel, delta)
        assert _max_diff(got, _u8(reference)) <= 1
        as_float = corrupt(tile / 255.0, kind, severity)
        assert np.abs(as_float - reference).max() <= 1e-5


def test_hue_matches_torchvision_adjust_hue(he_tiles: np.ndarray) -> None:
    tensor = torch.from_numpy(he_tiles[:3]).permute(0, 3, 1, 2).float() / 255.0
    ours = corrupt(tensor, "hue", 3)  # a 0.15 turn
    theirs = TF.adjust_hue(tensor, 0.15)
    assert float((ours - theirs).abs().max()) <= 1e-5


def test_grey_and_black_pixels_follow_skimage() -> None:
    patch = np.array([[[0, 0, 0], [128, 128, 128], [255, 255, 255], [255, 0, 0]]], dtype=np.uint8)
    patch = np.repeat(patch, 4, axis=0)
    for kind, channel in (("saturation", 1), ("brightness", 2), ("hue", 0)):
        got = corrupt(patch, kind, 4)
        assert _max_diff(got, _u8(_hsv_reference(patch, channel, 0.2))) <= 1, kind


@pytest.mark.parametrize("severity", SEVERITIES)
def test_contrast_matches_imagenet_c_formula(he_tiles: np.ndarray, severity: float) -> None:
    c = parameter_at("contrast", severity)
    out = corrupt(he_tiles, "contrast", severity)
    for tile, got in zip(he_tiles, out):
        x = tile / 255.0
        mean = x.mean(axis=(0, 1), keepdims=True)
        assert _max_diff(got, _u8(np.clip((x - mean) * c + mean, 0, 1))) <= 1


@pytest.mark.parametrize("severity", [0.3, 1, 2, 3, 4, 2.5])
def test_blur_matches_scipy_gaussian_filter(he_tiles: np.ndarray, severity: float) -> None:
    sigma = parameter_at("blur", severity)
    tiles = he_tiles[[0, 5]]
    out = corrupt(tiles, "blur", severity)
    for tile, got in zip(tiles, out):
        reference = ndi.gaussian_filter(tile / 255.0, sigma=(sigma, sigma, 0), mode="reflect", truncate=4.0)
        assert _max_diff(got, _u8(reference)) <= 1
        assert np.abs(corrupt(tile / 255.0, "blur", severity) - reference).max() <= 1e-5


def test_blur_kernel_is_scipys() -> None:
    impulse = np.zeros(41)
    impulse[20] = 1.0
    for sigma in (0.7, 1.0, 2.5, 4.0):
        kernel = ops.gaussian_kernel(sigma)
        r = ops.blur_radius(sigma)
        reference = ndi.gaussian_filter1d(impulse, sigma, truncate=4.0)[20 - r : 21 + r]
        np.testing.assert_allclose(kernel, reference, atol=1e-12)


def _pillow_pixelate(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape[:2]
    small = Image.fromarray(image).resize((int(w * factor), int(h * factor)), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST))


@pytest.mark.parametrize("severity", SEVERITIES)
def test_resolution_matches_pillow_box_then_nearest(he_tiles: np.ndarray, severity: float) -> None:
    factor = parameter_at("resolution", severity)
    out = corrupt(he_tiles, "resolution", severity)
    for tile, got in zip(he_tiles, out):
        reference = _pillow_pixelate(tile, factor)
        assert _max_diff(got, reference) <= 1
        assert np.mean(got != reference) < 0.01  # Pillow's fixed-point rounding, rarely


def test_resolution_on_odd_sizes_matches_pillow(png_image: np.ndarray) -> None:
    image = np.ascontiguousarray(png_image[:150, :203])
    for severity in (1, 2.7, 4):
        got = corrupt(image, "resolution", severity)
        assert _max_diff(got, _pillow_pixelate(image, parameter_at("resolution", severity))) <= 1


def test_hsv_conversion_matches_skimage(he_tiles: np.ndarray) -> None:
    x = torch.from_numpy(he_tiles).permute(0, 3, 1, 2).double() / 255.0
    ours = ops.rgb_to_hsv(x).permute(0, 2, 3, 1).numpy()
    reference = np.stack([color.rgb2hsv(t) for t in he_tiles])
    np.testing.assert_allclose(ours, reference, atol=1e-12)
    back = ops.hsv_to_rgb(ops.rgb_to_hsv(x))
    np.testing.assert_allclose(back.numpy(), x.numpy(), atol=1e-12)
