"""Opening slides: lazy levels with µm pixel size from the file, through every backend; bad files refused.

References: tifffile reads the written levels directly; OpenSlide reads the SVS independently;
scikit-image's downscale_local_mean gives the downsampled level-0 region the tiler is compared with.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.transform import downscale_local_mean
from slide_support import MPP

from napari_clipmed import _reader
from napari_clipmed.errors import InputError
from napari_clipmed.io.slide import SlideWarning, open_slide
from napari_clipmed.pathology.slide_tiler import make_grid, read_box


def test_pyramid_opens_lazy_levels_with_their_pixel_size(slides: dict[str, Path]) -> None:
    with open_slide(slides["pyramid"]) as slide:
        assert slide.shapes == [(3000, 3000), (1500, 1500), (750, 750)]
        assert slide.downsamples == [1.0, 2.0, 4.0]
        assert (slide.mpp, slide.mpp_source, slide.backend) == (MPP, "tiff-resolution", "tifffile")
        assert all(type(level).__name__ == "Array" for level in slide.levels)  # dask: nothing read yet
        with tifffile.TiffFile(slides["pyramid"]) as tif:
            want = tif.series[0].levels[1].asarray()[700:900, 1300:1500]
        np.testing.assert_array_equal(slide.read_region(1, 700, 1300, 200, 200), want)
        np.testing.assert_array_equal(np.asarray(slide.levels[1][700:900, 1300:1500]), want)


def test_reader_gives_a_multiscale_layer_in_um(slides: dict[str, Path]) -> None:
    reader = _reader.get_reader(str(slides["pyramid"]))
    assert reader is not None
    (data, kwargs, kind) = reader(str(slides["pyramid"]))[0]
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [tuple(d.shape) for d in data] == [(3000, 3000, 3), (1500, 1500, 3), (750, 750, 3)]
    assert tuple(kwargs["scale"]) == (MPP, MPP)
    assert kwargs["metadata"]["units"] == "µm"


def test_svs_pixel_size_and_openslide_agree_with_tifffile(slides: dict[str, Path]) -> None:
    with open_slide(slides["svs"]) as by_tifffile, open_slide(slides["svs"], backend="openslide") as by_openslide:
        assert by_tifffile.mpp == pytest.approx(0.499) and by_tifffile.mpp_source == "aperio"
        assert by_openslide.mpp == pytest.approx(0.499) and by_openslide.mpp_source == "openslide"
        assert by_openslide.shapes == by_tifffile.shapes == [(2967, 2220)]
        a = by_tifffile.read_region(0, 1100, 1600, 300, 400).astype(int)
        b = by_openslide.read_region(0, 1100, 1600, 300, 400).astype(int)
        assert np.abs(a - b).mean() < 2.0  # two JPEG decoders (libjpeg-turbo builds), same pixels


def test_slide_without_pixel_size_warns_and_takes_the_users(slides: dict[str, Path]) -> None:
    with pytest.warns(SlideWarning, match="pixel size"):
        slide = open_slide(slides["no_mpp"])
    with slide:
        assert slide.mpp is None and slide.mpp_source == "none"
        with pytest.raises(InputError, match="no pixel size"):
            make_grid(slide)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = open_slide(slides["no_mpp"], mpp=0.5)
    with fixed:
        assert (fixed.mpp, fixed.mpp_source) == (0.5, "user")
        assert len(make_grid(fixed, 0.5, 224)) == (1000 // 224) ** 2
    with pytest.warns(SlideWarning):
        (_, kwargs, _) = _reader.read_slide(slides["no_mpp"])[0]
    assert tuple(kwargs["scale"]) == (1.0, 1.0) and kwargs["metadata"]["units"] == "px"
    with pytest.raises(InputError, match="positive"):
        open_slide(slides["no_mpp"], mpp=-1)


@pytest.mark.parametrize(
    ("name", "message"),
    [("truncated", "truncated|cannot read"), ("grey", "not an RGB slide"), ("junk", "cannot read")],
)
def test_bad_files_give_one_clear_message_and_no_layer(slides: dict[str, Path], name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        open_slide(slides[name])
    with pytest.raises(InputError, match=message):
        _reader.read_slide(slides[name])
    if name == "grey":  # a grey TIFF is napari's own reader's job
        assert _reader.get_reader(str(slides[name])) is None
    if name == "junk":  # a damaged .svs is ours to explain
        assert _reader.get_reader(str(slides[name])) is _reader.read_slide


def test_tile_from_level1_matches_level0_downsampled(slides: dict[str, Path]) -> None:
    """At 1 µm/px (4x of level 0), a tile read from level 1 and halved equals level 0 averaged 4 x 4.

    Tolerance: mean absolute difference under 3 grey levels, 99th percentile under 16 (each level
    is JPEG-encoded on its own, so the two paths see slightly different pixels).
    """
    with open_slide(slides["pyramid"]) as slide, tifffile.TiffFile(slides["pyramid"]) as tif:
        grid = make_grid(slide, target_mpp=1.0, tile=224, level=1)
        assert grid.side == 896 and grid.level == 1
        level0 = tif.series[0].levels[0].asarray()
        for i in (0, 4, len(grid) - 1):
            y0, x0, y1, x1 = grid.boxes[i].astype(int)
            tile = read_box(slide, 1, grid.boxes[i], 224).astype(float)
            reference = downscale_local_mean(level0[y0:y1, x0:x1].astype(float), (4, 4, 1))
            diff = np.abs(tile - reference)
            assert diff.mean() < 3.0 and np.percentile(diff, 99) < 16, (i, diff.mean())
        assert make_grid(slide, target_mpp=1.0, tile=224).level == 2  # best level: exactly 4x
