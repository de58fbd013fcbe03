"""Patches: physical size, lung fraction (vs a direct per-patch count), windows, bad input; montage provenance."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clipmed.ct.io import CTVolume
from napari_clipmed.ct.montage import build_montage
from napari_clipmed.ct.patches import AXES, RGB_WINDOWS, apply_window, extract_patches
from napari_clipmed.errors import InputError


def test_apply_window_maps_the_window_edges() -> None:
    hu = np.array([-2000, -1350, -600, 150, 3000], dtype=np.int16)
    np.testing.assert_array_equal(apply_window(hu, 1500, -600), [0, 0, 128, 255, 255])
    with pytest.raises(InputError, match="positive"):
        apply_window(hu, 0, 40)


def test_patches_are_physical_size_and_mostly_lung(chest_ct: CTVolume, chest_mask: np.ndarray) -> None:
    patches = extract_patches(chest_ct, chest_mask, size_mm=30.0, stride_mm=15.0, min_lung_fraction=0.6)
    assert patches.shape_px == {0: (20, 20)}  # 30 mm at 1.5 mm voxels
    assert len(patches) > 100
    # Lung fraction from the integral image equals a direct count in every patch (independent reference).
    for i in range(0, len(patches), 7):
        p = patches[i]
        box = chest_mask[p.slice_index, p.row : p.row + p.height, p.col : p.col + p.width]
        assert p.lung_fraction == pytest.approx(box.mean())
        assert p.lung_fraction >= 0.6
    # No grid position that qualifies is missing: count them the slow way on a few slices.
    for z in np.unique(patches.slice_index)[::4]:
        expected = sum(
            chest_mask[z, r : r + 20, c : c + 20].mean() >= 0.6
            for r in range(0, chest_ct.shape[1] - 20 + 1, 10)
            for c in range(0, chest_ct.shape[2] - 20 + 1, 10)
        )
        assert (patches.slice_index == z).sum() == expected
    # Slices 15 mm apart, centres in mm are voxel index x spacing.
    assert set(np.diff(np.unique(patches.slice_index))) == {10}
    p = patches[0]
    assert p.centre_mm == pytest.approx(tuple(np.array(p.centre_voxel) * 1.5))


def test_images_are_windowed_crops(chest_ct: CTVolume, chest_mask: np.ndarray) -> None:
    patches = extract_patches(chest_ct, chest_mask, size_mm=30.0, window=(1500.0, -600.0))
    p = patches[5]
    crop = chest_ct.array[p.slice_index, p.row : p.row + p.height, p.col : p.col + p.width]
    native = patches.images([5], size=p.height)[0]  # no resampling at the native size
    np.testing.assert_array_equal(native[..., 0], apply_window(crop, 1500, -600))
    assert (native[..., 0] == native[..., 1]).all() and (native[..., 1] == native[..., 2]).all()
    big = patches.images([5], size=64)
    assert big.shape == (1, 64, 64, 3) and big.dtype == np.uint8
    rgb = extract_patches(chest_ct, chest_mask, size_mm=30.0, windows=RGB_WINDOWS).images([5], size=p.height)[0]
    for ch, (width, level) in enumerate(RGB_WINDOWS):
        np.testing.assert_array_equal(rgb[..., ch], apply_window(crop, width, level))


def test_coronal_and_sagittal_patches(chest_crop: CTVolume) -> None:
    mask = chest_crop.array < -400
    patches = extract_patches(chest_crop, mask, axes=AXES, size_mm=24.0, stride_mm=24.0, min_lung_fraction=0.3)
    assert set(np.unique(patches.axis)) == {0, 1, 2}
    for a in (1, 2):
        i = int(np.flatnonzero(patches.axis == a)[0])
        p = patches[i]
        plane = np.moveaxis(chest_crop.array, a, 0)[p.slice_index]
        crop = plane[p.row : p.row + p.height, p.col : p.col + p.width][::-1]  # superior up
        assert (p.height, p.width) == (8, 8)  # 24 mm at 3 mm voxels
        np.testing.assert_array_equal(patches.images([i], size=8)[0][:, :, 0], apply_window(crop, 1500, -600))
        assert p.centre_voxel[a] == p.slice_index


def test_no_mask_keeps_every_position(chest_crop: CTVolume) -> None:
    everything = extract_patches(chest_crop, None, size_mm=24.0, stride_mm=12.0)
    nz, ny, nx = chest_crop.shape
    per_slice = len(range(0, ny - 8 + 1, 4)) * len(range(0, nx - 8 + 1, 4))
    assert len(everything) == per_slice * len(np.unique(everything.slice_index))
    assert np.isnan(everything.lung_fraction).all()


def test_bad_patch_input_is_refused(chest_crop: CTVolume) -> None:
    mask = chest_crop.array < -400
    with pytest.raises(InputError, match="larger than the axial slice"):
        extract_patches(chest_crop, mask, size_mm=2000.0)
    with pytest.raises(InputError, match="empty"):
        extract_patches(chest_crop, np.zeros_like(mask))
    with pytest.raises(InputError, match="shape"):
        extract_patches(chest_crop, mask[:-1])
    with pytest.raises(InputError, match="unknown slice axes"):
        extract_patches(chest_crop, mask, axes=("oblique",))
    speck = np.zeros_like(mask)
    speck[5, 40, 40] = True
    with pytest.raises(InputError, match="no 24 mm patch"):
        extract_patches(chest_crop, speck, size_mm=24.0)
    with pytest.raises(InputError, match="three-window"):
        extract_patches(chest_crop, mask, windows=((1500.0, -600.0),))


def test_montage_cells_show_their_patches(chest_ct: CTVolume, chest_mask: np.ndarray) -> None:
    patches = extract_patches(chest_ct, chest_mask)
    scores = np.random.default_rng(0).random(len(patches))
    chosen = np.argsort(-scores)[:7]
    montage = build_montage(patches, scores, chosen, pad=3, cell_size=40)
    assert montage.grid == (3, 3)
    assert montage.image.shape == (3 * 40 + 4 * 3, 3 * 40 + 4 * 3, 3)
    frame = montage.to_frame()
    np.testing.assert_array_equal(frame["patch"], chosen)
    np.testing.assert_allclose(frame["score"], scores[chosen])
    for rank, patch_index in enumerate(chosen):
        y0, x0, y1, x1 = montage.cell_box(rank)
        np.testing.assert_array_equal(montage.image[y0:y1, x0:x1], patches.images([patch_index], size=40)[0])
        # Every pixel of the cell maps back to this rank; provenance matches the patch record.
        assert montage.cell_at(y0, x0) == rank and montage.cell_at(y1 - 1, x1 - 1) == rank
        p = patches[int(patch_index)]
        row = frame.iloc[rank]
        assert (row["slice"], row["row"], row["col"]) == (p.slice_index, p.row, p.col)
        assert (row["z_mm"], row["y_mm"], row["x_mm"]) == pytest.approx(p.centre_mm)
        assert (row["world_x"], row["world_y"], row["world_z"]) == pytest.approx(p.world_mm)
    assert montage.cell_at(0, 0) is None  # padding
    assert montage.cell_at(2 * 43 + 3 + 5, 2 * 43 + 3 + 5) is None  # the ninth cell is empty (7 patches)
    assert montage.image[2 * 43 + 3 :, 2 * 43 + 3 :].max() == 0
    assert montage.cell_at(43 + 3 + 1, 3 + 1) == 3  # second row, first column
