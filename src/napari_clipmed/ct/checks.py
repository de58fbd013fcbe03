"""Checks on CT files that SimpleITK does not make: truncated NIfTI data, DICOM slice positions.

SimpleITK fills the missing part of a truncated NIfTI with zeros, and reads a DICOM series with a
missing slice as a shorter volume with a recomputed (wrong) spacing, saying so only in a C++
warning. These checks turn both into one `InputError` naming the file and what is missing.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_clipmed.errors import InputError

_CHUNK = 1 << 22


_FLOAT_CODES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float voxels


def _nifti_layout(header: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(data offset, data bytes, float dtype or None) from a NIfTI-1/2 header, or None when it is not one."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            code, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = int(struct.unpack(order + "f", header[108:112])[0]) or 352
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims = struct.unpack(order + "8q", header[16:80])
            code, bitpix = struct.unpack(order + "2h", header[12:16])
            offset = int(struct.unpack(order + "q", header[168:176])[0]) or 544
        else:
            continue
        n = int(np.prod([max(1, d) for d in dims[1 : 1 + max(0, min(int(dims[0]), 7))]], dtype=np.int64))
        dtype = np.dtype(order + _FLOAT_CODES[code]) if code in _FLOAT_CODES else None
        return offset, n * max(1, bitpix) // 8, dtype
    return None


def check_nifti(path: Path) -> None:
    """Refuse a NIfTI (.nii or .nii.gz) whose voxel data is shorter than its header says, or whose
    float voxels hold NaN/inf (SimpleITK's NIfTI reader turns those into zeros without a word)."""
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return
    opener = gzip.open if name.endswith(".gz") else open
    total, header, bad, carry = 0, b"", 0, b""
    layout: tuple[int, int, np.dtype | None] | None = None
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(_CHUNK):
                if layout is None and len(header) < 544:
                    header += chunk[: 544 - len(header)]
                    layout = _nifti_layout(header) if len(header) >= 540 or total + len(chunk) < 544 else None
                if layout is not None and layout[2] is not None:  # count non-finite float voxels as they stream by
                    offset, size, dtype = layout
                    assert dtype is not None
                    lo, hi = max(offset - total, 0), min(offset + size - total, len(chunk))
                    if hi > lo:
                        data = carry + chunk[lo:hi]
                        usable = len(data) - len(data) % dtype.itemsize
                        bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(data[:usable], dtype))))
                        carry = data[usable:]
                total += len(chunk)
    except gzip.BadGzipFile:
        return  # not gzip at all: SimpleITK's "cannot read" names the problem
    except (EOFError, zlib.error) as err:
        raise InputError(f"{path} is truncated or corrupt: the compressed data ends early ({err})") from None
    layout = layout or _nifti_layout(header)
    if layout is None:
        return  # not a NIfTI header: SimpleITK's own error names the problem
    offset, nbytes, dtype = layout
    if total < offset + nbytes:
        missing = offset + nbytes - total
        raise InputError(
            f"{path} is truncated: its header promises {nbytes:,} bytes of voxels after byte {offset}, but "
            f"{missing:,} bytes ({100 * missing / max(nbytes, 1):.0f}% of the voxels) are missing; copy the file again"
        )
    if bad and dtype is not None:
        n = nbytes // dtype.itemsize
        raise InputError(
            f"{path} holds {bad:,} NaN or infinite voxel(s) of {n:,}" + (" (all of them)" if bad == n else "")
            + "; replace them (e.g. with -1024 HU, air) before running"
        )


def check_finite(array: np.ndarray, source: str) -> None:
    """Refuse NaN or infinite voxels (they would reach patches as undefined pixel values)."""
    if array.dtype.kind == "f" and array.size:
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InputError(
                f"{source} holds {bad:,} NaN or infinite voxel(s) of {array.size:,}"
                + (" (all of them)" if bad == array.size else "")
                + "; replace them (e.g. with -1024 HU, air) before running"
            )


def check_slice_positions(
    positions: Sequence[Sequence[float]], direction: Sequence[float], folder: Path, files: Sequence[str]
) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced along the slice normal (a missing,
    unreadable or duplicated slice), naming the gap."""
    if len(positions) < 3:
        return
    normal = np.asarray(direction, dtype=np.float64).reshape(3, 3)[:, 2]
    along = np.asarray(positions, dtype=np.float64) @ normal
    steps = np.diff(along)
    median = float(np.median(np.abs(steps)))
    if median <= 0:
        raise InputError(f"DICOM series in {folder}: several slices share one position; is a series duplicated?")
    off = np.flatnonzero(np.abs(np.abs(steps) - median) > 0.1 * median + 1e-3)
    if off.size:
        i = int(off[0])
        gap = abs(float(steps[i]))
        what = f"about {gap / median - 1:.0f} slice(s) missing" if gap > median else "slices closer than the rest"
        raise InputError(
            f"DICOM series in {folder} is not evenly spaced: {gap:.2f} mm between {Path(files[i]).name} and "
            f"{Path(files[i + 1]).name} against {median:.2f} mm elsewhere ({what}); "
            "a slice is missing or unreadable, so positions and spacing would be wrong"
        )
