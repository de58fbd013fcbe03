"""Tissue mask, tiling and slide reading on the real samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hsv

from napari_clipmed.errors import InputError
from napari_clipmed.pathology.tiles import read_slide_level, saturation, tile_image, tissue_mask

from .conftest import PNG, SVS


def test_svs_level_reads_with_tifffile(svs_level0: np.ndarray) -> None:
    assert svs_level0.shape == (2967, 2220, 3) and svs_level0.dtype == np.uint8
    with pytest.raises(InputError, match=r"1 pyramid level\(s\)"):
        read_slide_level(SVS, level=3)


def test_png_reads_and_bad_paths_are_explained(tmp_path: Path, png_image: np.ndarray) -> None:
    assert png_image.shape == (1000, 1000, 3)
    with pytest.raises(InputError, match="no such image"):
        read_slide_level(tmp_path / "missing.svs")
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="junk.tif"):
        read_slide_level(junk)
    with pytest.raises(InputError, match="single level"):
        read_slide_level(PNG, level=1)


def test_saturation_matches_skimage(he_tiles: np.ndarray) -> None:
    np.testing.assert_allclose(saturation(he_tiles[0]), rgb2hsv(he_tiles[0])[..., 1], atol=1e-6)


def test_tissue_mask_separates_tissue_from_glass(svs_level0: np.ndarray, png_image: np.ndarray) -> None:
    mask = tissue_mask(svs_level0)
    assert mask.shape == svs_level0.shape[:2] and mask.dtype == bool
    assert 0.2 < mask.mean() < 0.45  # a strip of skin on a mostly empty slide
    assert not mask[400:900, :700].any()  # bare glass left of the skin
    assert mask[1600:1824, 900:1124].mean() > 0.8  # dermis
    assert tissue_mask(png_image).mean() > 0.75  # carcinoma fills the frame


def test_tiles_carry_their_coordinates_and_tissue_fraction(png_image: np.ndarray) -> None:
    mask = tissue_mask(png_image)
    tiles = tile_image(png_image, 224, stride=160, min_tissue=0.0, mask=mask)
    positions = len(range(0, 1000 - 224 + 1, 160))
    assert len(tiles) == positions**2
    for k in (0, 7, len(tiles) - 1):
        r, c = tiles.coords[k]
        np.testing.assert_array_equal(tiles.images[k], png_image[r : r + 224, c : c + 224])
        assert tiles.tissue[k] == pytest.approx(mask[r : r + 224, c : c + 224].mean())
    kept = tile_image(png_image, 224, stride=160, min_tissue=0.9, mask=mask)
    assert 0 < len(kept) < len(tiles) and (kept.tissue >= 0.9).all()
    frame = kept.to_frame()
    assert list(frame.columns) == ["row", "col", "tissue_fraction"] and len(frame) == len(kept)


def test_tiling_skips_background(svs_level0: np.ndarray) -> None:
    tiles = tile_image(svs_level0, 224)
    everything = tile_image(svs_level0, 224, min_tissue=0.0)
    assert 0 < len(tiles) < 0.6 * len(everything)
    assert tiles.tile_size == 224 and tiles.stride == 224 and tiles.images.shape[1:] == (224, 224, 3)


def test_tiles_are_copies(png_image: np.ndarray) -> None:
    image = png_image[:300, :300].copy()
    tiles = tile_image(image, 100, min_tissue=0.0)
    tiles.images[0][:] = 0
    assert image[:100, :100].any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile_size": 2000}, "larger than the image"),
        ({"tile_size": 0}, "positive"),
        ({"tile_size": 64, "stride": 0}, "stride"),
        ({"tile_size": 64, "min_tissue": 1.5}, "min_tissue"),
        ({"tile_size": 64, "mask": np.ones((10, 10), bool)}, "mask shape"),
    ],
)
def test_bad_tiling_requests(png_image: np.ndarray, kwargs: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        tile_image(png_image, **kwargs)


def test_grayscale_tiling_is_refused() -> None:
    with pytest.raises(InputError, match="RGB"):
        tile_image(np.zeros((64, 64), np.uint8), 32)


def test_svs_reads_without_imagecodecs(monkeypatch: pytest.MonkeyPatch, svs_level0: np.ndarray) -> None:
    import tifffile

    def no_codecs(*args: object, **kwargs: object) -> np.ndarray:
        raise ValueError("<COMPRESSION.JPEG: 7> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffPageSeries, "asarray", no_codecs)
    np.testing.assert_array_equal(read_slide_level(SVS), svs_level0)  # Pillow decodes the JPEG tiles
