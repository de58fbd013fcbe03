"""Procedural marker-pen ink ("markup") on H&E tiles: seeded, smooth, translucent strokes.

Pathologists circle regions on the glass with felt-tip markers; scanned, the ink lies over the
tissue as broad translucent bands of green, blue or black with soft, slightly ragged edges.
Each stroke here is a smooth curve (a heading that turns by a few random Fourier components)
entering from the tile border, with a slowly varying width. Ink absorbs light: the tile is
multiplied by exp(-OD), an optical density along the ink's colour direction (Beer-Lambert), so
tissue texture shows through and overlapping strokes darken, as with real ink.

Coverage is controlled exactly: every pixel inside a stroke gets a key, the arc length at which
the pen reaches it; keeping the pixels whose key is below a quantile draws the strokes up to
the length that covers the target fraction. The same seed gives the same strokes at every
severity, only drawn further, so ink grows smoothly and monotonically with severity.

The geometry is computed on a work grid whose short side is about `WORK_SIDE` pixels (strokes
are wide and smooth) and upsampled bilinearly to the tile, which keeps a batch fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from napari_clipmed.errors import InputError
from napari_clipmed.pathology.params import MAX_SEVERITY, check_severity
from napari_clipmed.pathology.strokes import MAX_HALF_WIDTH, SlotStack, Stroke, random_stroke, smooth_noise

# Ink colour as an optical-density direction (absorbance per RGB channel, strongest = 1).
# green: measured on the CMU-1 SVS (green margin ink at the tissue edge): -log(pixel / glass)
#        over the inked pixels has the ratio R:G:B = 1 : 0.52 : 0.41 at both median and darkest ink.
# blue / black: typical blue and black marker ink on glass, about (70, 100, 180) and (45, 45, 55)
#        in 8-bit RGB at full density; no sample of these is shipped, so they are estimates.
INK_COLOURS: dict[str, tuple[float, float, float]] = {
    "green": (1.00, 0.52, 0.41),
    "blue": (1.00, 0.71, 0.25),
    "black": (1.00, 1.00, 0.88),
}
INK_PROBABILITIES: tuple[float, float, float] = (0.45, 0.35, 0.20)  # green, blue, black

# Fraction of the tile covered by ink (density >= 0.5) at severities 1..4; each seed draws its
# own target inside the middle 80 % of its severity's range.
COVERAGE_RANGES: tuple[tuple[float, float], ...] = (
    (0.03, 0.07),
    (0.07, 0.13),
    (0.16, 0.24),
    (0.30, 0.40),
)
MIN_SIDE = 16  # smallest tile side markup accepts
WORK_SIDE = 48  # short side of the grid the ink geometry is computed on
MAX_STROKES = 24  # strokes of the first guess, at most
MAX_ROUNDS = 8  # rounds adding one stroke to tiles whose strokes overlap too much


@dataclass(frozen=True)
class InkLayer:
    """The ink of one tile: multiply a [0, 1] RGB image by `transmittance` to ink it."""

    transmittance: np.ndarray  # (H, W, 3) float32 in (0, 1]
    density: np.ndarray  # (H, W) float32 in [0, 1]; 1 inside a stroke, soft at its edge
    colour: str
    target: float  # the coverage this seed aims at for this severity

    @property
    def coverage(self) -> float:
        """Fraction of pixels inside a stroke (density >= 0.5)."""
        return float(np.mean(self.density >= 0.5))


def coverage_range(severity: float) -> tuple[float, float]:
    """Documented ink coverage (min, max) at `severity`, linear between levels, (0, 0) at 0."""
    s = check_severity(severity)
    levels = ((0.0, 0.0), *COVERAGE_RANGES)
    lo = min(int(math.floor(s)), MAX_SEVERITY - 1)
    frac = s - lo
    a, b = levels[lo], levels[lo + 1]
    return (a[0] + frac * (b[0] - a[0]), a[1] + frac * (b[1] - a[1]))


def seed_sequences(seed: int | np.random.SeedSequence | None, n: int) -> list[np.random.SeedSequence]:
    """One independent seed per image of a batch; image i gets the same ink alone or in a batch."""
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return root.spawn(n)


# --------------------------------------------------------------------------- drawing


def _cut(first_keys: np.ndarray, count: int) -> float:
    """Pen travel at which `count` pixels are inked (-inf for none, inf if the strokes fall short)."""
    if count <= 0:
        return -math.inf
    finite = first_keys[np.isfinite(first_keys)]
    if count > finite.size:
        return math.inf
    return float(np.partition(finite, count - 1)[count - 1])


def _work_shape(height: int, width: int) -> tuple[int, int]:
    scale = max(1.0, min(height, width) / WORK_SIDE)
    return max(1, round(height / scale)), max(1, round(width / scale))


@dataclass(frozen=True)
class _InkWork:
    """The ink of a batch on the work grid."""

    optical_density: np.ndarray  # (N, 3, h, w)
    density: np.ndarray  # (N, h, w)
    colours: list[str]
    targets: np.ndarray  # (N,)


def _ink_work(height: int, width: int, severity: float, seeds: Sequence[np.random.SeedSequence]) -> _InkWork:
    """Each tile's strokes, drawn up to the pen travel that inks its coverage target.

    Every pixel inside a stroke is keyed by the pen travel (arc length from the first stroke's
    start) at its nearest centre sample; the target's quantile of these keys is where the pen
    stops. Strokes are added until the largest coverage of any severity is reachable, so the
    set of strokes does not depend on the severity and ink grows monotonically with it.
    """
    n = len(seeds)
    hw, ww = _work_shape(height, width)
    side = min(hw, ww)
    edge = max(1.0, 0.025 * side)  # soft-edge width
    stack = SlotStack(hw, ww, pad=int(math.ceil(MAX_HALF_WIDTH * side + 1.5 * edge)) + 1)
    lo, hi = coverage_range(severity)
    need = (COVERAGE_RANGES[-1][1] + 0.01) * hw * ww
    rngs = [np.random.default_rng(s) for s in seeds]
    targets = np.array([lo + (0.1 + 0.8 * r.random()) * (hi - lo) for r in rngs])
    colours = [str(r.choice(list(INK_COLOURS), p=INK_PROBABILITIES)) for r in rngs]
    directions = np.stack(
        [np.clip(np.array(INK_COLOURS[c]) * (1 + r.normal(0.0, 0.04, 3)), 0.05, 1.2) for c, r in zip(colours, rngs)]
    ).astype(np.float32)
    strength = np.array([r.uniform(0.7, 1.3) for r in rngs], dtype=np.float32)  # OD of the strongest channel
    texture_rngs = [np.random.default_rng(r.integers(2**63)) for r in rngs]
    grain = smooth_noise(texture_rngs, (hw, ww), 0.8)
    mottle = smooth_noise(texture_rngs, (hw, ww), max(1.0, 0.06 * side))

    # strokes per tile: first a guess from their summed area, then more where overlaps fell short
    owner: list[int] = []
    signed_parts, key_parts = [], []
    done = np.zeros(n)  # pen travel so far, per tile
    first = np.full((n, hw, ww), np.inf, dtype=np.float32)
    todo = {i: _initial_strokes(rngs[i], hw, ww, 1.3 * need) for i in range(n)}
    for _ in range(MAX_ROUNDS):
        batch = [(i, s) for i, ss in todo.items() for s in ss]
        if not batch:
            break
        signed, arclength = stack.fields([s for _, s in batch])
        signed += 0.3 * edge * grain[[i for i, _ in batch]]  # ragged edge
        for k, (i, s) in enumerate(batch):
            owner.append(i)
            key = arclength[k] + np.float32(done[i])
            np.minimum(first[i], np.where(signed[k] <= 0, key, np.inf), out=first[i])
            arclength[k] = key
            done[i] += s.length + 1.0
        signed_parts.append(signed)
        key_parts.append(arclength)
        short = [i for i in todo if np.count_nonzero(np.isfinite(first[i])) < need]
        todo = {i: [random_stroke(rngs[i], hw, ww)] for i in short}

    signed = np.concatenate(signed_parts) if signed_parts else np.zeros((0, hw, ww), np.float32)
    keys = np.concatenate(key_parts) if key_parts else np.zeros((0, hw, ww), np.float32)
    owner_arr = np.asarray(owner, dtype=np.int64)
    cuts = np.array([_cut(first[i].ravel(), int(round(targets[i] * hw * ww))) for i in range(n)], np.float32)
    across = np.clip(0.5 - signed / edge, 0.0, 1.0)
    along = np.clip(0.5 + (cuts[owner_arr][:, None, None] - keys) / edge, 0.0, 1.0)
    m = np.minimum(across, along)
    optical = np.zeros((n, hw, ww), np.float32)
    density = np.zeros((n, hw, ww), np.float32)
    np.add.at(optical, owner_arr, m)
    np.maximum.at(density, owner_arr, m)
    texture = np.clip(1.0 + 0.22 * mottle + 0.12 * grain, 0.3, 1.6)
    optical *= texture * strength[:, None, None]
    return _InkWork(optical[:, None] * directions[:, :, None, None], density, colours, targets)


def _initial_strokes(rng: np.random.Generator, height: int, width: int, area: float) -> list[Stroke]:
    """Strokes until their summed area inside the grid (overlaps ignored) reaches `area`."""
    strokes: list[Stroke] = []
    inked = 0.0
    while inked < area and len(strokes) < MAX_STROKES:
        strokes.append(random_stroke(rng, height, width))
        inked += strokes[-1].inked_area(height, width)
    return strokes


# --------------------------------------------------------------------------- public


def _upsample(work: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling of (N, C, h, w) work-grid fields to the tile size."""
    if work.shape[-2:] == (height, width):
        return work
    return F.interpolate(work, size=(height, width), mode="bilinear", align_corners=False)


def ink_batch(
    height: int,
    width: int,
    severity: float,
    seeds: Sequence[np.random.SeedSequence],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transmittance (N, 3, H, W) and density (N, 1, H, W) of the ink drawn from each seed."""
    return _tensors(_ink_work(height, width, severity, seeds), height, width, device, dtype)


def _tensors(
    work: _InkWork, height: int, width: int, device: torch.device | str, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    od = torch.from_numpy(work.optical_density).to(device=device, dtype=dtype)
    density = torch.from_numpy(work.density[:, None]).to(device=device, dtype=dtype)
    return torch.exp(-_upsample(od, height, width)), _upsample(density, height, width).clamp_(0.0, 1.0)


def apply_markup(x: torch.Tensor, severity: float, seeds: Sequence[np.random.SeedSequence]) -> torch.Tensor:
    """Ink a batch (N, 3, H, W) of [0, 1] images; seeds[i] draws image i's strokes."""
    _, _, h, w = x.shape
    transmittance, _ = ink_batch(h, w, severity, seeds, device=x.device, dtype=x.dtype)
    return (x * transmittance).clamp_(0.0, 1.0)


def ink_layer(height: int, width: int, severity: float, seed: int | np.random.SeedSequence | None = None) -> InkLayer:
    """The ink `corrupt(image, "markup", severity, seed)` puts on a single image of this size."""
    s = check_severity(severity)
    if min(height, width) < MIN_SIDE:
        raise InputError(f"markup needs images of at least {MIN_SIDE} x {MIN_SIDE} px; got {height} x {width}")
    work = _ink_work(height, width, s, seed_sequences(seed, 1))
    transmittance, density = _tensors(work, height, width, "cpu", torch.float32)
    return InkLayer(
        transmittance=transmittance[0].permute(1, 2, 0).numpy(),
        density=density[0, 0].numpy(),
        colour=work.colours[0],
        target=float(work.targets[0]),
    )
