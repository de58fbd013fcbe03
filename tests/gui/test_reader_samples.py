"""Reader and sample data: HU arrays with scale = spacing and translate = origin, RGB slides, cited samples.

References: the files are written here with SimpleITK / tifffile from known arrays and geometry,
and read back independently with SimpleITK; the viewer tests go through napari's own plugin
machinery (`viewer.open(..., plugin=...)`, `viewer.open_sample`).
"""

from __future__ import annotations

import locale
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from napari_clipmed import _reader, _sample_data

SPACING_XYZ = (0.7, 0.8, 2.5)
ORIGIN_XYZ = (-10.0, 20.0, 30.0)


def _volume(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 400, (4, 16, 20)).astype(np.int16)
    arr[0, 0, 0] = -1024  # air, so the HU check is satisfied
    return arr


def _sitk_image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING_XYZ)
    img.SetOrigin(ORIGIN_XYZ)
    return img


@contextmanager
def _locale_kept() -> Iterator[None]:
    """GDCM's DICOM *writer* leaves the C library locale at "C" (Python then decodes text as ASCII)."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_dicom_series(arr: np.ndarray, folder: Path) -> list[Path]:
    with _locale_kept():
        return _write_dicom_files(arr, folder)


def _write_dicom_files(arr: np.ndarray, folder: Path) -> list[Path]:
    folder.mkdir()
    img = _sitk_image(arr)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    writer.SetImageIO("GDCMImageIO")
    uid = "1.2.826.0.1.3680043.2.1125.1.99"
    files = []
    for i in range(arr.shape[0]):
        sl = img[:, :, i]
        position = "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, i)))
        tags = {
            "0008|0060": "CT", "0020|000d": uid + ".1", "0020|000e": uid + ".2",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.3.{i}",
            "0020|0032": position, "0020|0013": str(i + 1), "0020|0037": "1\\0\\0\\0\\1\\0",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        files.append(folder / (f"slice{i:02d}" + (".dcm" if i % 2 else "")))  # often no extension
        writer.SetFileName(str(files[-1]))
        writer.Execute(sl)
    return files


def _check_ct_layer(layer_data: Any, expected: np.ndarray) -> None:
    data, kwargs, kind = layer_data
    assert kind == "image"
    np.testing.assert_array_equal(data, expected)
    assert tuple(kwargs["scale"]) == pytest.approx(SPACING_XYZ[::-1])
    assert tuple(kwargs["translate"]) == pytest.approx(ORIGIN_XYZ[::-1])
    assert tuple(kwargs["contrast_limits"]) == (-1350.0, 150.0)
    assert kwargs["colormap"] == "gray"
    meta = kwargs["metadata"]
    assert tuple(meta["spacing"]) == pytest.approx(SPACING_XYZ[::-1])
    assert tuple(meta["origin"]) == pytest.approx(ORIGIN_XYZ)
    assert len(meta["direction"]) == 9 and meta["path"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"])
def test_ct_files_read_in_hu_with_spacing_and_origin(tmp_path: Path, suffix: str) -> None:
    arr = _volume()
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(_sitk_image(arr), str(path))
    reader = _reader.get_reader(str(path))
    assert reader is not None
    (layer_data,) = reader(str(path))
    # independent reference: SimpleITK's own reading of the file
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), arr)
    _check_ct_layer(layer_data, arr)
    assert layer_data[1]["name"] == "ct"


def test_dicom_folder_and_single_file_read_the_series(tmp_path: Path) -> None:
    arr = _volume(1)
    files = _write_dicom_series(arr, tmp_path / "series")
    before = locale.setlocale(locale.LC_ALL)
    for path in (tmp_path / "series", files[1], files[2]):
        reader = _reader.get_reader(str(path))
        assert reader is not None, path
        (layer_data,) = reader(str(path))
        _check_ct_layer(layer_data, arr)
        assert layer_data[1]["name"] == "series"
    assert locale.setlocale(locale.LC_ALL) == before  # reading leaves the locale alone


def test_reader_declines_what_it_does_not_read(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, np.zeros((5, 8, 8), np.uint16))  # a grey stack: napari's own reader's job
    for path in (tmp_path / "notes.txt", tmp_path / "empty", tmp_path, grey, tmp_path / "x.png"):
        assert _reader.get_reader(str(path)) is None, path
    assert _reader.get_reader([str(tmp_path / "a.nii"), str(tmp_path / "b.nii")]) is None


def test_slide_reads_level0_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", tile=(32, 32))
    (data, kwargs, kind) = _reader.get_reader(str(path))(str(path))[0]
    assert kind == "image" and kwargs["rgb"] is True
    np.testing.assert_array_equal(data, rgb)
    assert tuple(kwargs["scale"]) == (1.0, 1.0)


def test_pyramid_reads_as_a_lazy_multiscale_layer_in_um(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    level0 = rng.integers(0, 255, (256, 192, 3), dtype=np.uint8)
    levels = [level0, level0[::2, ::2].copy(), level0[::4, ::4].copy()]
    path = tmp_path / "pyramid.tif"
    res = (1e4 / 0.25, 1e4 / 0.25)  # 0.25 µm per pixel, in pixels per cm
    with tifffile.TiffWriter(path) as tif:
        tif.write(levels[0], photometric="rgb", tile=(64, 64), subifds=2, resolution=res, resolutionunit="CENTIMETER")
        tif.write(levels[1], photometric="rgb", tile=(64, 64), subfiletype=1)
        tif.write(levels[2], photometric="rgb", tile=(32, 32), subfiletype=1)
    (data, kwargs, _) = _reader.read_slide(path)[0]
    assert kwargs["multiscale"] is True and len(data) == 3
    for got, want in zip(data, levels):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert tuple(kwargs["scale"]) == (0.25, 0.25)  # µm per level-0 pixel
    assert kwargs["metadata"]["level_shapes"][0] == (256, 192)


def test_viewer_opens_ct_through_the_plugin(viewer: Any, tmp_path: Path) -> None:
    arr = _volume()
    path = tmp_path / "scan.nrrd"
    sitk.WriteImage(_sitk_image(arr), str(path))
    (layer,) = viewer.open(str(path), plugin="napari-clipmed")
    np.testing.assert_array_equal(layer.data, arr)
    np.testing.assert_allclose(layer.scale, SPACING_XYZ[::-1])
    np.testing.assert_allclose(layer.translate, ORIGIN_XYZ[::-1])
    # world extent of the layer = voxels x spacing
    extent = np.asarray(layer.extent.world)
    np.testing.assert_allclose(extent[1] - extent[0], (np.array(arr.shape) - 1) * SPACING_XYZ[::-1])


def test_chest_ct_sample_is_scaled_by_spacing(viewer: Any) -> None:
    (layer,) = viewer.open_sample("napari-clipmed", "chest_ct")
    ref = sitk.ReadImage(str(_sample_data.CHEST_CT_FILE))
    np.testing.assert_array_equal(layer.data, sitk.GetArrayFromImage(ref))
    assert layer.data.dtype == np.int16
    np.testing.assert_allclose(layer.scale, ref.GetSpacing()[::-1])
    np.testing.assert_allclose(layer.translate, ref.GetOrigin()[::-1])
    assert layer.data.min() < -900 and layer.data.max() > 300  # HU: air and bone/contrast
    assert "Apache-2.0" in layer.metadata["citation"] and "Apache-2.0" in (_sample_data.chest_ct.__doc__ or "")


def test_he_samples_are_rgb_and_cited(viewer: Any) -> None:
    (carcinoma,) = viewer.open_sample("napari-clipmed", "he_carcinoma")
    (ink,) = viewer.open_sample("napari-clipmed", "he_marker_ink")
    for layer in (carcinoma, ink):
        assert layer.rgb and layer.data.dtype == np.uint8 and layer.data.ndim == 3
    assert carcinoma.data.shape == (1000, 1000, 3)
    assert ink.data.shape == (1200, 1000, 3)
    rgb = ink.data.astype(int)
    green_ink = (rgb[..., 1] > rgb[..., 0] + 15) & (rgb[..., 1] > rgb[..., 2] - 5) & (rgb[..., 1] < 220)
    assert green_ink.sum() > 1000  # H&E has no green; these are the marker-ink pixels
    assert "BSD-3-Clause" in (_sample_data.he_carcinoma.__doc__ or "")
    assert "CC0" in (_sample_data.he_marker_ink.__doc__ or "")
