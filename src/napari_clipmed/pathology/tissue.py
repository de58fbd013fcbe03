"""Tissue detection: stained tissue without glass and without marker-pen ink.

`tissue_mask` separates stained tissue from the bright, grey glass by Otsu's threshold
(scikit-image) on the square root of HSV saturation, then removes specks and fills small holes.
Marker ink is saturated too, so `ink_mask` removes it with the ink colour model of
`pathology.ink` (shared with the markup corruption): a pixel's optical density (-log of its transmittance) points along the ink's
absorbance direction. Green and blue inks absorb red more than green (OD_G / OD_R of 0.52 and 0.71),
while haematoxylin and eosin absorb green at least as much as red; black ink is dark and neutral.

`detect_tissue` runs both on a low-resolution level of a `Slide` and returns a `TissueMask`,
which knows its downsample, gives per-box tissue fractions to the tiler, and becomes an editable
Labels layer (1 = tissue, 2 = ink); an edited layer comes back through `TissueMask.from_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    from napari_clipmed.io.slide import Slide

MASK_SIDE = 1024  # tissue_mask works at about this long side
TISSUE, INK = 1, 2  # label values
INK_MAX_G_OVER_R = 0.8  # OD_G / OD_R below this: green or blue ink (H&E is >= ~0.9)
INK_MIN_COSINE = 0.95  # OD direction within ~18 degrees of an ink colour
INK_MIN_OD = 0.25  # optical-density norm: fainter pixels are glass
BLACK_MIN_OD = 2.2  # black ink: darker than any stain ...
BLACK_MIN_COSINE = 0.99  # ... and neutral
INK_MARGIN = 2  # mask pixels of tissue dropped around ink (pen edges are soft)


def saturation(image: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of an RGB image, float32 in [0, 1] (0 where black)."""
    _check_rgb(image)
    rgb = image[..., :3]
    hi = rgb.max(axis=-1).astype(np.float32)
    lo = rgb.min(axis=-1).astype(np.float32)
    return np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold (scikit-image); a constant image gives its value."""
    from skimage.filters import threshold_otsu

    values = np.asarray(values, dtype=np.float64).ravel()
    if values.min() == values.max():
        return float(values.min())
    return float(threshold_otsu(values, nbins=nbins))


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] not in (3, 4):
        shape = getattr(image, "shape", None)
        raise InputError(f"expected an RGB image (H, W, 3); got shape {shape}")


def tissue_mask(image: np.ndarray, min_size: int | None = None) -> np.ndarray:
    """Boolean mask (H, W) of stained tissue: Otsu on sqrt(HSV saturation), specks removed, holes filled.

    Glass is grey (saturation near 0), stained tissue is not. The square root evens out the
    broad spread of tissue saturations, which otherwise pulls Otsu's threshold into pale
    stroma. Large images are analysed at a reduced size (long side about `MASK_SIDE` px).
    `min_size` (full-resolution pixels) is the smallest tissue piece kept and the largest hole
    filled; default 0.01 % of the image, at least 64 px.
    """
    from skimage.morphology import opening, remove_small_holes, remove_small_objects

    _check_rgb(image)
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    step = max(1, -(-max(h, w) // MASK_SIDE))
    sat = np.sqrt(saturation(image[::step, ::step]))
    mask = sat > otsu_threshold(sat)
    if min_size is None:
        min_size = max(64, int(1e-4 * h * w))
    small = max(1, round(min_size / step**2))
    mask = opening(mask, np.ones((3, 3), bool))
    mask = _without_small(remove_small_objects, mask, small)
    mask = _without_small(remove_small_holes, mask, small)  # fill holes smaller than min_size
    if step == 1:
        return mask
    return mask[np.arange(h)[:, None] // step, np.arange(w)[None, :] // step]


def _without_small(function: Any, mask: np.ndarray, size: int) -> np.ndarray:
    """scikit-image's remove_small_objects / _holes keeping pieces of `size` px and more (any version)."""
    try:
        return function(mask, max_size=size - 1)  # scikit-image >= 0.26
    except TypeError:
        return function(mask, size)


def ink_mask(image: np.ndarray) -> np.ndarray:
    """Boolean mask (H, W) of marker-pen ink (green, blue, black) by the measured ink colour model."""
    from napari_clipmed.pathology.ink import INK_COLOURS

    _check_rgb(image)
    od = -np.log((image[..., :3].astype(np.float32) + 1.0) / 256.0)
    norm = np.linalg.norm(od, axis=-1)
    unit = od / np.maximum(norm, 1e-6)[..., None]
    directions = np.array([INK_COLOURS[c] for c in ("green", "blue")], dtype=np.float32)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    cosine = (unit @ directions.T).max(axis=-1)
    ratio = od[..., 1] / np.maximum(od[..., 0], 1e-6)
    coloured = (ratio < INK_MAX_G_OVER_R) & (cosine > INK_MIN_COSINE) & (norm > INK_MIN_OD)
    black = np.asarray(INK_COLOURS["black"], dtype=np.float32)
    neutral = unit @ (black / np.linalg.norm(black)) > BLACK_MIN_COSINE
    return coloured | (neutral & (norm > BLACK_MIN_OD))


@dataclass(frozen=True)
class TissueMask:
    """Tissue (True) on a grid of `downsample` level-0 pixels per mask pixel; `ink` marks rejected pen ink."""

    mask: np.ndarray  # (h, w) bool
    downsample: float
    ink: np.ndarray | None = None  # (h, w) bool
    level: int = -1  # the pyramid level it was computed on (-1: given by the user)

    def __post_init__(self) -> None:
        if self.mask.ndim != 2:
            raise InputError(f"a tissue mask is 2-D; got shape {self.mask.shape}")
        if not self.downsample > 0:
            raise InputError(f"a tissue mask's downsample must be positive; got {self.downsample}")

    def fractions(self, boxes: np.ndarray) -> np.ndarray:
        """Tissue fraction of each level-0 box (N, 4: y0, x0, y1, x1)."""
        return _box_fractions(self.mask, self.downsample, boxes)

    def ink_fractions(self, boxes: np.ndarray) -> np.ndarray:
        """Ink fraction of each level-0 box (zeros when ink was not looked for)."""
        if self.ink is None:
            return np.zeros(len(np.asarray(boxes).reshape(-1, 4)))
        return _box_fractions(self.ink, self.downsample, boxes)

    def labels(self) -> np.ndarray:
        """uint8 labels: 0 background, 1 tissue, 2 ink."""
        out = self.mask.astype(np.uint8) * TISSUE
        if self.ink is not None:
            out[self.ink] = INK
        return out

    def to_layer_data(self, mpp: float | None, name: str = "tissue") -> tuple[np.ndarray, dict[str, Any], str]:
        """An editable Labels layer over the slide (scale in µm when `mpp` is known, else level-0 px)."""
        step = self.downsample * (mpp or 1.0)
        offset = (self.downsample - 1.0) / 2.0 * (mpp or 1.0)  # mask pixel centre in the slide's frame
        kwargs = {
            "name": name,
            "scale": (step, step),
            "translate": (offset, offset),
            "opacity": 0.35,
            "metadata": {"tissue_downsample": self.downsample, "tissue_level": self.level},
        }
        return self.labels(), kwargs, "labels"

    @classmethod
    def from_labels(cls, labels: np.ndarray, downsample: float) -> TissueMask:
        """A mask from (edited) labels: tissue where the label is 1; ink (2) and 0 are excluded."""
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise InputError(f"a tissue layer is 2-D; got shape {labels.shape}")
        return cls(labels == TISSUE, float(downsample), labels == INK)


def tissue_level(slide: Slide, side: int = MASK_SIDE) -> int:
    """The coarsest level whose long side is still at least `side` px (the finest when none is)."""
    ok = [i for i, (h, w) in enumerate(slide.shapes) if max(h, w) >= side]
    return max(ok) if ok else 0


def detect_tissue(slide: Slide, level: int | None = None, reject_ink: bool = True) -> TissueMask:
    """Tissue without glass and (by default) without ink, computed on one low-resolution level."""
    from skimage.morphology import dilation, disk, opening
    from skimage.transform import downscale_local_mean

    level = tissue_level(slide) if level is None else level
    h, w = slide.shapes[level]
    stride = max(1, -(-max(h, w) // (4 * MASK_SIDE)))  # a pyramid without small levels: strided reads
    if stride == 1:  # through the slide's own reader: no dask graph (a Dask worker would ship it to its scheduler)
        image = slide.read_region(level, 0, 0, h, w)
    else:
        image = np.asarray(slide.levels[level][::stride, ::stride].compute(scheduler="synchronous"))
    block = max(1, round(max(image.shape[:2]) / MASK_SIDE))  # averaging also evens out JPEG noise
    if block > 1:
        image = downscale_local_mean(image, (block, block, 1)).round().astype(np.uint8)
    downsample = slide.downsamples[level] * stride * block
    tissue = tissue_mask(image)
    ink = None
    if reject_ink:
        ink = opening(ink_mask(image), disk(1)) & tissue  # real ink lies in bands, not in single pixels
        ink = dilation(ink, disk(INK_MARGIN))
        tissue = tissue & ~ink
    return TissueMask(tissue, float(downsample), ink, level)


def _box_fractions(mask: np.ndarray, downsample: float, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each level-0 box covered by `mask` (on a grid of `downsample` px), from its integral image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = mask.shape
    integral = np.zeros((h + 1, w + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1)
    scaled = boxes / downsample
    y0 = np.clip(np.floor(scaled[:, 0] + 0.5).astype(np.int64), 0, h)
    x0 = np.clip(np.floor(scaled[:, 1] + 0.5).astype(np.int64), 0, w)
    y1 = np.clip(np.floor(scaled[:, 2] + 0.5).astype(np.int64), 0, h)
    x1 = np.clip(np.floor(scaled[:, 3] + 0.5).astype(np.int64), 0, w)
    counts = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return counts / np.maximum((y1 - y0) * (x1 - x0), 1)
