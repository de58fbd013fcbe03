"""npe2 reader: CT volumes (DICOM series folder, NIfTI, NRRD, MHA/MHD) and whole-slide images (SVS/TIFF).

CT volumes become an Image layer in Hounsfield units with `scale` = voxel spacing (z, y, x, mm) and
`translate` = the file's origin, so distances measured in napari are millimetres and patch sizes in mm
mean what they say. Slides (SVS, TIFF, OME-TIFF, NDPI, MRXS, DICOM WSI) become a multiscale RGB Image
layer of lazy levels (`io.slide`) whose `scale` is the slide's µm per pixel.
`get_reader` returns None for paths it does not handle, so other readers get their turn.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Any], list[LayerData]]

CT_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")
SLIDE_SUFFIXES: tuple[str, ...] = (".svs", ".tif", ".tiff")
VENDOR_SUFFIXES: tuple[str, ...] = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide")
LUNG_WINDOW: tuple[float, float] = (-1350.0, 150.0)  # level -600 HU, width 1500 HU


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def get_reader(path: str | os.PathLike[str] | list[str]) -> ReaderFunction | None:
    """The reader function for `path`, or None when this plugin does not read it."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    if p.is_dir():
        if _has_dicom_file(p, wsi=True):
            return read_slide  # a DICOM whole-slide image, not a CT series
        return read_dicom_folder if _has_dicom_file(p) and _dicom_series_ids(p) else None
    suffix = _suffix(p)
    if suffix in CT_SUFFIXES:
        return read_ct_file
    if suffix == ".dcm" or (p.is_file() and _is_dicom(p)):
        return read_slide if _is_dicom(p, wsi=True) else read_dicom_file
    if suffix in VENDOR_SUFFIXES:
        return read_slide  # a damaged vendor file gets our clear message rather than another reader's
    if suffix in SLIDE_SUFFIXES and _is_rgb_tiff(p):
        return read_slide
    return None


# --- CT ------------------------------------------------------------------------------------------
def ct_layer_data(volume: Any, name: str | None = None) -> LayerData:
    """Image layer data for a `CTVolume`: HU array, spacing as scale, origin as translate, lung window."""
    spacing = tuple(float(s) for s in volume.spacing)
    origin_xyz = tuple(float(v) for v in volume.origin)
    source = volume.source
    kwargs: dict[str, Any] = {
        "name": name or (_stem(Path(source)) if source else "CT"),
        "scale": spacing,
        "translate": origin_xyz[::-1],
        "contrast_limits": LUNG_WINDOW,
        "colormap": "gray",
        "metadata": {
            "spacing": spacing,
            "origin": origin_xyz,
            "direction": tuple(float(v) for v in volume.direction),
            "path": source,
            "modality": "CT",
            "units": "HU",
            "notes": tuple(getattr(volume, "notes", ())),
        },
    }
    return (volume.array, kwargs, "image")


def read_ct_file(path: str | os.PathLike[str]) -> list[LayerData]:
    """A NIfTI / NRRD / MHA / MHD CT volume as one Image layer in HU."""
    return [ct_layer_data(_read_ct(Path(path)))]


def read_dicom_folder(path: str | os.PathLike[str]) -> list[LayerData]:
    """Each 3-D DICOM series in a folder as its own Image layer (named by series when there are several)."""
    folder = Path(path)
    ids = _dicom_series_ids(folder)
    if len(ids) == 1:
        return [ct_layer_data(_read_ct(folder), name=folder.name)]
    return [ct_layer_data(_read_ct(folder, sid), name=f"{folder.name} [{sid[-8:]}]") for sid in ids]


def read_dicom_file(path: str | os.PathLike[str]) -> list[LayerData]:
    """The whole series that a single .dcm file belongs to (read from its folder)."""
    import SimpleITK as sitk

    p = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(p))
    reader.ReadImageInformation()
    series = reader.GetMetaData("0020|000e").strip() if reader.HasMetaDataKey("0020|000e") else None
    return [ct_layer_data(_read_ct(p.parent, series), name=p.parent.name)]


def _read_ct(path: Path, series_id: str | None = None) -> Any:
    from napari_clipmed.ct.io import read_ct

    return read_ct(path, series_id=series_id) if series_id else read_ct(path)


WSI_SOP_CLASS = b"1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def _is_dicom(path: str | os.PathLike[str], wsi: bool = False) -> bool:
    """True when the file carries the DICOM preamble ('DICM' at byte 128); with `wsi`, and is a slide instance.

    A whole-slide instance names its SOP class in the file meta header (MediaStorageSOPClassUID),
    within the first few hundred bytes, so no DICOM parser is needed to tell it from a CT slice.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096 if wsi else 132)
    except OSError:
        return False
    return head[128:132] == b"DICM" and (not wsi or WSI_SOP_CLASS in head)


def _has_dicom_file(folder: Path, limit: int = 64, wsi: bool = False) -> bool:
    """Cheap check before GDCM scans a folder: one of its first files is DICOM (with `wsi`, a slide instance)."""
    with os.scandir(folder) as entries:
        for i, entry in enumerate(entries):
            if i >= limit:
                break
            if entry.is_file() and _is_dicom(entry.path, wsi=wsi):
                return True
    return False


def _dicom_series_ids(folder: Path) -> list[str]:
    import SimpleITK as sitk

    try:
        return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ())
    except RuntimeError:
        return []


def _stem(path: Path) -> str:
    name = path.name
    for suffix in CT_SUFFIXES + SLIDE_SUFFIXES + VENDOR_SUFFIXES + (".dcm",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# --- slides --------------------------------------------------------------------------------------
def _is_rgb_tiff(path: Path) -> bool:
    """True for a TIFF/SVS whose first page is an RGB(A) image of 8 bits per sample (a slide or photo)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.samplesperpixel in (3, 4) and page.dtype == np.uint8 and len(page.shape) == 3
    except (tifffile.TiffFileError, OSError, IndexError, ValueError):
        return False


def read_slide(path: str | os.PathLike[str], mpp: float | None = None) -> list[LayerData]:
    """A slide as one multiscale RGB Image layer (every level lazy), `scale` in µm per pixel.

    Without a pixel size in the file (and no `mpp`), the scale is 1 (level-0 pixels) and a
    `SlideWarning` says how to set it. A truncated or non-RGB file raises `InputError`: no layer.
    """
    from napari_clipmed.io.slide import open_slide

    slide = open_slide(path, mpp=mpp)
    step = slide.mpp if slide.mpp is not None else 1.0
    metadata = {
        "path": str(slide.path),
        "slide": True,
        "mpp": slide.mpp,  # µm per level-0 pixel (None: unknown)
        "mpp_source": slide.mpp_source,
        "level_shapes": slide.shapes,
        "downsamples": slide.downsamples,
        "backend": slide.backend,
        "units": "µm" if slide.mpp is not None else "px",
    }
    data = list(slide.levels)
    # The file stays open while the layer's arrays live. The finalizer holds only the closer: the
    # slide itself holds its levels, so a finalizer on `slide.close` kept data[0] alive and never ran.
    weakref.finalize(data[0], slide._close)
    kwargs: dict[str, Any] = {
        "name": slide.name,
        "rgb": True,
        "multiscale": len(data) > 1,
        "scale": (step, step),
        "metadata": metadata,
    }
    return [(data if len(data) > 1 else data[0], kwargs, "image")]
