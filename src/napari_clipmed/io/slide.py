"""Whole-slide images as lazy pyramids with their pixel size in µm.

`open_slide` returns a `Slide`: one lazy dask array (H, W, 3) uint8 per pyramid level and the
µm per level-0 pixel. Opening reads only the file's header (and, for TIFFs, each level's tile
table to catch truncated files), so it costs the same whatever the slide's size; pixels are read
when a region is asked for (`Slide.read_region`) or when napari draws a tile of a level.

Backends, tried in this order:
- tifffile's zarr store for TIFF-family files (SVS, OME-TIFF, pyramidal TIFF, and NDPI/SCN/BIF
  when tifffile parses them);
- OpenSlide (pip `openslide-python` + `openslide-bin`) for the other vendor formats (NDPI, MRXS, ...);
- wsidicom for a DICOM WSI (a folder of .dcm instances, or one of them);
- Pillow for a flat PNG/JPEG (one level, in memory).

Pixel size: Aperio `MPP`, OME `PhysicalSizeX`, TIFF resolution tags (cm or inch), OpenSlide's
`openslide.mpp-x`, DICOM pixel spacing. When the file gives none (or an implausible one, such as
a default 72 dpi), `SlideWarning` says so and `mpp` is None until the caller passes one.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from napari_clipmed.errors import InputError

TIFF_SUFFIXES: tuple[str, ...] = (".svs", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".ndpi", ".scn", ".bif")
OPENSLIDE_SUFFIXES: tuple[str, ...] = (".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".svslide", ".bif", ".czi")
FLAT_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
MPP_RANGE: tuple[float, float] = (0.05, 50.0)  # plausible µm per level-0 pixel of a slide
CHUNK = 512  # dask chunk side for backends without their own tiles


class SlideWarning(UserWarning):
    """Something about a slide the user should know (e.g. no pixel size in the file)."""


RegionReader = Callable[[int, int, int, int, int], np.ndarray]  # (level, y, x, h, w) -> (h, w, 3) uint8


@dataclass(frozen=True)
class Slide:
    """An opened slide: lazy levels, level-0 pixel size, and how to read a region of any level."""

    path: Path
    levels: tuple[Any, ...]  # dask arrays (H, W, 3) uint8, level 0 first
    mpp: float | None  # µm per level-0 pixel; None when unknown
    mpp_source: str  # "aperio", "ome", "tiff-resolution", "openslide", "dicom", "user" or "none"
    backend: str  # "tifffile", "openslide", "wsidicom" or "flat"
    _read: RegionReader = field(repr=False, compare=False)
    _close: Callable[[], None] = field(default=lambda: None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return slide_stem(self.path)

    @cached_property
    def shapes(self) -> list[tuple[int, int]]:
        """(H, W) of each level (levels never change: computed once, read for every tile)."""
        return [(int(a.shape[0]), int(a.shape[1])) for a in self.levels]

    @cached_property
    def downsamples(self) -> list[float]:
        """Level-0 pixels per pixel of each level (mean of the two axes)."""
        h0, w0 = self.shapes[0]
        return [0.5 * (h0 / h + w0 / w) for h, w in self.shapes]

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def with_mpp(self, mpp: float | None) -> Slide:
        """The same slide with a user-set pixel size (µm per level-0 pixel); None keeps the file's."""
        if mpp is None:
            return self
        return replace(self, mpp=check_mpp(mpp, "slide pixel size"), mpp_source="user")

    def best_level(self, downsample: float) -> int:
        """The coarsest level that is still at least as fine as `downsample` (so tiles are shrunk, never enlarged)."""
        ok = [i for i, d in enumerate(self.downsamples) if d <= downsample * 1.01]
        return max(ok) if ok else 0

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels (h, w, 3) uint8 of `level` with top-left (y, x) in that level's pixels; outside is white."""
        if not 0 <= level < len(self.levels):
            raise InputError(f"{self.name} has levels 0..{len(self.levels) - 1}; got level {level}")
        H, W = self.shapes[level]
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
        if (y0, x0, y1, x1) == (y, x, y + h, x + w):  # inside the level: no white frame to fill and copy into
            region = self._read(level, y, x, h, w)
            if isinstance(region, np.ndarray) and region.flags.owndata and region.flags.writeable \
                    and region.dtype == np.uint8 and region.shape == (h, w, 3):
                return region  # a fresh array of the reader's own: the caller may keep or change it
            return np.array(region, dtype=np.uint8, copy=True)
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        if y1 > y0 and x1 > x0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._read(level, y0, x0, y1 - y0, x1 - x0)
        return out

    def close(self) -> None:
        self._close()

    def __enter__(self) -> Slide:  # noqa: PYI034 (frozen dataclass, no subclasses)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_mpp(value: object, what: str = "pixel size") -> float:
    """A positive, plausible µm/px value, or one clear InputError."""
    try:
        mpp = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number of µm per pixel; got {value!r}") from None
    if not np.isfinite(mpp) or mpp <= 0:
        raise InputError(f"{what} must be a positive number of µm per pixel; got {value!r}")
    return mpp


def slide_stem(path: str | os.PathLike[str]) -> str:
    name = Path(path).name
    for suffix in sorted(TIFF_SUFFIXES + OPENSLIDE_SUFFIXES + FLAT_SUFFIXES + (".dcm",), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_slide_path(path: str | os.PathLike[str]) -> bool:
    """True for names this module reads as a slide (flat images excluded)."""
    name = str(path).lower()
    return name.endswith((*TIFF_SUFFIXES, *OPENSLIDE_SUFFIXES, ".dcm")) or _is_dicom_folder(Path(path))


def open_slide(path: str | os.PathLike[str], mpp: float | None = None, backend: str | None = None) -> Slide:
    """Open a slide lazily; `mpp` (µm per level-0 pixel) overrides or supplies the file's pixel size.

    `backend` ("tifffile", "openslide", "wsidicom", "flat") forces a reader; by default the name decides.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"no such slide: {p}")
    name = p.name.lower()
    openers = {"tifffile": _open_tiff, "openslide": _open_openslide, "wsidicom": _open_dicom, "flat": _open_flat}
    if backend is not None:
        if backend not in openers:
            raise InputError(f"unknown slide backend {backend!r}; one of {', '.join(openers)}")
        slide = openers[backend](p)
    elif p.is_dir() or name.endswith(".dcm"):
        slide = _open_dicom(p)
    elif name.endswith(FLAT_SUFFIXES):
        slide = _open_flat(p)
    elif name.endswith(TIFF_SUFFIXES) and not name.endswith((".mrxs",)):
        slide = _open_tiff(p)
    elif name.endswith(OPENSLIDE_SUFFIXES):
        slide = _open_openslide(p)
    else:
        raise InputError(f"{p.name}: not a slide format this plugin reads (TIFF/SVS/NDPI/MRXS/DICOM/PNG/JPEG)")
    if mpp is not None:
        try:
            return slide.with_mpp(mpp)
        except BaseException:  # a bad pixel size: the file is not left open
            slide.close()
            raise
    if slide.mpp is None:
        try:
            warnings.warn(
                f"{p.name} does not say its pixel size; set it (µm per pixel) in the widget's 'slide µm/px' field "
                "or with --slide-mpp, otherwise sizes are in pixels",
                SlideWarning,
                stacklevel=2,
            )
        except BaseException:  # the warning raised as an error: the file is not left open
            slide.close()
            raise
    return slide


# --- TIFF family (tifffile + zarr + dask) ----------------------------------------------------------


def _open_tiff(p: Path) -> Slide:
    import tifffile

    try:
        tif = tifffile.TiffFile(p)
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as err:
        raise InputError(f"cannot read {p.name} as a TIFF slide (truncated or not a TIFF): {err}") from err
    try:
        series = tif.series[0]
        levels = list(series.levels)
        _check_rgb_levels(p, levels)
        _check_complete(p, levels)
        mpp, source = _tiff_mpp(tif)
        if source == "none" and p.suffix.lower() in OPENSLIDE_SUFFIXES:
            tif.close()
            return _open_openslide(p)
        arrays = _zarr_levels(series, len(levels))
    except InputError:
        tif.close()
        raise
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError) as err:
        tif.close()
        raise InputError(f"cannot read {p.name} as a TIFF slide: {err}") from err
    import dask.array as da

    lazy = tuple(da.from_zarr(a) for a in arrays)
    return Slide(p, tuple(a[..., :3] if a.shape[-1] == 4 else a for a in lazy), mpp, source, "tifffile",
                 _ChunkCache(arrays, _tile_decoders(tif, levels)).read, tif.close)


class _ChunkCache:
    """Region reads through the levels' own chunks (JPEG tiles), each decoded once while it stays cached.

    Neighbouring slide tiles share file tiles; a least-recently-used cache of `CACHE_BYTES` keeps a
    few rows of them, so a grid read row by row decodes every file tile about once. Chunks larger
    than `MAX_CHUNK_BYTES` (a striped, untiled level) are not cached: the region is read directly.
    tifffile's store locks its file handle around each read, so threads decode in parallel.
    """

    CACHE_BYTES = 96 * 2**20
    MAX_CHUNK_BYTES = 4 * 2**20

    def __init__(self, arrays: Sequence[Any], decoders: Sequence[Callable[[int, int], np.ndarray] | None]) -> None:
        from collections import OrderedDict

        self.arrays, self.decoders = arrays, decoders
        self.cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def _chunk(self, level: int, cy: int, cx: int, ch: int, cw: int) -> np.ndarray:
        key = (level, cy, cx)
        with self.lock:
            block = self.cache.get(key)
            if block is not None:
                self.cache.move_to_end(key)
                return block
        decode = self.decoders[level]
        if decode is not None:
            block = decode(cy, cx)
        else:
            block = np.asarray(self.arrays[level][cy * ch : (cy + 1) * ch, cx * cw : (cx + 1) * cw])
        with self.lock:
            if key not in self.cache:
                self.cache[key] = block
                self.bytes += block.nbytes
                while self.bytes > self.CACHE_BYTES and len(self.cache) > 1:
                    self.bytes -= self.cache.popitem(last=False)[1].nbytes
        return block

    def read(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        array = self.arrays[level]
        ch, cw = (int(v) for v in array.chunks[:2])
        if ch * cw * array.shape[-1] > self.MAX_CHUNK_BYTES:
            return np.asarray(array[y : y + h, x : x + w])[..., :3]
        out = np.empty((h, w, 3), dtype=np.uint8)
        for cy in range(y // ch, (y + h - 1) // ch + 1):
            for cx in range(x // cw, (x + w - 1) // cw + 1):
                block = self._chunk(level, cy, cx, ch, cw)
                y0, x0 = max(y, cy * ch), max(x, cx * cw)
                y1, x1 = min(y + h, cy * ch + block.shape[0]), min(x + w, cx * cw + block.shape[1])
                out[y0 - y : y1 - y, x0 - x : x1 - x] = block[y0 - cy * ch : y1 - cy * ch, x0 - cx * cw : x1 - cx * cw, :3]
        return out



def _tile_decoders(tif: Any, levels: Sequence[Any]) -> list[Callable[[int, int], np.ndarray] | None]:
    """Per level, a direct decoder of file tile (row, col) when the level is one tiled page (else None).

    It reads the tile's bytes under the file handle's lock and decodes them with the page's own
    codec (as tifffile's zarr store does, without its per-call overhead); edge tiles are cropped.
    """
    out: list[Callable[[int, int], np.ndarray] | None] = []
    for level in levels:
        pages = level.pages
        page = pages[0] if len(pages) == 1 else None
        if page is None or not getattr(page, "is_tiled", False) or page.imagedepth != 1:
            out.append(None)
            continue
        out.append(_page_decoder(tif.filehandle, page))
    return out


def _page_decoder(fh: Any, page: Any) -> Callable[[int, int], np.ndarray]:
    th, tw = int(page.tilelength), int(page.tilewidth)
    height, width = int(page.imagelength), int(page.imagewidth)
    across = -(-width // tw)
    offsets, counts = page.dataoffsets, page.databytecounts
    decode, tables = page.decode, page.jpegtables

    def tile(cy: int, cx: int) -> np.ndarray:
        index = cy * across + cx
        with fh.lock:
            fh.seek(offsets[index])
            data = fh.read(counts[index])
        segment = decode(data, index, jpegtables=tables)[0]
        return segment.reshape(segment.shape[-3:])[: min(th, height - cy * th), : min(tw, width - cx * tw)]

    return tile


def _check_rgb_levels(p: Path, levels: Sequence[Any]) -> None:
    for i, level in enumerate(levels):
        shape, dtype = tuple(level.shape), np.dtype(level.dtype)
        if len(shape) != 3 or shape[-1] not in (3, 4) or dtype != np.uint8:
            raise InputError(
                f"{p.name} is not an RGB slide: level {i} has shape {shape} and dtype {dtype} "
                "(expected H x W x 3 of 8-bit samples, as H&E scans are)"
            )


def _check_complete(p: Path, levels: Sequence[Any]) -> None:
    """Every tile of every level lies inside the file (a truncated download fails here, not mid-run)."""
    size = p.stat().st_size
    for i, level in enumerate(levels):
        for page in level.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if len(offsets) and (counts == 0).any():
                raise InputError(f"{p.name} is incomplete: level {i} has tiles without data (truncated or damaged file)")
            end = int((offsets + counts).max()) if len(offsets) else 0
            if end > size:
                raise InputError(
                    f"{p.name} is truncated: level {i} needs {end:,} bytes but the file has {size:,}"
                )


def _zarr_levels(series: Any, count: int) -> list[Any]:
    import zarr

    store = series.aszarr()
    node: Any = zarr.open(store, mode="r")  # an array for one level, a group of "0", "1", ... for a pyramid
    if count == 1 and not hasattr(node, "keys"):
        return [node]
    return [node[str(i)] for i in range(count)]


def _plausible(mpp: float | None) -> bool:
    return mpp is not None and np.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _tiff_mpp(tif: Any) -> tuple[float | None, str]:
    page = tif.pages[0]
    description = page.description or ""
    if tif.is_svs or "Aperio" in description:
        match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
        if match and _plausible(float(match.group(1))):
            return float(match.group(1)), "aperio"
    if tif.is_ome and tif.ome_metadata:
        mpp = _ome_mpp(tif.ome_metadata)
        if _plausible(mpp):
            return mpp, "ome"
    mpp = _resolution_mpp(page)
    if _plausible(mpp):
        return mpp, "tiff-resolution"
    return None, "none"


_UNIT_TO_UM = {"nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _ome_mpp(xml: str) -> float | None:
    match = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if not match:
        return None
    tag = match.group(0)
    size = re.search(r'PhysicalSizeX="([^"]+)"', tag)
    unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tag)
    if not size:
        return None
    factor = _UNIT_TO_UM.get(unit.group(1) if unit else "µm")
    return None if factor is None else float(size.group(1)) * factor


def _resolution_mpp(page: Any) -> float | None:
    tags = page.tags
    if "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value)
    num, den = tags["XResolution"].value
    if num == 0 or den == 0:
        return None
    per_unit = num / den  # pixels per unit
    microns = {2: 25400.0, 3: 10000.0}.get(unit)  # inch, centimetre; 1 = no unit
    return None if microns is None else microns / per_unit


# --- OpenSlide ---------------------------------------------------------------------------------------


def _open_openslide(p: Path) -> Slide:
    try:
        import openslide
    except ImportError as err:  # pragma: no cover - the slides extra installs it
        raise InputError(f"{p.name} needs OpenSlide: pip install openslide-python openslide-bin") from err
    try:
        handle = openslide.OpenSlide(str(p))
    except (openslide.OpenSlideError, OSError) as err:
        raise InputError(f"cannot read {p.name} with OpenSlide (unsupported, truncated or damaged): {err}") from err
    props = handle.properties
    try:
        mpp: float | None = float(props.get(openslide.PROPERTY_NAME_MPP_X, "nan"))
    except ValueError:
        mpp = None
    source = "openslide" if _plausible(mpp) else "none"
    downsamples = list(handle.level_downsamples)
    lock = threading.Lock()

    def read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        ds = downsamples[level]
        with lock:
            image = handle.read_region((round(x * ds), round(y * ds)), level, (w, h))
        rgba = np.asarray(image)
        return _flatten_rgba(rgba)

    shapes = [(h, w) for w, h in handle.level_dimensions]
    return Slide(p, _lazy_levels(shapes, read), mpp if source != "none" else None, source, "openslide", read, handle.close)


def _flatten_rgba(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide's premultiplied RGBA over white (transparent = outside the scanned area)."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16) + (255 - alpha)
    return np.minimum(rgb, 255).astype(np.uint8)


class _RegionArray:
    """An array-like view of one level, read through a region reader (for dask.array.from_array)."""

    def __init__(self, read: RegionReader, level: int, shape: tuple[int, int]) -> None:
        self.read, self.level = read, level
        self.shape, self.dtype, self.ndim = (shape[0], shape[1], 3), np.dtype(np.uint8), 3

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        region = self.read(self.level, y0, x0, max(0, y1 - y0), max(0, x1 - x0))
        return region[(slice(None), slice(None), *key[2:])] if len(key) > 2 else region


def _lazy_levels(shapes: Sequence[tuple[int, int]], read: RegionReader) -> tuple[Any, ...]:
    import dask.array as da

    return tuple(
        da.from_array(_RegionArray(read, i, shape), chunks=(CHUNK, CHUNK, 3), asarray=False, fancy=False, name=False)
        for i, shape in enumerate(shapes)
    )


# --- DICOM WSI (wsidicom) ---------------------------------------------------------------------------


def _is_dicom_folder(p: Path) -> bool:
    if not p.is_dir():
        return False
    with os.scandir(p) as entries:  # closed even when any() stops early (an open iterator is a ResourceWarning)
        return any(e.name.lower().endswith(".dcm") for e in entries)


def _open_dicom(p: Path) -> Slide:
    try:
        from wsidicom import WsiDicom
    except ImportError as err:  # pragma: no cover - the slides extra installs it
        raise InputError(f"{p.name} needs wsidicom: pip install wsidicom") from err
    folder = p if p.is_dir() else p.parent
    try:
        handle = WsiDicom.open(folder)
    except Exception as err:  # wsidicom raises many types for files that are not a WSI
        raise InputError(f"cannot read {p.name} as a DICOM whole-slide image: {err}") from err
    levels = handle.levels
    shapes = [(int(lv.size.height), int(lv.size.width)) for lv in levels]
    mpp = float(levels[0].mpp.width) if levels[0].mpp is not None else None
    source = "dicom" if _plausible(mpp) else "none"
    lock = threading.Lock()

    def read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        with lock:
            image = handle.read_region((x, y), levels[level].level, (w, h))
        return np.asarray(image.convert("RGB"))

    return Slide(p, _lazy_levels(shapes, read), mpp if source != "none" else None, source, "wsidicom", read, handle.close)


# --- flat images --------------------------------------------------------------------------------------


def _open_flat(p: Path) -> Slide:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as im:
            if im.mode not in ("RGB", "RGBA", "P", "L"):
                raise InputError(f"{p.name} is not an RGB image (mode {im.mode})")
            array = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"cannot read {p.name} as an image (truncated or not an image): {err}") from err
    import dask.array as da

    def read(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        return array[y : y + h, x : x + w]

    return Slide(p, (da.from_array(array, chunks=(CHUNK, CHUNK, 3)),), None, "none", "flat", read)
