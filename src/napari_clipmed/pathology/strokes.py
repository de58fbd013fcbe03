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
HALF_WIDTH = (0.07, 0.13)  # range of a stroke's half width, as a fraction of the tile's short side
WOBBLE = 0.12  # relative variation of the half width along a stroke
MAX_HALF_WIDTH = HALF_WIDTH[1] * (1 + WOBBLE)
LENGTH = (0.9, 1.6)  # range of a stroke's length, in tile short sides


@dataclass(frozen=True)
class Stroke:
    """One stroke: centre-line samples in drawing order, in work pixels (pixel centres at i + 0.5)."""

    points: np.ndarray  # (K, 2) y, x
    radius: np.ndarray  # (K,) half width at each sample

    @property
    def length(self) -> float:
        return len(self.points) * STEP


def candidate_strokes(rng: np.random.Generator, height: int, width: int, count: int) -> tuple[list[Stroke], np.ndarray]:
    """`count` smooth strokes entering the grid from random border points, and their inked areas.

    Half width 7-13 % of the short side (a felt-tip marker is wide at 20x), length 0.9-1.6
    sides, heading turning smoothly (a linear drift plus three Fourier components), width
    wobbling by +-12 %. The area is the part inside the grid, overlaps and end caps ignored.
    All parameters are drawn at once, so the strokes depend only on the generator's state.
    """
    side = min(height, width)
    radius0 = rng.uniform(*HALF_WIDTH, count) * side
    length = rng.uniform(*LENGTH, count) * side
    edge = rng.integers(0, 4, count)
    t = rng.uniform(0.1, 0.9, count)
    heading0 = np.array([math.pi / 2, -math.pi / 2, 0.0, math.pi])[edge] + rng.uniform(-0.9, 0.9, count)
    start_y = np.choose(edge, [np.zeros(count), np.full(count, float(height)), t * height, t * height])
    start_x = np.choose(edge, [t * width, t * width, np.zeros(count), np.full(count, float(width))])
    turn = rng.normal(0.0, 1.0, count)  # total turning over the stroke, radians
    amps = rng.normal(0.0, 1.0, (count, 3)) * np.array([0.35, 0.18, 0.1])
    phases = rng.uniform(0.0, 2 * math.pi, (count, 3))
    wobble_phase = rng.uniform(0.0, 2 * math.pi, count)
    wobble_freq = rng.uniform(0.5, 2.0, count)

    samples = np.ceil(length / STEP).astype(np.int64)
    s = np.arange(int(samples.max()))[None, :] * STEP  # (1, L)
    u = s / length[:, None]  # (count, L), > 1 past each stroke's end (trimmed below)
    k = np.arange(1, 4)[None, :, None]
    phase = phases[:, :, None]
    wiggle = (amps[:, :, None] * (np.sin(2 * math.pi * k * u[:, None] + phase) - np.sin(phase))).sum(1)
    heading = heading0[:, None] + turn[:, None] * u + wiggle
    steps = STEP * np.stack([np.sin(heading), np.cos(heading)], axis=-1)  # (count, L, 2)
    points = np.cumsum(steps, axis=1) - steps[:, :1] + np.stack([start_y, start_x], axis=-1)[:, None]
    radius = radius0[:, None] * (1.0 + WOBBLE * np.sin(2 * math.pi * wobble_freq[:, None] * u + wobble_phase[:, None]))
    valid = np.arange(points.shape[1])[None, :] < samples[:, None]
    y, x = points[..., 0], points[..., 1]
    inside = valid & (y >= 0) & (y < height) & (x >= 0) & (x < width)
    area = (2.0 * radius * inside).sum(axis=1) * STEP
    strokes = [Stroke(points[i, : samples[i]], radius[i, : samples[i]]) for i in range(count)]
    return strokes, area


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
        shape = (n, self.height, self.width)
        if n == 0:
            return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        points = np.concatenate([s.points for s in strokes])
        radius = np.concatenate([s.radius for s in strokes])
        sizes = np.array([len(s.points) for s in strokes])
        slot_of = np.repeat(np.arange(n), sizes)
        arclength = (np.arange(len(points)) - np.repeat(np.cumsum(sizes) - sizes, sizes)) * STEP
        iy = np.floor(points[:, 0] + self.pad).astype(np.int64)
        ix = np.floor(points[:, 1] + self.pad).astype(np.int64)
        ok = np.flatnonzero((iy >= 0) & (iy < self.slot_h) & (ix >= 0) & (ix < self.slot_w))
        empty = np.iinfo(np.int64).max
        ids = np.full((n * self.slot_h, self.slot_w), empty, dtype=np.int64)
        if ok.size == 0:
            return np.full(shape, np.inf, np.float32), np.zeros(shape, np.float32)
        flat = (iy[ok] + slot_of[ok] * self.slot_h) * self.slot_w + ix[ok]
        cells, first = np.unique(flat, return_index=True)  # earliest sample in each centre-line pixel
        ids.flat[cells] = ok[first]
        _, (ny, nx) = ndi.distance_transform_edt(ids == empty, return_indices=True)
        crop = (slice(None), slice(self.pad, self.pad + self.height), slice(self.pad, self.pad + self.width))
        nearest = ids[ny.reshape(n, self.slot_h, -1)[crop], nx.reshape(n, self.slot_h, -1)[crop]]
        # a slot without centre-line pixels borrows a neighbour's nearest sample: mark it far away
        foreign = slot_of[nearest] != np.arange(n)[:, None, None]
        centre = points[nearest]
        dy = (np.arange(self.height)[None, :, None] + 0.5) - centre[..., 0]
        dx = (np.arange(self.width)[None, None, :] + 0.5) - centre[..., 1]
        signed = np.sqrt(dy * dy + dx * dx) - radius[nearest]
        signed[foreign] = np.inf
        return signed.astype(np.float32), arclength[nearest].astype(np.float32)


def smooth_noise(rngs: Sequence[np.random.Generator], shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Per-tile Gaussian-filtered white noise (N, h, w), each tile scaled to unit standard deviation."""
    white = np.stack([r.standard_normal(shape, dtype=np.float32) for r in rngs])
    field = ndi.gaussian_filter(white, (0, sigma, sigma), mode="wrap")
    return field / np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-6)
