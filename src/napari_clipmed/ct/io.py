"""Read CT volumes (DICOM series folder, NIfTI, NRRD, MHA) into a `CTVolume` in Hounsfield units.

SimpleITK does the reading: it applies the DICOM rescale slope/intercept, so the array holds
HU as stored. Geometry is kept: `spacing` in the array's (z, y, x) order for patch sizes in mm,
`origin` and `direction` in SimpleITK's physical (x, y, z) convention (LPS, mm) so voxel
positions can be reported in scanner coordinates.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_clipmed.ct.checks import check_finite, check_nifti, check_slice_positions
from napari_clipmed.errors import ClipmedWarning, InputError

IDENTITY_DIRECTION: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class CTWarning(ClipmedWarning):
    """Something about a CT volume looks wrong but the pipeline can go on (spacing, HU range)."""


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT volume: `array` (z, y, x) in HU, `spacing` (z, y, x) in mm, geometry for physical coordinates.

    `origin` is the physical position (x, y, z, mm) of voxel (0, 0, 0) and `direction` the 3x3
    direction cosines (row-major, SimpleITK order), as in the file. `source` names the file read.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY_DIRECTION
    source: str | None = None
    notes: tuple[str, ...] = field(default=(), compare=False)  # the warnings raised on reading

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (cm^3)."""
        return float(np.prod(self.spacing)) / 1000.0

    @classmethod
    def from_array(
        cls,
        array: np.ndarray,
        spacing: tuple[float, float, float] | None = None,
        origin: tuple[float, float, float] = (0.0, 0.0, 0.0),
        direction: tuple[float, ...] = IDENTITY_DIRECTION,
        source: str | None = None,
    ) -> CTVolume:
        """Wrap a (z, y, x) HU array; missing spacing is assumed 1 mm with a warning.

        The array is copied, so later changes to `array` do not reach the volume.
        """
        arr = _check_array(np.asarray(array), source or "array")
        check_finite(arr, source or "the array")
        notes: list[str] = []
        spacing_zyx = _check_spacing(spacing, notes)
        hu_note = check_hu_range(arr)
        if hu_note:
            notes.append(hu_note)
        for note in notes:
            warnings.warn(note, CTWarning, stacklevel=2)
        if len(direction) != 9 or len(origin) != 3:
            raise InputError("origin needs 3 values and direction 9 (a row-major 3x3 matrix)")
        return cls(
            array=_as_hu_dtype(arr),
            spacing=spacing_zyx,
            origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in direction),
            source=source,
            notes=tuple(notes),
        )

    def index_to_physical(self, zyx: np.ndarray) -> np.ndarray:
        """Physical (x, y, z) mm positions of (N, 3) continuous voxel indices in (z, y, x) order."""
        idx = np.atleast_2d(np.asarray(zyx, dtype=np.float64))[:, ::-1]  # -> (x, y, z)
        spacing_xyz = np.asarray(self.spacing[::-1])
        rot = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return np.asarray(self.origin) + (idx * spacing_xyz) @ rot.T

    def to_sitk(self):  # -> SimpleITK.Image (SimpleITK imported lazily)
        """The volume as a SimpleITK image with the same geometry (for writing files)."""
        import SimpleITK as sitk

        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing(tuple(float(s) for s in self.spacing[::-1]))
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


def read_ct(path: str | os.PathLike, series_id: str | None = None) -> CTVolume:
    """Read a CT volume from a DICOM series folder or a NIfTI / NRRD / MHA file.

    A folder is read as a DICOM series; when it holds several, pass `series_id` (the error
    lists them). Raises `InputError` for missing files, 2-D or colour images.
    """
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(f"CT not found: {path}")
    if path.is_dir():
        image = _read_dicom_series(path, series_id)
    else:
        check_nifti(path)
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError as err:
            raise InputError(
                f"cannot read {path} as a medical image (DICOM folder, NIfTI, NRRD or MHA expected): "
                f"{str(err).strip().splitlines()[-1]}"
            ) from None
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(
            f"{path} is a colour (RGB) image with {image.GetNumberOfComponentsPerPixel()} channels; "
            "a CT volume has one value (HU) per voxel"
        )
    if image.GetDimension() != 3:
        raise InputError(
            f"{path} is a {image.GetDimension()}-D image; a CT volume (a stack of slices) is needed"
            + (" - for DICOM, pass the folder that holds the whole series" if image.GetDimension() == 2 else "")
        )
    if image.GetDimension() == 3 and image.GetSize()[2] < 2:
        raise InputError(
            f"{path} holds a single slice; a CT volume (a stack of slices) is needed"
            " - for DICOM, pass the folder that holds the whole series"
        )
    array = sitk.GetArrayFromImage(image)
    check_finite(array, str(path))
    notes: list[str] = []
    spacing = _check_spacing(tuple(float(s) for s in image.GetSpacing()[::-1]), notes, from_file=True)
    hu_note = check_hu_range(array)
    if hu_note:
        notes.append(hu_note)
    for note in notes:
        warnings.warn(f"{path.name}: {note}", CTWarning, stacklevel=2)
    return CTVolume(
        array=_as_hu_dtype(array),
        spacing=spacing,
        origin=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
        direction=tuple(float(v) for v in image.GetDirection()),
        source=str(path),
        notes=tuple(notes),
    )


def check_hu_range(array: np.ndarray) -> str | None:
    """A message when the values do not look like CT Hounsfield units (e.g. MR, or a 0..1 image), else None.

    A CT of the chest or body always holds air (about -1000 HU) around or inside the body, and
    nothing plausible lies below -3100 HU (padding values go down to -3024) or above ~30000 HU.
    """
    if array.size == 0:
        return "the volume is empty"
    lo, hi = float(np.min(array)), float(np.max(array))
    if lo >= -500.0:
        return (
            f"values range {lo:g}..{hi:g} with nothing below -500: no air, so this does not look like "
            "CT in Hounsfield units (MR or a normalised image?); lung windows and masks assume HU"
        )
    if lo < -3100.0 or hi > 40000.0:
        return f"values range {lo:g}..{hi:g}, outside CT Hounsfield units; check the rescale slope/intercept"
    return None


def _read_dicom_series(folder: Path, series_id: str | None):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)) or ())
    if not ids:
        raise InputError(f"no DICOM series found in folder {folder}")
    if series_id is None:
        if len(ids) > 1:
            raise InputError(
                f"folder {folder} holds {len(ids)} DICOM series; choose one with --series UID "
                f"(series_id= in Python): {', '.join(ids)}"
            )
        series_id = ids[0]
    elif series_id not in ids:
        raise InputError(f"series {series_id!r} is not in {folder}; it holds: {', '.join(ids)}")
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    positions, direction = [], None
    for name in files:  # our own check of slice positions: ITK only warns about a gap, then respaces
        info = sitk.ImageFileReader()
        info.SetFileName(name)
        try:
            info.ReadImageInformation()
        except RuntimeError:
            raise InputError(f"DICOM slice {name} of the series in {folder} cannot be read; "
                             "remove or replace it") from None
        positions.append(info.GetOrigin())
        direction = direction or info.GetDirection()
    if direction is not None and len(direction) == 9:
        check_slice_positions(positions, direction, folder, files)
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError as err:
        raise InputError(f"cannot read the DICOM series in {folder}: {str(err).strip().splitlines()[-1]}") from None


def _check_array(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 4 and arr.shape[-1] in (3, 4):
        raise InputError(f"{name} is a colour (RGB) volume of shape {arr.shape}; CT has one HU value per voxel")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.dtype == np.uint8:
        raise InputError(f"{name} looks like a 2-D colour (RGB) image of shape {arr.shape}, not a CT volume")
    if arr.ndim != 3:
        raise InputError(f"{name} has {arr.ndim} dimension(s) {arr.shape}; a CT volume (z, y, x) is needed")
    if arr.shape[0] < 2:
        raise InputError(f"{name} holds a single slice {arr.shape}; a CT volume (a stack of slices) is needed")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name} has dtype {arr.dtype}; numbers (HU) are needed")
    return arr


def _check_spacing(
    spacing: tuple[float, ...] | None, notes: list[str], from_file: bool = False
) -> tuple[float, float, float]:
    if spacing is None:
        notes.append("no voxel spacing given; assuming 1 mm in every axis, so sizes in mm are approximate")
        return (1.0, 1.0, 1.0)
    try:
        values = [float(s) for s in spacing]
    except (TypeError, ValueError):
        raise InputError(f"spacing needs 3 numbers (z, y, x) in mm, got {spacing!r}") from None
    if len(values) != 3:
        raise InputError(f"spacing needs 3 values (z, y, x) in mm, got {spacing}")
    bad = [axis for axis, v in zip("zyx", values) if not (np.isfinite(v) and v > 0)]
    if bad and not from_file:
        raise InputError(
            f"spacing {tuple(spacing)} (z, y, x mm) must be positive and finite; check the {', '.join(bad)} value(s)"
        )
    if bad:  # keep the valid axes of a file's spacing, assume 1 mm only where it is invalid
        values = [v if axis not in bad else 1.0 for axis, v in zip("zyx", values)]
        notes.append(f"voxel spacing {tuple(spacing)} is not positive along {', '.join(bad)}; assuming 1 mm there")
        return (values[0], values[1], values[2])
    if from_file and values == [1.0, 1.0, 1.0]:
        notes.append(
            "voxel spacing reads as exactly 1 mm in every axis, which is what readers report when the file "
            "carries no spacing; check it, sizes in mm assume 1 mm"
        )
    return (values[0], values[1], values[2])


def _as_hu_dtype(arr: np.ndarray) -> np.ndarray:
    """int16 when the values fit it exactly, else float32; always a fresh, C-contiguous copy."""
    if arr.dtype == np.int16:
        return np.array(arr, copy=True, order="C")
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0 or (arr.min() >= -32768 and arr.max() <= 32767):
            return arr.astype(np.int16, order="C")
        return arr.astype(np.float32, order="C")
    out = arr.astype(np.float32, order="C", copy=True)
    if out.size and np.all(np.isfinite(out)) and np.array_equal(out, np.round(out)) \
            and out.min() >= -32768 and out.max() <= 32767:
        return out.astype(np.int16)
    return out
