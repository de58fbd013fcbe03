"""Tiling H&E images and slide levels into tissue tiles.

`read_slide_level` reads one pyramid level of an SVS/TIFF with tifffile (no OpenSlide), or a
plain PNG/JPEG with Pillow. `tile_image` cuts full tiles on a grid and keeps those with enough
tissue (`pathology.tissue.tissue_mask`). Whole slides at a target magnification: `slide_tiler`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.pathology.tissue import MASK_SIDE, _check_rgb, otsu_threshold, saturation, tissue_mask

__all__ = ["MASK_SIDE", "Tiles", "otsu_threshold", "read_slide_level", "saturation", "tile_image", "tissue_mask"]

if TYPE_CHECKING:
    import pandas as pd

TIFF_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif"}


@dataclass(frozen=True)
class Tiles:
    """Tiles cut from one image: pixels, top-left corners and tissue fractions."""

    images: np.ndarray  # (N, T, T, 3) uint8
    coords: np.ndarray  # (N, 2) int64: row, col of each tile's top-left pixel
    tissue: np.ndarray  # (N,) float: fraction of the tile's pixels in the tissue mask
    tile_size: int
    stride: int

    def __len__(self) -> int:
        return len(self.images)

    def to_frame(self) -> pd.DataFrame:
        """One row per tile: row, col (top-left, pixels), tissue_fraction."""
        import pandas as pd

        return pd.DataFrame(
            {"row": self.coords[:, 0], "col": self.coords[:, 1], "tissue_fraction": self.tissue}
        )


def read_slide_level(path: str | Path, level: int = 0) -> np.ndarray:
    """Pixels (H, W, 3) uint8 of pyramid `level` (0 = full resolution) of an SVS/TIFF, or of a PNG/JPEG."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such image file: {path}")
    if path.suffix.lower() in TIFF_SUFFIXES:
        array = _read_tiff_level(path, level)
    else:
        if level != 0:
            raise InputError(f"{path.name} is a flat image with a single level (0); got level {level}")
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                array = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"cannot read {path.name} as an image: {err}") from err
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise InputError(f"{path.name} level {level} is not an 8-bit RGB image (shape {array.shape}, {array.dtype})")
    return np.ascontiguousarray(array)


def _read_tiff_level(path: Path, level: int) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            levels = tif.series[0].levels
            if not 0 <= level < len(levels):
                shapes = ", ".join(f"{i}: {lv.shape}" for i, lv in enumerate(levels))
                raise InputError(f"{path.name} has {len(levels)} pyramid level(s) ({shapes}); got level {level}")
            try:
                return levels[level].asarray()
            except ValueError as err:
                if "imagecodecs" not in str(err):
                    raise
                pages = levels[level].pages
                if len(pages) == 1 and _pillow_can_decode(pages[0]):
                    return read_jpeg_page(tif, pages[0])
                raise InputError(
                    f"{path.name} is compressed in a way that needs the imagecodecs package "
                    "(pip install imagecodecs)"
                ) from err
    except InputError:
        raise
    except ValueError as err:
        raise InputError(f"cannot read {path.name}: {err}") from err
    except (tifffile.TiffFileError, OSError) as err:
        raise InputError(f"cannot read {path.name} as a TIFF/SVS slide: {err}") from err


def _pillow_can_decode(page: object) -> bool:
    return (
        getattr(page, "compression", None) == 7  # JPEG
        and getattr(page, "samplesperpixel", 0) == 3
        and getattr(page, "planarconfig", 0) == 1
        and getattr(page, "photometric", None) in (2, 6)  # RGB or YCbCr
    )


def read_jpeg_page(tif: object, page: object) -> np.ndarray:
    """Decode a JPEG-compressed RGB TIFF page tile by tile with Pillow (when imagecodecs is missing).

    Each tile's JPEG stream is completed with the page's shared tables; Aperio stores RGB
    samples without the YCbCr transform, so Pillow is told the stream's colour space.
    """
    import io

    from PIL import Image

    h, w = page.shape[:2]  # type: ignore[attr-defined]
    if page.is_tiled:  # type: ignore[attr-defined]
        th, tw = page.tilelength, page.tilewidth  # type: ignore[attr-defined]
    else:
        th, tw = page.rowsperstrip, w  # type: ignore[attr-defined]
    across = -(-w // tw)
    tables = page.jpegtables  # type: ignore[attr-defined]
    out = np.zeros((h, w, 3), dtype=np.uint8)
    handle = tif.filehandle  # type: ignore[attr-defined]
    for i, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):  # type: ignore[attr-defined]
        if count == 0:
            continue
        handle.seek(offset)
        data = handle.read(count)
        stream = tables[:-2] + data[2:] if tables else data  # tables' SOI..tables + tile after its SOI
        with Image.open(io.BytesIO(stream)) as im:
            if page.photometric == 2:  # type: ignore[attr-defined]
                codec, extents, start, _ = im.tile[0]
                im.tile = [(codec, extents, start, ("RGB", "RGB"))]
            pixels = np.asarray(im.convert("RGB"))
        y, x = (i // across) * th, (i % across) * tw
        hh, ww = min(th, h - y), min(tw, w - x)
        out[y : y + hh, x : x + ww] = pixels[:hh, :ww]
    return out


def tile_image(
    image: np.ndarray,
    tile_size: int,
    stride: int | None = None,
    min_tissue: float = 0.5,
    mask: np.ndarray | None = None,
) -> Tiles:
    """Cut full `tile_size` tiles every `stride` px (default: no overlap), keep those with >= `min_tissue` tissue.

    `mask` is a boolean tissue mask of the image's size (default `tissue_mask(image)`); with
    `min_tissue=0` every tile is kept. Tiles are copies: editing them leaves `image` alone.
    """
    _check_rgb(image)
    h, w = image.shape[:2]
    stride = tile_size if stride is None else stride
    if not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
        raise InputError(f"tile size must be a positive number of pixels; got {tile_size!r}")
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise InputError(f"stride must be a positive number of pixels; got {stride!r}")
    if tile_size > min(h, w):
        raise InputError(f"tile size {tile_size} px is larger than the image ({h} x {w} px)")
    if not 0.0 <= float(min_tissue) <= 1.0:
        raise InputError(f"min_tissue is a fraction between 0 and 1; got {min_tissue!r}")
    if mask is None:
        mask = tissue_mask(image)
    elif mask.shape != (h, w):
        raise InputError(f"mask shape {mask.shape} does not match the image ({h} x {w})")

    rows = np.arange(0, h - tile_size + 1, stride)
    cols = np.arange(0, w - tile_size + 1, stride)
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), axis=0), axis=1)
    r, c = np.meshgrid(rows, cols, indexing="ij")
    r, c = r.ravel(), c.ravel()
    t = tile_size
    counts = integral[r + t, c + t] - integral[r, c + t] - integral[r + t, c] + integral[r, c]
    fraction = counts / float(t * t)
    keep = fraction >= float(min_tissue)
    r, c = r[keep], c[keep]
    rgb = image[..., :3]
    images = (
        np.stack([rgb[i : i + t, j : j + t] for i, j in zip(r, c)])
        if len(r)
        else np.zeros((0, t, t, 3), dtype=image.dtype)
    )
    return Tiles(images, np.stack([r, c], axis=1).astype(np.int64), fraction[keep], int(t), int(stride))
