"""Square patches of a physical size (mm) on CT slices, kept where they are mostly lung.

Positions are chosen without a Python loop per patch: the lung fraction of every grid position
comes from an integral image (cumulative sums) of the mask, and pixels are gathered from a
`sliding_window_view`. Pixels are made on demand (`Patches.images`), batch by batch, so a
volume's thousands of patches never sit in memory at the model's input size all at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from napari_clipmed.ct.io import CTVolume
from napari_clipmed.errors import InputError

AXES: tuple[str, ...] = ("axial", "coronal", "sagittal")  # slices across array axis 0, 1, 2 (z, y, x)
LUNG_WINDOW: tuple[float, float] = (1500.0, -600.0)  # (width, level) HU
# Three-window RGB: R lung (W1500/L-600), G mediastinal (W350/L40: consolidation, soft tissue),
# B parenchymal (W600/L-600: stretches -900..-300 HU, normal lung vs ground glass).
RGB_WINDOWS: tuple[tuple[float, float], ...] = ((1500.0, -600.0), (350.0, 40.0), (600.0, -600.0))


@dataclass(frozen=True)
class PatchConfig:
    """Where patches go and how they are rendered; sizes in mm, windows as (width, level) HU."""

    size_mm: float = 32.0
    stride_mm: float = 16.0
    slice_stride_mm: float | None = None  # distance between the slices used; None: `stride_mm`
    axes: tuple[str, ...] = ("axial",)
    min_lung_fraction: float = 0.5
    window: tuple[float, float] = LUNG_WINDOW
    windows: tuple[tuple[float, float], ...] | None = None  # three (width, level) pairs -> RGB

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Patch:
    """One patch: slice `slice_index` across `axis`, top-left (`row`, `col`) and size in that slice's voxels."""

    index: int
    axis: str
    slice_index: int
    row: int
    col: int
    height: int
    width: int
    centre_voxel: tuple[float, float, float]  # (z, y, x) continuous voxel index
    centre_mm: tuple[float, float, float]  # (z, y, x) = voxel index x spacing, from voxel (0, 0, 0)
    world_mm: tuple[float, float, float]  # (x, y, z) scanner coordinates (LPS)
    lung_fraction: float


@dataclass(eq=False)
class Patches:
    """Patch positions as columns (one row per patch) plus the volume they are cut from."""

    volume: CTVolume
    config: PatchConfig
    axis: np.ndarray  # (N,) int: index into AXES
    slice_index: np.ndarray  # (N,) int
    row: np.ndarray  # (N,) int, top-left in the slice
    col: np.ndarray  # (N,) int
    lung_fraction: np.ndarray  # (N,) float (NaN without a mask)
    shape_px: dict[int, tuple[int, int]] = field(default_factory=dict)  # axis -> (height, width) voxels

    def __len__(self) -> int:
        return int(self.axis.shape[0])

    def __getitem__(self, i: int) -> Patch:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"patch {i} out of range ({len(self)} patches)")
        i %= len(self)
        one = self.subset([i])
        a = int(self.axis[i])
        h, w = self.shape_px[a]
        return Patch(
            index=i, axis=AXES[a], slice_index=int(self.slice_index[i]), row=int(self.row[i]),
            col=int(self.col[i]), height=h, width=w,
            centre_voxel=tuple(float(v) for v in one.centre_voxel[0]),  # type: ignore[arg-type]
            centre_mm=tuple(float(v) for v in one.centre_mm[0]),  # type: ignore[arg-type]
            world_mm=tuple(float(v) for v in one.world_mm[0]),  # type: ignore[arg-type]
            lung_fraction=float(self.lung_fraction[i]),
        )

    @property
    def heights(self) -> np.ndarray:
        return np.array([self.shape_px[int(a)][0] for a in self.axis], dtype=np.int64)

    @property
    def widths(self) -> np.ndarray:
        return np.array([self.shape_px[int(a)][1] for a in self.axis], dtype=np.int64)

    @property
    def centre_voxel(self) -> np.ndarray:
        """(N, 3) continuous (z, y, x) voxel index of each patch centre."""
        centre = np.zeros((len(self), 3), dtype=np.float64)
        for a in np.unique(self.axis):
            sel = self.axis == a
            h, w = self.shape_px[int(a)]
            in_plane = [ax for ax in range(3) if ax != a]
            centre[sel, a] = self.slice_index[sel]
            centre[sel, in_plane[0]] = self.row[sel] + (h - 1) / 2.0
            centre[sel, in_plane[1]] = self.col[sel] + (w - 1) / 2.0
        return centre

    @property
    def centre_mm(self) -> np.ndarray:
        """(N, 3) centres in mm (z, y, x) from voxel (0, 0, 0): what spatial distances are measured in."""
        return self.centre_voxel * np.asarray(self.volume.spacing)

    @property
    def world_mm(self) -> np.ndarray:
        """(N, 3) centres in scanner coordinates (x, y, z) mm."""
        return self.volume.index_to_physical(self.centre_voxel) if len(self) else np.zeros((0, 3))

    def subset(self, indices: Sequence[int] | np.ndarray) -> Patches:
        idx = np.asarray(indices, dtype=np.int64)
        return Patches(self.volume, self.config, self.axis[idx], self.slice_index[idx], self.row[idx],
                       self.col[idx], self.lung_fraction[idx], dict(self.shape_px))

    def images(self, indices: Sequence[int] | np.ndarray | None = None, size: int = 224) -> np.ndarray:
        """(n, size, size, 3) uint8 windowed patches, resampled (bilinear) to `size` pixels."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
        windows = self.config.windows or (self.config.window,) * 3
        flip_rows = self.volume.direction[8] > 0  # coronal/sagittal rows run along z: superior up
        for a in np.unique(self.axis[idx]):
            pos = np.flatnonzero(self.axis[idx] == a)
            sel = idx[pos]
            h, w = self.shape_px[int(a)]
            view = sliding_window_view(np.moveaxis(self.volume.array, int(a), 0), (h, w), axis=(1, 2))
            crops = view[self.slice_index[sel], self.row[sel], self.col[sel]].astype(np.float32)
            if a != 0 and flip_rows:
                crops = crops[:, ::-1, :]
            crops = resize_batch(crops, size)
            if self.config.windows is None:
                out[pos] = apply_window(crops, *self.config.window)[..., None]
            else:
                for ch, (width, level) in enumerate(windows):
                    out[pos, ..., ch] = apply_window(crops, width, level)
        return out

    def iter_images(self, batch_size: int = 64, size: int = 224) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(indices, images) batches over all patches, in order."""
        for start in range(0, len(self), batch_size):
            idx = np.arange(start, min(start + batch_size, len(self)))
            yield idx, self.images(idx, size)

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        centre = self.centre_voxel
        mm = self.centre_mm
        world = self.world_mm
        return pd.DataFrame({
            "patch": np.arange(len(self)),
            "axis": [AXES[int(a)] for a in self.axis],
            "slice": self.slice_index, "row": self.row, "col": self.col,
            "height_px": self.heights, "width_px": self.widths,
            "z": centre[:, 0], "y": centre[:, 1], "x": centre[:, 2],
            "z_mm": mm[:, 0], "y_mm": mm[:, 1], "x_mm": mm[:, 2],
            "world_x": world[:, 0], "world_y": world[:, 1], "world_z": world[:, 2],
            "lung_fraction": self.lung_fraction,
        })


def apply_window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> uint8 grey: `level - width/2` maps to 0, `level + width/2` to 255 (clipped)."""
    if width <= 0:
        raise InputError(f"window width must be positive, got {width}")
    lo = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def resize_batch(crops: np.ndarray, size: int) -> np.ndarray:
    """(n, h, w) -> (n, size, size) by bilinear interpolation on pixel centres (area average when shrinking)."""
    from scipy import ndimage as ndi

    n, h, w = crops.shape
    if (h, w) == (size, size):
        return crops
    if h >= 2 * size and w >= 2 * size:  # shrink by an integer factor first, so thin lines are not skipped
        fy, fx = h // size, w // size
        crops = crops[:, : h - h % fy, : w - w % fx].reshape(n, h // fy, fy, w // fx, fx).mean(axis=(2, 4))
        h, w = crops.shape[1:]
    zoom = (1.0, size / h, size / w)
    return ndi.zoom(crops, zoom, order=1, grid_mode=True, mode="nearest")


def extract_patches(
    volume: CTVolume,
    mask: np.ndarray | None,
    config: PatchConfig | None = None,
    **overrides: object,
) -> Patches:
    """Grid positions on slices where the patch is at least `min_lung_fraction` lung.

    `mask=None` keeps every position (the unfiltered baseline). Keyword overrides change
    single fields of `config` (e.g. ``size_mm=24``).
    """
    from dataclasses import replace

    cfg = replace(config or PatchConfig(), **overrides)
    check_patch_config(cfg, volume)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != volume.shape:
            raise InputError(f"lung mask shape {mask.shape} differs from the volume's {volume.shape}")
        if not mask.any():
            raise InputError("the lung mask is empty: no lung to cut patches from")
    spacing = np.asarray(volume.spacing)
    parts = []
    shape_px: dict[int, tuple[int, int]] = {}
    for name in cfg.axes:
        a = AXES.index(name)
        in_plane = [ax for ax in range(3) if ax != a]
        h, w = (max(1, int(round(cfg.size_mm / spacing[ax]))) for ax in in_plane)
        n_sl, big_h, big_w = (volume.shape[a], volume.shape[in_plane[0]], volume.shape[in_plane[1]])
        shape_px[a] = (h, w)  # (fits: checked by check_patch_config)
        rows = np.arange(0, big_h - h + 1, max(1, int(round(cfg.stride_mm / spacing[in_plane[0]]))))
        cols = np.arange(0, big_w - w + 1, max(1, int(round(cfg.stride_mm / spacing[in_plane[1]]))))
        slices = _slice_positions(mask, a, n_sl, (cfg.slice_stride_mm or cfg.stride_mm) / spacing[a])
        if mask is None:
            frac = np.full((len(slices), len(rows), len(cols)), np.nan)
            keep = np.ones(frac.shape, dtype=bool)
        else:
            frac = _box_fractions(np.moveaxis(mask, a, 0)[slices], rows, cols, h, w)
            keep = frac >= cfg.min_lung_fraction
        s_i, r_i, c_i = np.nonzero(keep)
        parts.append((np.full(len(s_i), a), slices[s_i], rows[r_i], cols[c_i], frac[s_i, r_i, c_i]))
    cat = [np.concatenate([p[k] for p in parts]) for k in range(5)]
    if len(cat[0]) == 0:
        raise InputError(
            f"no {cfg.size_mm:g} mm patch is at least {cfg.min_lung_fraction:.0%} lung; "
            "lower min_lung_fraction or the patch size"
        )
    return Patches(volume, cfg, cat[0].astype(np.int64), cat[1].astype(np.int64), cat[2].astype(np.int64),
                   cat[3].astype(np.int64), cat[4].astype(np.float64), shape_px)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def check_patch_config(cfg: PatchConfig, volume: CTVolume | None = None) -> None:
    """Raise `InputError` for impossible settings, including (given a volume) a patch larger than its slices."""
    for name in ("size_mm", "stride_mm", "slice_stride_mm", "min_lung_fraction"):
        value = getattr(cfg, name)
        if value is None and name == "slice_stride_mm":
            continue
        if not _is_number(value) or not np.isfinite(value):
            raise InputError(f"{name} must be a finite number, got {value!r}")
    if not cfg.size_mm > 0 or not cfg.stride_mm > 0:
        raise InputError(f"patch size and stride must be positive mm, got {cfg.size_mm} and {cfg.stride_mm}")
    if cfg.slice_stride_mm is not None and not cfg.slice_stride_mm > 0:
        raise InputError(f"slice stride must be positive mm, got {cfg.slice_stride_mm}")
    if isinstance(cfg.axes, str) or not all(isinstance(a, str) for a in cfg.axes):
        raise InputError(f"axes must be a list of axis names ({', '.join(AXES)}), got {cfg.axes!r}")
    unknown = [a for a in cfg.axes if a not in AXES]
    if unknown or not cfg.axes:
        raise InputError(f"unknown slice axes {unknown or '(none)'}; choose from {', '.join(AXES)}")
    if len(set(cfg.axes)) != len(cfg.axes):
        raise InputError(f"each slice axis may be given once (every patch would be scored twice), got {list(cfg.axes)}")
    pairs = (cfg.windows or (cfg.window,))
    if not all(len(w) == 2 and all(_is_number(v) and np.isfinite(v) for v in w) for w in pairs):
        raise InputError(f"windows are (width, level) pairs of finite HU values, got {list(pairs)}")
    if not 0.0 <= cfg.min_lung_fraction <= 1.0:
        raise InputError(f"min_lung_fraction must lie in 0..1, got {cfg.min_lung_fraction}")
    if cfg.windows is not None and len(cfg.windows) != 3:
        raise InputError(f"three-window RGB needs 3 (width, level) windows, got {len(cfg.windows)}")
    for width, _ in (cfg.windows or (cfg.window,)):
        if not width > 0:
            raise InputError(f"window width must be positive, got {width}")
    if volume is None:
        return
    spacing = np.asarray(volume.spacing)
    for name in cfg.axes:
        a = AXES.index(name)
        in_plane = [ax for ax in range(3) if ax != a]
        h, w = (max(1, int(round(cfg.size_mm / spacing[ax]))) for ax in in_plane)
        big_h, big_w = volume.shape[in_plane[0]], volume.shape[in_plane[1]]
        if h > big_h or w > big_w:
            raise InputError(
                f"a {cfg.size_mm:g} mm patch is {h} x {w} voxels, larger than the {name} slice "
                f"({big_h} x {big_w} voxels = {big_h * spacing[in_plane[0]]:.0f} x {big_w * spacing[in_plane[1]]:.0f} mm); "
                "choose a smaller patch size"
            )


def _slice_positions(mask: np.ndarray | None, axis: int, n: int, step_px: float) -> np.ndarray:
    """Slices every `step_px` voxels across the lung's extent (the whole volume without a mask), centred."""
    if mask is None:
        lo, hi = 0, n - 1
    else:
        has = np.flatnonzero(np.moveaxis(mask, axis, 0).any(axis=(1, 2)))
        lo, hi = int(has[0]), int(has[-1])
    step = max(1.0, step_px)
    count = int(np.floor((hi - lo) / step)) + 1
    start = lo + ((hi - lo) - (count - 1) * step) / 2.0
    return np.unique(np.clip(np.rint(start + step * np.arange(count)), lo, hi).astype(np.int64))


def _box_fractions(mask_slices: np.ndarray, rows: np.ndarray, cols: np.ndarray, h: int, w: int) -> np.ndarray:
    """(S, R, C) fraction of mask inside each h x w box with top-left (rows[r], cols[c]) on each slice."""
    integral = np.zeros((mask_slices.shape[0], mask_slices.shape[1] + 1, mask_slices.shape[2] + 1), np.int64)
    integral[:, 1:, 1:] = mask_slices.cumsum(axis=1, dtype=np.int64).cumsum(axis=2)
    r0, c0 = rows[:, None], cols[None, :]
    total = (integral[:, r0 + h, c0 + w] - integral[:, r0, c0 + w]
             - integral[:, r0 + h, c0] + integral[:, r0, c0])
    return total / float(h * w)
