"""Per-tile image-quality measures, computed in batches on tensors (CPU or GPU).

Each measure is one number per tile, chosen so that it does not depend on how much or what
kind of tissue the tile shows, only on how it was imaged:

- ``focus``: energy of the Laplacian over energy of the gradient of the (Hann-windowed)
  luminance, from the same FFT as resolution. The ratio is about the squared mean spatial
  frequency of the edges: blur lowers it, contrast does not; blocky pixelation raises it.
- ``resolution``: share of the spectral energy (Hann-windowed FFT of the luminance) at spatial
  frequencies above `HIGH_BAND` cycles/pixel. A tile scanned at a lower resolution and
  interpolated has too little; one enlarged by repeating pixels (nearest neighbour, blocky)
  has too much, from its block edges, so the gate bounds it on both sides.
- ``ink``: fraction of pixels whose optical-density colour is a marker ink's, by the ink colour
  model of `markup.py` (green, blue, black).
- ``over_exposed`` / ``under_exposed``: fraction of pixels with luminance >= `OVER` or <= `UNDER`.
- ``saturation``: mean HSV saturation (washed-out or grey tiles have little).
- ``tissue``: fraction of pixels whose sqrt(HSV saturation) exceeds `TISSUE_LEVEL`, the rule of
  `tiles.tissue_mask` with a fixed threshold instead of one Otsu threshold per image.

Images are converted as the encoder converts them (`models.images`): grayscale repeated to RGB,
alpha dropped, 16-bit scaled by 1/65535; each conversion is reported in `QualityMeasures.notes`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from napari_clipmed.errors import InputError
from napari_clipmed.pathology.markup import INK_COLOURS
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    import pandas as pd

MEASURES: tuple[str, ...] = ("focus", "resolution", "ink", "over_exposed", "under_exposed", "saturation", "tissue")
MIN_SIDE = 16  # the spectrum and the Laplacian need a few pixels

LUMA = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray weights
HIGH_BAND = 0.35  # cycles/pixel: the top of the spectrum (Nyquist is 0.5 along an axis)
LOW_CUT = 0.02  # cycles/pixel: below this, energy is illumination and the window, not detail
OVER, UNDER = 0.98, 0.10  # luminance of over- and under-exposed pixels
TISSUE_LEVEL = 0.30  # sqrt(HSV saturation) above which a pixel is tissue (glass is grey)

# Ink: a pixel is ink when its optical-density direction lies within the colour's angle of one of
# markup.py's ink directions and it absorbs enough light; black ink must also be dark in every
# channel, since dense haematoxylin is nearly neutral too (measured on the shipped H&E samples).
INK_MIN_DENSITY = 0.3  # |OD|: lighter pixels are glass
INK_COS: dict[str, float] = {"green": 0.985, "blue": 0.99, "black": 0.995}
BLACK_MIN_OD = 1.0  # every channel's OD above this (pixel darker than about 37 % in R, G and B)


@dataclass(frozen=True)
class QualityMeasures:
    """One value per tile for each measure in `MEASURES`, and the input conversions applied."""

    values: dict[str, np.ndarray]
    notes: tuple[str, ...] = ()
    ids: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(next(iter(self.values.values()))) if self.values else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def to_frame(self) -> pd.DataFrame:
        """One row per tile (id first when known), one column per measure."""
        import pandas as pd

        frame = pd.DataFrame({name: self.values[name] for name in MEASURES if name in self.values})
        if self.ids:
            frame.insert(0, "id", list(self.ids))
        return frame


# --------------------------------------------------------------------------- measures on tensors


def _weighted_channels(x: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """(N, 1, H, W) sum of x's channels times `weights` (plain multiply-adds: faster than a 1 x 1 conv on CPU)."""
    out = x[:, 0:1] * float(weights[0])
    for c in range(1, x.shape[1]):
        out.add_(x[:, c : c + 1], alpha=float(weights[c]))
    return out


def luminance(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luminance of RGB (N, 3, H, W) in [0, 1], as skimage.color.rgb2gray."""
    return _weighted_channels(x, LUMA)


@functools.lru_cache(maxsize=8)
def _spectral_weights(height: int, width: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """(F, 4) weights of the rfft2 power: [above HIGH_BAND, above LOW_CUT, |Laplacian|^2, |gradient|^2].

    The Laplacian is skimage.filters.laplace's 3 x 3 kernel (transfer 4 - 2 cos 2pi fy - 2 cos 2pi fx),
    the gradient np.gradient's central differences (|transfer|^2 = sin^2 2pi fx + sin^2 2pi fy).
    rfft2 keeps half of the columns; the others mirror columns 1 .. ceil(w / 2) - 1, so those count twice.
    """
    fy = torch.fft.fftfreq(height, dtype=torch.float64).view(-1, 1)
    fx = torch.fft.rfftfreq(width, dtype=torch.float64).view(1, -1)
    r = torch.sqrt(fy * fy + fx * fx)
    lap = (4.0 - 2.0 * torch.cos(2 * torch.pi * fy) - 2.0 * torch.cos(2 * torch.pi * fx)).square()
    grad = torch.sin(2 * torch.pi * fx).square() + torch.sin(2 * torch.pi * fy).square()
    twice = torch.ones(fx.shape[1], dtype=torch.float64)
    twice[1 : (width + 1) // 2] = 2.0
    columns = [(r > HIGH_BAND).double(), (r > LOW_CUT).double(), lap, grad]
    weights = torch.stack([(c * twice).expand(height, -1).flatten() for c in columns], dim=1)
    return weights.to(device=device, dtype=dtype)


def windowed_power(gray: torch.Tensor) -> torch.Tensor:
    """(N, H * (W // 2 + 1)) rfft2 power of each tile's luminance, mean removed, Hann-windowed."""
    _, _, h, w = gray.shape
    wy = torch.hann_window(h, periodic=False, dtype=gray.dtype, device=gray.device).view(-1, 1)
    wx = torch.hann_window(w, periodic=False, dtype=gray.dtype, device=gray.device).view(1, -1)
    centred = gray[:, 0] - gray.mean(dim=(1, 2, 3)).view(-1, 1, 1)
    return torch.view_as_real(torch.fft.rfft2(centred * (wy * wx))).square().sum(dim=-1).flatten(1)


def spectral_measures(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(focus, resolution), each (N,), from one FFT of the windowed luminance.

    - focus: energy of the Laplacian over energy of the gradient, by Parseval the same as
      computing both filters on the windowed tile (edges wrapped, where the window is zero);
    - resolution: share of the energy above `HIGH_BAND` among frequencies above `LOW_CUT`.
    """
    _, _, h, w = gray.shape
    sums = windowed_power(gray) @ _spectral_weights(h, w, str(gray.device), gray.dtype)  # (N, 4) in one product
    tiny = torch.finfo(gray.dtype).tiny
    return sums[:, 2] / sums[:, 3].clamp(min=tiny), sums[:, 0] / sums[:, 1].clamp(min=tiny)


def focus(gray: torch.Tensor) -> torch.Tensor:
    """(N,) Laplacian energy over gradient energy of the windowed luminance (see `spectral_measures`)."""
    return spectral_measures(gray)[0]


def high_frequency_share(gray: torch.Tensor) -> torch.Tensor:
    """(N,) share of the Hann-windowed power spectrum above `HIGH_BAND` among frequencies above `LOW_CUT`."""
    return spectral_measures(gray)[1]


def hsv_saturation(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) HSV saturation (max - min) / max, 0 where black (skimage.color.rgb2hsv's S)."""
    hi = x.amax(dim=1, keepdim=True)
    lo = x.amin(dim=1, keepdim=True)
    return torch.where(hi > 0, (hi - lo) / hi.clamp(min=1e-12), torch.zeros_like(hi))


def ink_directions(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(K, 3) unit optical-density directions of markup.py's ink colours, in `INK_COLOURS` order."""
    d = torch.tensor(list(INK_COLOURS.values()), dtype=dtype, device=device)
    return d / d.norm(dim=1, keepdim=True)


def ink_mask(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: pixels coloured by marker ink (see the module docstring)."""
    od = -torch.log(x.clamp(min=1.0 / 255.0))  # (N, 3, H, W), Beer-Lambert as markup.py
    norm = od.square().sum(dim=1, keepdim=True).sqrt_()
    ink = torch.zeros_like(norm, dtype=torch.bool)
    for colour, direction in zip(INK_COLOURS, ink_directions(torch.float64).tolist()):
        close = _weighted_channels(od, direction) > norm * INK_COS[colour]  # cos(od, ink) above the limit
        if colour == "black":
            close &= od.amin(dim=1, keepdim=True) > BLACK_MIN_OD
        ink |= close
    return (ink & (norm > INK_MIN_DENSITY))[:, 0]


def bin2(x: torch.Tensor) -> torch.Tensor:
    """The tile binned 2 x 2 (mean), where the colour measures are taken: they are fractions, not detail."""
    if min(x.shape[-2:]) < 2 * MIN_SIDE:
        return x
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    return (x[..., 0:h:2, 0:w:2] + x[..., 1:h:2, 0:w:2] + x[..., 0:h:2, 1:w:2] + x[..., 1:h:2, 1:w:2]) * 0.25


def measure_tensor(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every measure of a batch (N, 3, H, W) of RGB in [0, 1] (float, any device): name -> (N,).

    Focus and resolution use the full-resolution luminance; exposure, saturation and tissue the
    tile binned 2 x 2, ink binned 4 x 4 (strokes are broad): a fraction of the work for the same fractions.
    """
    sharpness, resolution = spectral_measures(luminance(x))
    small = bin2(x)
    sat = hsv_saturation(small)
    small_gray = luminance(small)

    def frac(mask: torch.Tensor) -> torch.Tensor:
        return mask.to(x.dtype).mean(dim=tuple(range(1, mask.dim())))

    return {
        "focus": sharpness,
        "resolution": resolution,
        "ink": frac(ink_mask(bin2(small))),
        "over_exposed": frac(small_gray >= OVER),
        "under_exposed": frac(small_gray <= UNDER),
        "saturation": sat.mean(dim=(1, 2, 3)),
        "tissue": frac(sat.sqrt() > TISSUE_LEVEL),
    }


# --------------------------------------------------------------------------- arrays in, measures out


def conversion_notes(items: Sequence[np.ndarray]) -> tuple[str, ...]:
    """What converting these H x W x C arrays as the encoder does changes, in words (empty if nothing)."""
    notes = []
    grey = sum(1 for a in items if a.shape[-1] == 1)
    if grey:
        notes.append(f"{grey} grayscale tile(s) repeated to RGB as the encoder does: saturation, tissue and ink "
                     "cannot be measured on them (saturation 0, no tissue, no ink)")
    wide = sum(1 for a in items if a.dtype == np.uint16)
    if wide:
        notes.append(f"{wide} 16-bit tile(s) scaled by 1/65535 as the encoder does")
    other = sorted({a.dtype.str for a in items if a.dtype not in (np.uint8, np.uint16) and a.dtype.kind != "f"})
    if other:
        notes.append(f"tiles of dtype {', '.join(other)} scaled by their dtype's maximum as the encoder does")
    return tuple(notes)


def _prepare(images: object) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Validated H x W x C views of `images` (encoder rules) plus the conversion notes."""
    from napari_clipmed.models.images import as_image_list, to_hwc

    raw = as_image_list(images)  # type: ignore[arg-type]
    if not raw:
        raise InputError("no tiles to measure (the batch is empty)")
    rgba = sum(1 for a in raw if np.ndim(a) == 3 and 4 in (np.shape(a)[-1], np.shape(a)[0]))
    items = [to_hwc(a, i) for i, a in enumerate(raw)]
    small = [i for i, a in enumerate(items) if min(a.shape[:2]) < MIN_SIDE]
    if small:
        a = items[small[0]]
        raise InputError(f"tile {small[0]} is {a.shape[0]} x {a.shape[1]} px: quality measures need at least "
                         f"{MIN_SIDE} x {MIN_SIDE} px ({len(small)} tile(s) too small)")
    notes = conversion_notes(items)
    if rgba:
        notes += (f"alpha dropped from {rgba} RGBA tile(s) as the encoder does",)
    return items, notes


def iter_measure(
    images: object,
    *,
    batch_size: int = 64,
    device: torch.device | str | None = None,
    ids: Sequence[str] | None = None,
) -> ProgressGenerator[QualityMeasures]:
    """Measure every tile (arrays of any size; same-sized tiles share a batch); yields per batch."""
    from napari_clipmed.models.device import pick_device
    from napari_clipmed.models.images import group_by_shape, stack_to_tensor

    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    items, notes = _prepare(images)
    if ids is not None and len(ids) != len(items):
        raise InputError(f"{len(items)} tiles but {len(ids)} ids")
    dev = pick_device(device)
    out = {name: np.empty(len(items), dtype=np.float64) for name in MEASURES}
    done = 0
    yield Progress(0, len(items), f"measuring quality of {len(items)} tiles")
    with torch.inference_mode():
        for members in group_by_shape(items).values():
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                values = measure_tensor(stack_to_tensor([items[i] for i in chunk], dev).contiguous())
                for name, v in values.items():
                    out[name][chunk] = v.double().cpu().numpy()
                done += len(chunk)
                yield Progress(done, len(items), "measuring quality")
    return QualityMeasures(out, notes, tuple(ids) if ids is not None else ())


def measure(images: object, **kwargs: object) -> QualityMeasures:
    """Plain-call form of `iter_measure`."""
    return run_generator(iter_measure(images, **kwargs))  # type: ignore[arg-type]
