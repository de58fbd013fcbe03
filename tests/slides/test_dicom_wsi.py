"""A real DICOM WSI, made by wsidicomizer from the H&E pyramid, read through `open_slide` and the napari reader.

The source is the smallest pyramid the other slide tests use: the carcinoma PNG (1000 x 1000) as a
3-level JPEG TIFF at 0.25 µm/px (`slide_support.write_pyramid`). wsidicomizer (tiffslide source)
decodes its tiles and writes one DICOM instance per level, RLE-encoded (lossless), so every pixel
read from the DICOM folder must equal the TIFF's own decoded pixel.

wsidicomizer pins an older wsidicom (0.26.1 needs wsidicom < 0.32, and fails with 0.36 in
`WsiDicomizerMetadata`), so it is not in the test extra and the conversion runs in a subprocess:
with the current environment when wsidicomizer imports there, otherwise with
`CLIPMED_WSIDICOMIZER_PATH` in front of its path, a folder made with

    pip install --no-deps --target DIR wsidicomizer==0.26.1 wsidicom==0.31.0 opentile==0.22.0 \
        tiffslide==3.0.1 czifile==2019.7.2.3 PyTurboJPEG==1.8.3 defusedxml==0.7.1 xsdata==26.10 \
        ome-types==0.7.0 marshmallow==3.26.2 dicomweb-client==0.59.3 universal_pathlib==0.2.6

`scripts/install.sh` makes that folder as `.venv/wsidicomizer`, the default. The reading side is
always this environment's wsidicom. Without either, the tests are skipped.
(The tiffslide source is used because opentile's needs the libturbojpeg shared library.)
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from slide_support import MPP, write_pyramid

from napari_clipmed import _reader
from napari_clipmed.io.slide import is_slide_path, open_slide
from napari_clipmed.pathology.slide_tiler import make_grid, read_tiles

CONVERT = """
import sys
from wsidicom.codec import RleSettings
from wsidicomizer import WsiDicomizer
from wsidicomizer.sources import TiffSlideSource

WsiDicomizer.convert(
    sys.argv[1], sys.argv[2], tile_size=256, workers=1, encoding=RleSettings(), preferred_source=TiffSlideSource,
    include_label=False, include_overview=False, include_thumbnail=False,
)
"""


@pytest.fixture(scope="module")
def dicom_wsi(tmp_path_factory: pytest.TempPathFactory, he_png: np.ndarray) -> tuple[Path, Path]:
    """(source TIFF, DICOM WSI folder)."""
    root = tmp_path_factory.mktemp("dicom_wsi")
    source, folder = root / "carcinoma.tif", root / "carcinoma_dicom"
    write_pyramid(source, he_png, levels=3)
    env = dict(os.environ)
    default = Path(__file__).resolve().parents[2] / ".venv" / "wsidicomizer"
    extra = os.environ.get("CLIPMED_WSIDICOMIZER_PATH") or (str(default) if default.is_dir() else None)
    if extra:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra, env.get("PYTHONPATH", "")) if p)
    done = subprocess.run(
        [sys.executable, "-c", CONVERT, str(source), str(folder)], env=env, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0 and "No module named 'wsidicomizer'" in done.stderr:
        pytest.skip("wsidicomizer is not installed (or CLIPMED_WSIDICOMIZER_PATH not set)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(list(folder.glob("*.dcm"))) == 3  # one instance per level
    return source, folder


def _open_fds_under(folder: Path) -> list[str]:
    fds = Path("/proc/self/fd")
    out = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(target)
    return out


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="open files are listed from /proc")


def test_dicom_wsi_opens_with_the_sources_levels_pixel_size_and_pixels(dicom_wsi: tuple[Path, Path]) -> None:
    source, folder = dicom_wsi
    assert is_slide_path(folder)
    with open_slide(folder) as dicom, open_slide(source) as tiff, tifffile.TiffFile(source) as tif:
        assert (dicom.backend, dicom.mpp_source) == ("wsidicom", "dicom")
        assert dicom.mpp == pytest.approx(MPP) == tiff.mpp
        assert dicom.shapes == tiff.shapes == [(1000, 1000), (500, 500), (250, 250)]
        assert dicom.downsamples == tiff.downsamples == [1.0, 2.0, 4.0]
        assert [dicom.level_mpp(i) for i in range(3)] == pytest.approx([0.25, 0.5, 1.0])
        for level in range(3):  # RLE is lossless: the TIFF's decoded pixels, exactly
            want = tif.series[0].levels[level].asarray()
            np.testing.assert_array_equal(dicom.read_region(level, 0, 0, *want.shape[:2]), want)
        want = tif.series[0].levels[0].asarray()[300:555, 170:600]  # a region across DICOM tiles
        np.testing.assert_array_equal(dicom.read_region(0, 300, 170, 255, 430), want)
        np.testing.assert_array_equal(np.asarray(dicom.levels[0][300:555, 170:600]), want)  # the lazy level
        edge = dicom.read_region(2, 200, 200, 100, 100)  # past the edge: white
        assert (edge[50:, :] == 255).all() and (edge[:, 50:] == 255).all()
    one = next(folder.glob("*.dcm"))  # one instance opens the whole slide
    with open_slide(one) as by_file:
        assert by_file.backend == "wsidicom" and len(by_file.levels) == 3


def test_dicom_wsi_layer_is_multiscale_in_um(dicom_wsi: tuple[Path, Path]) -> None:
    _, folder = dicom_wsi
    (data, kwargs, kind) = _reader.read_slide(folder)[0]
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [tuple(d.shape) for d in data] == [(1000, 1000, 3), (500, 500, 3), (250, 250, 3)]
    assert tuple(kwargs["scale"]) == pytest.approx((MPP, MPP))
    assert kwargs["metadata"]["units"] == "µm" and kwargs["metadata"]["backend"] == "wsidicom"
    assert kwargs["metadata"]["downsamples"] == [1.0, 2.0, 4.0]
    del data
    gc.collect()


def test_napari_hands_a_dicom_wsi_to_the_slide_reader(dicom_wsi: tuple[Path, Path]) -> None:
    _, folder = dicom_wsi
    assert _reader.get_reader(str(folder)) is _reader.read_slide
    assert _reader.get_reader(str(next(folder.glob("*.dcm")))) is _reader.read_slide


def test_tiles_at_half_a_micron_equal_the_source_tiffs(dicom_wsi: tuple[Path, Path]) -> None:
    source, folder = dicom_wsi
    with open_slide(folder) as dicom, open_slide(source) as tiff:
        grid, reference = make_grid(dicom, target_mpp=0.5, tile=224), make_grid(tiff, target_mpp=0.5, tile=224)
        assert grid.describe() == reference.describe() and grid.level == 1
        np.testing.assert_array_equal(grid.boxes, reference.boxes)
        assert len(grid) == (1000 // 448) ** 2
        everything = np.arange(len(grid))
        np.testing.assert_array_equal(read_tiles(dicom, grid, everything), read_tiles(tiff, reference, everything))


@needs_proc
def test_every_file_is_closed(dicom_wsi: tuple[Path, Path]) -> None:
    _, folder = dicom_wsi
    gc.collect()
    assert _open_fds_under(folder) == []
    with open_slide(folder) as slide:
        slide.read_region(0, 0, 0, 64, 64)
        assert _open_fds_under(folder)  # wsidicom keeps its instances open while the slide is
    assert _open_fds_under(folder) == []
    (data, _, _) = _reader.read_slide(folder)[0]
    np.asarray(data[1][:64, :64])
    assert _open_fds_under(folder)
    del data  # the layer's arrays gone: the reader's finalizer closes the slide
    gc.collect()
    assert _open_fds_under(folder) == []
