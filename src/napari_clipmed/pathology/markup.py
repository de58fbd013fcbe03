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
from napari_clipmed.errors import InputError
from napari_clipmed.pathology.ink import INK_COLOURS
from napari_clipmed.pathology.params import MAX_SEVERITY, check_severity
from napari_clipmed.pathology.strokes import MAX_HALF_WIDTH, SlotStack, candidate_strokes, smooth_noise

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
WORK_SIDE = 40  # short side of the grid the ink geometry is computed on
MAX_STROKES = 16  # candidate strokes per tile
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


def seed_sequences(seed: int | np.random.SeedSequence | None, n: int, first: int = 0) -> list[np.random.SeedSequence]:
    """Seeds of images first..first+n-1 of a batch: child i of `seed` (as SeedSequence.spawn would give).

    Image i gets the same ink alone, in a batch, or in any chunk of it; `seed` itself is not
    changed (unlike `SeedSequence.spawn`), so passing the same SeedSequence twice repeats the ink.
    """
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return [
        np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, i), pool_size=root.pool_size)
        for i in range(first, first + n)
    ]


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

    # strokes per tile: a first guess from their summed area, then one more per round where
    # overlaps left too little ink; all candidates are drawn up front from the tile's generator
    candidates = [candidate_strokes(r, hw, ww, MAX_STROKES) for r in rngs]
    used = np.array([min(MAX_STROKES, 1 + int(np.searchsorted(np.cumsum(a), 1.3 * need))) for _, a in candidates])
    owner: list[int] = []
    signed_parts, key_parts = [], []
    travel = np.zeros(n)  # pen travel so far, per tile
    first = np.full((n, hw, ww), np.inf, dtype=np.float32)
    todo = [(i, j) for i in range(n) for j in range(used[i])]
    for _ in range(MAX_ROUNDS):
        if not todo:
            break
        strokes = [candidates[i][0][j] for i, j in todo]
        signed, arclength = stack.fields(strokes)
        owners = np.array([i for i, _ in todo])
        signed += 0.3 * edge * grain[owners]  # ragged edge
        for k, (i, _) in enumerate(todo):
            arclength[k] += np.float32(travel[i])
            np.minimum(first[i], np.where(signed[k] <= 0, arclength[k], np.inf), out=first[i])
            travel[i] += strokes[k].length + 1.0
        owner.extend(owners.tolist())
        signed_parts.append(signed)
        key_parts.append(arclength)
        short = [i for i in sorted(set(owners.tolist())) if np.count_nonzero(np.isfinite(first[i])) < need]
        todo = [(i, int(used[i])) for i in short if used[i] < MAX_STROKES]
        used[[i for i, _ in todo]] += 1

    owner_arr = np.asarray(owner, dtype=np.int64)
    order = np.argsort(owner_arr, kind="stable")
    signed = np.concatenate(signed_parts)[order]
    keys = np.concatenate(key_parts)[order]
    starts = np.searchsorted(owner_arr[order], np.arange(n))  # every tile has at least one stroke
    cuts = np.array([_cut(first[i].ravel(), int(round(targets[i] * hw * ww))) for i in range(n)], np.float32)
    across = np.clip(0.5 - signed / edge, 0.0, 1.0)
    along = np.clip(0.5 + (cuts[owner_arr[order]][:, None, None] - keys) / edge, 0.0, 1.0)
    m = np.minimum(across, along)
    density = np.maximum.reduceat(m, starts, axis=0)
    optical = np.add.reduceat(m, starts, axis=0)
    texture = np.clip(1.0 + 0.22 * mottle + 0.12 * grain, 0.3, 1.6)
    optical *= texture * strength[:, None, None]
    return _InkWork(optical[:, None] * directions[:, :, None, None], density, colours, targets)


# --------------------------------------------------------------------------- public


def _bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
    """(out, in) weights of bilinear resizing with half-pixel centres (F.interpolate, align_corners=False)."""
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    weights = np.zeros((out_size, in_size))
    np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(out_size), hi), frac)
    return weights


def _upsample(work: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear upsampling of (N, C, h, w) work-grid fields to the tile size, as two matrix products."""
    if work.shape[-2:] == (height, width):
        return work
    rows = torch.as_tensor(_bilinear_matrix(height, work.shape[-2]), dtype=work.dtype, device=work.device)
    cols = torch.as_tensor(_bilinear_matrix(width, work.shape[-1]).T, dtype=work.dtype, device=work.device)
    return torch.matmul(rows, torch.matmul(work, cols))


def ink_batch(
    height: int,
    width: int,
    severity: float,
    seeds: Sequence[np.random.SeedSequence],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Transmittance (N, 3, H, W) and density (N, 1, H, W) of the ink drawn from each seed."""
    work = _ink_work(height, width, severity, seeds)
    return _transmittance(work, height, width, device, dtype), _density(work, height, width)


def _transmittance(
    work: _InkWork, height: int, width: int, device: torch.device | str, dtype: torch.dtype
) -> torch.Tensor:
    """exp(-optical density) on the work grid, upsampled to the tile."""
    od = torch.from_numpy(work.optical_density).to(device=device, dtype=dtype)
    return _upsample(torch.exp(-od), height, width).clamp_(0.0, 1.0)


def _density(work: _InkWork, height: int, width: int) -> torch.Tensor:
    return _upsample(torch.from_numpy(work.density[:, None]), height, width).clamp_(0.0, 1.0)


def apply_markup(
    x: torch.Tensor, severity: float, seeds: Sequence[np.random.SeedSequence], top: float = 1.0
) -> torch.Tensor:
    """Ink a batch (N, 3, H, W) of images in [0, top] in place; seeds[i] draws image i's strokes."""
    _, _, h, w = x.shape
    work = _ink_work(h, w, severity, seeds)
    return x.mul_(_transmittance(work, h, w, x.device, x.dtype)).clamp_(0.0, top)


def ink_layer(
    height: int, width: int, severity: float, seed: int | np.random.SeedSequence | None = None, index: int = 0
) -> InkLayer:
    """The ink `corrupt(images, "markup", severity, seed)` puts on image `index` of a batch of this size."""
    s = check_severity(severity)
    if min(height, width) < MIN_SIDE:
        raise InputError(f"markup needs images of at least {MIN_SIDE} x {MIN_SIDE} px; got {height} x {width}")
    work = _ink_work(height, width, s, seed_sequences(seed, 1, first=index))
    transmittance, density = _transmittance(work, height, width, "cpu", torch.float32), _density(work, height, width)
    return InkLayer(
        transmittance=transmittance[0].permute(1, 2, 0).numpy(),
        density=density[0, 0].numpy(),
        colour=work.colours[0],
        target=float(work.targets[0]),
    )
