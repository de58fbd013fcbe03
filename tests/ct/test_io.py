"""Reading CT: geometry and HU survive NIfTI/NRRD/MHA/DICOM; bad input gives clear errors or warnings."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from napari_clipmed.ct.io import CTVolume, CTWarning, read_ct
from napari_clipmed.errors import InputError


def _phantom(rng: np.random.Generator) -> np.ndarray:
    arr = rng.integers(-200, 200, size=(7, 20, 24)).astype(np.int16)
    arr[:, :3] = -1000  # air above the "patient"
    return arr


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_hu_and_geometry(tmp_path: Path, suffix: str) -> None:
    arr = _phantom(np.random.default_rng(1))
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))  # x, y, z
    img.SetOrigin((-120.5, 30.25, 812.0))
    # A rotation about z: NIfTI stores it in its qform/sform, NRRD and MHA as direction cosines.
    c, s = np.cos(0.3), np.sin(0.3)
    direction = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
    img.SetDirection(direction)
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(img, str(path))

    vol = read_ct(path)

    np.testing.assert_array_equal(vol.array, arr)
    assert vol.array.dtype == np.int16
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    np.testing.assert_allclose(vol.origin, (-120.5, 30.25, 812.0), atol=1e-4)
    np.testing.assert_allclose(vol.direction, direction, atol=1e-6)
    assert vol.source == str(path)
    # Physical position of a voxel agrees with SimpleITK's own index -> point mapping.
    z, y, x = 5, 11, 17
    expected = img.TransformContinuousIndexToPhysicalPoint((float(x), float(y), float(z)))
    np.testing.assert_allclose(vol.index_to_physical(np.array([[z, y, x]]))[0], expected, atol=1e-4)


def test_chest_ct_matches_its_readme(chest_ct: CTVolume) -> None:
    # README: 233 x 167 x 191 voxels (x, y, z), 1.5 mm isotropic, int16 HU (-1094..3343).
    assert chest_ct.shape == (191, 167, 233)
    assert chest_ct.spacing == (1.5, 1.5, 1.5)
    assert chest_ct.array.dtype == np.int16
    assert (int(chest_ct.array.min()), int(chest_ct.array.max())) == (-1094, 3343)
    assert chest_ct.notes == ()


def test_real_dicom_series_folder(abdomen_dicom: Path) -> None:
    # README: 512 x 512 x 20, 0.977 mm pixels, 2 mm slices.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vol = read_ct(abdomen_dicom)
    assert vol.shape == (20, 512, 512)
    np.testing.assert_allclose(vol.spacing, (2.0, 0.9765625, 0.9765625))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(abdomen_dicom)))
    reference = reader.Execute()
    np.testing.assert_array_equal(vol.array, sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(vol.origin, reference.GetOrigin())
    assert -1100 <= vol.array.min() <= -1000  # air in HU: rescale applied


def _write_dicom_series(folder: Path, hu: np.ndarray, slope: float, intercept: float) -> None:
    """Slices whose stored values are (hu - intercept) / slope, with the rescale tags set."""
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.99.1"
    for k in range(hu.shape[0]):
        sl = sitk.GetImageFromArray(hu[k].astype(np.float32))
        sl.SetSpacing((0.7, 0.8))
        tags = {
            "0008|0060": "CT", "0020|000d": uid + ".1", "0020|000e": uid + ".2",
            "0008|0018": f"{uid}.3.{k + 1}", "0020|0013": str(k + 1),
            "0020|0032": f"10\\20\\{30 + 2.5 * k:g}", "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|1052": f"{intercept:g}", "0028|1053": f"{slope:g}",
            "0028|0100": "16", "0028|0101": "16", "0028|0102": "15", "0028|0103": "0",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_rescale_slope_intercept_gives_hu(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    stored = rng.integers(0, 4000, size=(5, 16, 18)).astype(np.float64)
    hu = stored * 0.5 - 1024.0  # half-HU steps only a non-integer slope can store
    _write_dicom_series(tmp_path / "series", hu, slope=0.5, intercept=-1024.0)
    probe = sitk.ImageFileReader()
    probe.SetFileName(str(tmp_path / "series" / "slice000.dcm"))
    probe.ReadImageInformation()
    assert float(probe.GetMetaData("0028|1053")) == 0.5  # the file really carries the rescale

    vol = read_ct(tmp_path / "series")

    np.testing.assert_array_equal(vol.array, hu)
    assert vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7))
    np.testing.assert_allclose(vol.origin, (10.0, 20.0, 30.0))


def test_two_d_and_rgb_images_are_refused(tmp_path: Path) -> None:
    flat = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 20), np.int16)), str(flat))
    with pytest.raises(InputError, match="2-D"):
        read_ct(flat)
    rgb = tmp_path / "photo.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 20, 20, 3), np.uint8), isVector=True), str(rgb))
    with pytest.raises(InputError, match="colour"):
        read_ct(rgb)
    with pytest.raises(InputError, match="colour"):
        CTVolume.from_array(np.zeros((20, 20, 3), np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="dimension"):
        CTVolume.from_array(np.zeros((20, 20)), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="not found"):
        read_ct(tmp_path / "missing.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_ct(tmp_path / "empty")
    garbage = tmp_path / "notes.nii.gz"
    garbage.write_text("not an image")
    with pytest.raises(InputError, match="cannot read"):
        read_ct(garbage)


def test_missing_spacing_warns_and_assumes_1mm(tmp_path: Path) -> None:
    arr = _phantom(np.random.default_rng(3))
    with pytest.warns(CTWarning, match="assuming 1 mm"):
        vol = CTVolume.from_array(arr)
    assert vol.spacing == (1.0, 1.0, 1.0)
    path = tmp_path / "nospacing.mha"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))  # SimpleITK default spacing 1, 1, 1
    with pytest.warns(CTWarning, match="no spacing"):
        read_ct(path)


def test_values_that_are_not_hu_warn(tmp_path: Path) -> None:
    mr = np.random.default_rng(4).integers(0, 1200, size=(6, 16, 16)).astype(np.int16)  # MR-like
    path = tmp_path / "t1.nii.gz"
    img = sitk.GetImageFromArray(mr)
    img.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(img, str(path))
    with pytest.warns(CTWarning, match="Hounsfield"):
        vol = read_ct(path)
    assert any("Hounsfield" in note for note in vol.notes)


def test_from_array_copies_its_input() -> None:
    arr = _phantom(np.random.default_rng(5))
    before = arr.copy()
    vol = CTVolume.from_array(arr, (2.0, 1.0, 1.0))
    vol.array[0, 0, 0] = 999
    np.testing.assert_array_equal(arr, before)
