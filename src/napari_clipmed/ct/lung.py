"""Lung mask from HU alone (no downloaded weights) that keeps dense disease at the pleura.

A plain air threshold finds healthy lung but drops exactly what an ILD study looks for:
consolidation, honeycombing walls and nodules that touch the chest wall are as dense as the
wall itself. So after the threshold mask we (1) close each lung with a rolling ball of about
20 mm, which fills vessels, small juxtapleural nodules and notches, and (2) add, slice by
slice, the pockets between a lung and its convex hull when they are shallow (at most
`max_hull_depth_mm` deep): broad-based pleural lesions are shallow pockets on the convex
costal surface, while the heart, liver dome and spine make deep pockets and stay out.

The heavy steps (distance transforms) run on a grid of about `working_mm` voxels and the
result is interpolated back, so a chest CT takes a few seconds on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage as ndi

from napari_clipmed.ct.io import CTVolume
from napari_clipmed.errors import InputError


@dataclass(frozen=True)
class LungMaskConfig:
    """Parameters of `lung_mask` (HU and mm; the defaults suit adult chest CT)."""

    threshold_hu: float = -400.0  # air-filled lung is below, soft tissue above
    closing_mm: float = 20.0  # rolling-ball radius; 0 turns the closing off
    hull: bool = True  # add shallow pockets between each lung and its per-slice convex hull
    max_hull_depth_mm: float = 25.0  # deeper pockets (heart, liver dome, spine) are not lung
    max_hull_pocket_fraction: float = 0.25  # larger pockets (vs the lung's area in that slice) are not lung
    bone_hu: float = 500.0  # voxels above are bone or contrast, never lung
    second_lung_fraction: float = 0.05  # keep a second component at least this fraction of the largest
    min_lung_ml: float = 5.0  # less air than this in the lungs: no lung found
    max_airway_area_cm2: float = 8.0  # trachea and bronchi are tracked down while their lumen is smaller
    working_mm: float = 3.0  # grid for the distance transforms
    margin_mm: float = 1.5  # the final mask grows by this much (coarse-grid rounding, subpleural rim)


def lung_mask(volume: CTVolume, config: LungMaskConfig | None = None, **overrides: float) -> np.ndarray:
    """Boolean (z, y, x) mask of the lungs, dense pleural disease included.

    Keyword overrides change single fields of `config`. Raises `InputError` when no
    air-filled lung is found (e.g. the volume is not a chest CT, or not in HU).
    """
    return lung_labels(volume, config, **overrides) > 0


def lung_labels(volume: CTVolume, config: LungMaskConfig | None = None, **overrides: float) -> np.ndarray:
    """The lung mask as uint8 labels: 1 and 2 for the two lungs (in order of size), 0 elsewhere."""
    cfg = replace(config or LungMaskConfig(), **overrides)
    hu = volume.array
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    air = _lung_air(hu, cfg, volume)
    air &= ~airway_mask(air, volume, cfg.max_airway_area_cm2)
    factor = np.maximum(1, np.round(cfg.working_mm / spacing)).astype(int)
    lo_spacing = spacing * factor
    lo = ndi.binary_fill_holes(_block_mean(air, factor) > 0.5)
    lungs = _split_lungs(lo, lo_spacing)
    body_lo = _largest(_block_mean(hu > -500.0, factor) > 0.5)
    labels_lo = np.zeros(lo.shape, dtype=np.uint8)
    for i, lung in enumerate(lungs):
        other = lungs[1 - i] if len(lungs) == 2 else None
        labels_lo[_recover_pleura(lung, other, body_lo, lo_spacing, cfg) & (labels_lo == 0)] = i + 1
    up = _upsample(labels_lo > 0, factor, hu.shape)
    # The coarse grid rounds the boundary by up to half a block: add a thin margin (into tissue too,
    # so subpleural disease is never shaved off) and the air voxels beside it; never bone or contrast.
    mask = ndi.binary_dilation(up, structure=_ball(cfg.margin_mm, spacing)) if cfg.margin_mm > 0 else up
    mask |= air & ndi.binary_dilation(mask)
    mask &= hu <= cfg.bone_hu
    mask = _drop_specks(mask, 1.0 / volume.voxel_volume_ml)  # bits cut off by the bone threshold
    # Each voxel takes the label of its coarse block (grown by one block so the margin is covered).
    owner = _repeat(ndi.grey_dilation(labels_lo, size=3), factor, hu.shape)
    owner = np.where(labels_lo_up := _repeat(labels_lo, factor, hu.shape), labels_lo_up, owner)
    return np.where(mask, owner, 0).astype(np.uint8)


def threshold_mask(volume: CTVolume, threshold_hu: float = -400.0) -> np.ndarray:
    """The plain air-threshold lung mask (border air dropped, largest components kept), for comparison."""
    return _lung_air(volume.array, LungMaskConfig(threshold_hu=threshold_hu), volume)


def body_mask(volume: CTVolume, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient's body: largest non-air component with its inside (lungs included) filled, slice by slice."""
    return _largest(volume.array > threshold_hu)


def airway_mask(air: np.ndarray, volume: CTVolume, max_area_cm2: float = 8.0) -> np.ndarray:
    """Trachea and large bronchi in an air mask, tracked slice by slice from the top.

    The trachea is the small air region near the middle of the body in the highest slices
    that hold air; each slice below keeps the air regions that overlap the airway above and
    are smaller than `max_area_cm2` (where a bronchus opens into lung the region grows and
    tracking stops). Empty when no trachea is found (e.g. a scan of the lung bases).
    """
    out = np.zeros_like(air)
    slices = np.flatnonzero(air.any(axis=(1, 2)))
    if slices.size == 0:
        return out
    top_first = slices[::-1] if volume.direction[8] >= 0 else slices  # LPS: +z is superior
    pixel_cm2 = volume.spacing[1] * volume.spacing[2] / 100.0
    centre_x = air.shape[2] / 2.0
    # Start: a compact air region near the middle in the top quarter of the slices with air.
    previous = None
    for z in top_first[: max(1, len(top_first) // 4)]:
        labels, n = ndi.label(air[z])
        areas = np.bincount(labels.ravel())[1:] * pixel_cm2
        centres = ndi.center_of_mass(air[z], labels, np.arange(1, n + 1))
        for j, (area, (_, cx)) in enumerate(zip(areas, centres)):
            if 0.3 <= area <= max_area_cm2 and abs(cx - centre_x) <= 0.15 * air.shape[2]:
                previous = labels == j + 1
                break
        if previous is not None:
            start = int(np.flatnonzero(top_first == z)[0])
            break
    if previous is None:
        return out
    out[top_first[start]] = previous
    for z in top_first[start + 1 :]:
        labels, n = ndi.label(air[z])
        if n == 0:
            break
        areas = np.bincount(labels.ravel()) * pixel_cm2
        touching = np.unique(labels[previous])
        keep = [j for j in touching if j != 0 and areas[j] <= max_area_cm2]
        if not keep:
            break
        previous = np.isin(labels, keep)
        out[z] = previous
    return out


def _ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Structuring element: the voxels within `radius_mm` of the centre (at least the 6-neighbourhood)."""
    half = np.maximum(1, np.floor(radius_mm / spacing)).astype(int)
    grid = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, spacing)], indexing="ij")
    ball = sum(g**2 for g in grid) <= max(radius_mm, float(spacing.min())) ** 2
    return ball


def _drop_specks(mask: np.ndarray, min_voxels: float) -> np.ndarray:
    labels, n = ndi.label(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (sizes >= min_voxels)[labels]


def _largest(mask: np.ndarray) -> np.ndarray:
    """Largest connected component of `mask`, holes filled slice by slice."""
    labels, n = ndi.label(mask)
    if n == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = ndi.generate_binary_structure(2, 1)
    return ndi.binary_fill_holes(labels == int(np.argmax(sizes)), structure=in_plane)


def _lung_air(hu: np.ndarray, cfg: LungMaskConfig, volume: CTVolume) -> np.ndarray:
    """Air below the threshold, minus air connected to the in-plane border, largest one or two components."""
    air = hu < cfg.threshold_hu
    labels, n = ndi.label(air)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.int64)
    sizes[0] = 0
    # Outside air touches the in-plane border; lungs may run through the first/last slice, so z-faces do not count.
    border = np.unique(np.concatenate([labels[:, [0, -1], :].ravel(), labels[:, :, [0, -1]].ravel()]))
    sizes[border] = 0
    order = np.argsort(sizes)[::-1]
    min_voxels = cfg.min_lung_ml / volume.voxel_volume_ml
    if n == 0 or sizes[order[0]] < min_voxels:
        found = 0.0 if n == 0 else sizes[order[0]] * volume.voxel_volume_ml
        raise InputError(
            f"no lung found: the largest air pocket inside the body below {cfg.threshold_hu:g} HU holds "
            f"{found:.1f} ml (at least {cfg.min_lung_ml:g} ml expected); is this a chest CT in Hounsfield units?"
        )
    keep = [order[0]]
    if n > 1 and sizes[order[1]] >= max(min_voxels, cfg.second_lung_fraction * sizes[order[0]]):
        keep.append(order[1])
    return np.isin(labels, keep)


def _split_lungs(mask: np.ndarray, spacing: np.ndarray) -> list[np.ndarray]:
    """Separate the two lungs (joined through the trachea or an anterior junction) and drop the airway.

    Erode by growing depths until the mask falls apart, then give every voxel to its nearest
    seed; the two largest seeds are the lungs, smaller ones (trachea, main bronchi) are dropped.
    """
    if not mask.any():
        return []
    dist = ndi.distance_transform_edt(mask, sampling=spacing)
    found: tuple[np.ndarray, np.ndarray] | None = None
    for depth in (2.0, 4.0, 6.0, 9.0, 12.0, 16.0):
        seeds, n = ndi.label(dist > depth)
        if n == 0:
            break
        sizes = np.bincount(seeds.ravel())
        sizes[0] = 0
        found = (seeds, sizes)
        second, first = np.sort(sizes)[-2:] if n >= 2 else (0, sizes.max())
        if second >= 0.15 * first:
            break
    if found is None:
        return [mask]
    seeds, sizes = found
    order = np.argsort(sizes)[::-1]
    big = [int(order[0])]
    if sizes[order[1]] >= 0.15 * sizes[order[0]]:
        big.append(int(order[1]))  # else one lung (e.g. after pneumonectomy) or a partial scan
    # Seeds of at least 0.5 ml compete for voxels (the trachea is one, and is dropped with them);
    # smaller specks are noise and go to their neighbours.
    kept = sizes * np.prod(spacing) >= 500.0
    kept[big] = True
    kept[0] = False
    seeds = np.where(kept[seeds], seeds, 0)
    _, nearest = ndi.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
    owner = np.where(mask, seeds[tuple(nearest)], 0)
    return [owner == i for i in big]


def _recover_pleura(
    lung: np.ndarray, other: np.ndarray | None, body: np.ndarray, spacing: np.ndarray, cfg: LungMaskConfig
) -> np.ndarray:
    """One lung with dense juxtapleural disease put back: rolling-ball closing, then shallow hull pockets."""
    r = cfg.closing_mm
    pad = np.ceil(max(r, cfg.max_hull_depth_mm) / spacing).astype(int) + 2
    idx = np.argwhere(lung)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, lung.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = lung[box]
    closed = sub.copy()
    if r > 0:
        dilated = ndi.distance_transform_edt(~sub, sampling=spacing) <= r
        # (distance transforms see no zeros beyond the volume, so a lung cut by the volume is not eroded there)
        closed = (ndi.distance_transform_edt(dilated, sampling=spacing) > r) | sub
    if other is not None:
        closed &= ~other[box]
    if cfg.hull:
        closed |= _hull_pockets(closed, None if other is None else other[box], body[box], spacing[1:], cfg)
    out = np.zeros_like(lung)
    out[box] = closed
    return out


def _hull_pockets(
    lung: np.ndarray, other: np.ndarray | None, body: np.ndarray, spacing_yx: np.ndarray, cfg: LungMaskConfig
) -> np.ndarray:
    """Per axial slice: pockets between the lung and its convex hull that are pleural, not mediastinal.

    A pocket counts when it is at most `max_hull_depth_mm` deep, smaller than
    `max_hull_pocket_fraction` of the lung in that slice (the hollow of a crescent-shaped lung
    base is the liver or spleen dome, not disease) and nearer the body surface (chest wall)
    than the other lung (mediastinum).
    """
    from skimage.morphology import convex_hull_image

    out = np.zeros_like(lung)
    for z in np.flatnonzero(lung.any(axis=(1, 2))):
        sl = lung[z]
        if sl.sum() < 3:
            continue
        pockets = convex_hull_image(sl) & ~sl & body[z]
        if other is not None:
            pockets &= ~other[z]
        if not pockets.any():
            continue
        labels, n = ndi.label(pockets)
        index = np.arange(1, n + 1)
        depth = ndi.maximum(ndi.distance_transform_edt(~sl, sampling=spacing_yx), labels, index)
        area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        ok = (np.asarray(depth) <= cfg.max_hull_depth_mm) & (area <= cfg.max_hull_pocket_fraction * sl.sum())
        if other is not None and other[z].any():
            to_skin = ndi.minimum(ndi.distance_transform_edt(body[z], sampling=spacing_yx), labels, index)
            to_other = ndi.minimum(ndi.distance_transform_edt(~other[z], sampling=spacing_yx), labels, index)
            ok &= np.asarray(to_skin) < np.asarray(to_other)
        out[z] = np.concatenate([[False], ok])[labels]
    return out


def _block_mean(mask: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Mean of `mask` over blocks of `factor` voxels (the volume padded with zeros to a multiple)."""
    if np.all(factor == 1):
        return mask.astype(np.float32)
    shape = np.asarray(mask.shape)
    padded_shape = -(-shape // factor) * factor
    padded = np.zeros(padded_shape, dtype=np.float32)
    padded[tuple(slice(0, n) for n in shape)] = mask
    fz, fy, fx = factor
    blocks = padded.reshape(padded_shape[0] // fz, fz, padded_shape[1] // fy, fy, padded_shape[2] // fx, fx)
    return blocks.mean(axis=(1, 3, 5))


def _repeat(labels: np.ndarray, factor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour upsampling of a coarse label map (each block repeated), cropped to `shape`."""
    out = labels
    for axis, f in enumerate(factor):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return out[tuple(slice(0, n) for n in shape)]


def _upsample(mask: np.ndarray, factor: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear interpolation of a coarse mask back to the full grid (smoother than repeating blocks)."""
    if np.all(factor == 1):
        return mask.copy()
    full = ndi.zoom(mask.astype(np.float32), zoom=tuple(factor), order=1, grid_mode=True, mode="nearest")
    return full[tuple(slice(0, n) for n in shape)] > 0.5
