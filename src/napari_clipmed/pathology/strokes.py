"""Geometry of procedural pen strokes: smooth centre lines and their distance fields.

A stroke is a centre line sampled every `STEP` pixels with a slowly varying half width. Its
distance field comes from an exact Euclidean feature transform of the rasterised centre line
(each pixel's nearest sample), then the exact distance to that sample. Many strokes of many
tiles are transformed in one call by stacking them as padded slots of one tall image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

STEP = 0.5  # arc-length step between centre-line samples, in work pixels
MAX_HALF_WIDTH = 0.11 * 1.12  # largest half width, as a fraction of the tile's short side


@dataclass(frozen=True)
class Stroke:
    """One stroke: centre-line samples in drawing order, in work pixels (pixel centres at i + 0.5)."""

    points: np.ndarray  # (K, 2) y, x
    radius: np.ndarray  # (K,) half width at each sample

    @property
    def length(self) -> float:
        return len(self.points) * STEP

    def inked_area(self, height: int, width: int) -> float:
        """Area the stroke covers inside the grid, ignoring its own overlaps and end caps."""
        p = self.points
        inside = (p[:, 0] >= 0) & (p[:, 0] < height) & (p[:, 1] >= 0) & (p[:, 1] < width)
        return float(np.sum(2.0 * self.radius[inside])) * STEP


def random_stroke(rng: np.random.Generator, height: int, width: int) -> Stroke:
    """A smooth stroke entering the grid from a random border point.

    Half width 6-11 % of the short side (a felt-tip marker is wide at 20x), length 0.9-1.6
    sides, heading turning smoothly (a linear drift plus three Fourier components).
    """
    side = min(height, width)
    radius0 = rng.uniform(0.06, 0.11) * side
    length = rng.uniform(0.9, 1.6) * side
    edge = rng.integers(4)
    t = rng.uniform(0.1, 0.9)
    start, normal = (
        ((0.0, t * width), math.pi / 2),  # top edge, heading down
        ((float(height), t * width), -math.pi / 2),  # bottom, heading up
        ((t * height, 0.0), 0.0),  # left, heading right
        ((t * height, float(width)), math.pi),  # right, heading left
    )[edge]
    heading0 = normal + rng.uniform(-0.9, 0.9)
    turn = rng.normal(0.0, 1.0)  # total turning over the stroke, radians
    amps = rng.normal(0.0, 1.0, 3) * np.array([0.35, 0.18, 0.1])
    phases = rng.uniform(0.0, 2 * math.pi, 3)
    wobble_phase, wobble_freq = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.5, 2.0)

    u = np.arange(0.0, length, STEP) / length
    k = np.arange(1, 4)[:, None]
    wiggle = (amps[:, None] * (np.sin(2 * math.pi * k * u + phases[:, None]) - np.sin(phases[:, None]))).sum(0)
    heading = heading0 + turn * u + wiggle
    steps = STEP * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    points = np.asarray(start) + np.cumsum(steps, axis=0) - steps[0]
    radius = radius0 * (1.0 + 0.12 * np.sin(2 * math.pi * wobble_freq * u + wobble_phase))
    return Stroke(points, radius)


class SlotStack:
    """Padded slots of one grid size stacked vertically, one stroke per slot.

    One Euclidean feature transform over the stack gives every pixel the nearest centre-line
    sample of its own slot: the padding is wider than any stroke reaches, so a sample in a
    neighbouring slot is never close enough to ink a pixel.
    """

    def __init__(self, height: int, width: int, pad: int) -> None:
        self.height, self.width, self.pad = height, width, pad
        self.slot_h, self.slot_w = height + 2 * pad, width + 2 * pad

    def fields(self, strokes: Sequence[Stroke]) -> tuple[np.ndarray, np.ndarray]:
        """Signed distance to each stroke's edge and the arc length of the nearest sample.

        Both (len(strokes), height, width) float32; pixels of a stroke that never enters its
        padded slot get +inf distance.
        """
        n = len(strokes)
        empty = np.iinfo(np.int64).max
        ids = np.full((n * self.slot_h, self.slot_w), empty, dtype=np.int64)
        offsets = np.cumsum([0] + [len(s.points) for s in strokes])
        for i, s in enumerate(strokes):
            iy = np.floor(s.points[:, 0] + self.pad).astype(np.int64)
            ix = np.floor(s.points[:, 1] + self.pad).astype(np.int64)
            ok = np.flatnonzero((iy >= 0) & (iy < self.slot_h) & (ix >= 0) & (ix < self.slot_w))
            np.minimum.at(ids, (iy[ok] + i * self.slot_h, ix[ok]), ok + offsets[i])
        shape = (n, self.height, self.width)
        if n == 0 or not np.any(ids != empty):
            return np.full(shape, np.inf, np.float32), np.zeros(shape, np.float32)
        _, (ny, nx) = ndi.distance_transform_edt(ids == empty, return_indices=True)
        crop = (slice(None), slice(self.pad, self.pad + self.height), slice(self.pad, self.pad + self.width))
        nearest = ids[ny.reshape(n, self.slot_h, -1)[crop], nx.reshape(n, self.slot_h, -1)[crop]]
        points = np.concatenate([s.points for s in strokes])
        radius = np.concatenate([s.radius for s in strokes])
        arclength = np.concatenate([np.arange(len(s.points)) * STEP for s in strokes])
        slot_of = np.repeat(np.arange(n), np.diff(offsets))
        # a slot without centre-line pixels borrows a neighbour's nearest sample: mark it far away
        foreign = slot_of[nearest] != np.arange(n)[:, None, None]
        rows = np.arange(self.height)[None, :, None] + 0.5
        cols = np.arange(self.width)[None, None, :] + 0.5
        centre = points[nearest]
        distance = np.hypot(rows - centre[..., 0], cols - centre[..., 1])
        signed = np.where(foreign, np.inf, distance - radius[nearest])
        return signed.astype(np.float32), arclength[nearest].astype(np.float32)


def smooth_noise(rngs: Sequence[np.random.Generator], shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Per-tile Gaussian-filtered white noise (N, h, w), each tile scaled to unit standard deviation."""
    white = np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs])
    field = ndi.gaussian_filter(white, (0, sigma, sigma), mode="wrap")
    return field / np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-6)
