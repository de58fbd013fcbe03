"""Lung mask on the real chest CT: plausible adult lungs, inside the body, two of them, dense pleural disease kept."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_clipmed.ct.io import CTVolume
from napari_clipmed.ct.lung import airway_mask, body_mask, lung_mask, threshold_mask
from napari_clipmed.errors import InputError


def test_chest_ct_lungs_are_plausible(chest_ct: CTVolume, chest_mask: np.ndarray) -> None:
    litres = chest_mask.sum() * chest_ct.voxel_volume_ml / 1000
    assert 2.0 <= litres <= 8.0
    body = body_mask(chest_ct)
    assert (chest_mask & body).sum() / chest_mask.sum() > 0.999  # inside the body
    # Nearly all air-filled lung (the plain threshold mask minus the airway) is in the mask ...
    air = threshold_mask(chest_ct)
    airway = airway_mask(air, chest_ct)
    lung_air = air & ~airway
    assert chest_mask[lung_air].mean() > 0.99
    # ... the trachea is not, and the mask adds tissue only within a few cm of air-filled lung.
    assert airway.sum() * chest_ct.voxel_volume_ml > 5.0
    assert chest_mask[airway].mean() < 0.2
    added = chest_mask & ~air
    depth = ndi.distance_transform_edt(~air, sampling=chest_ct.spacing)
    assert np.percentile(depth[added], 99) < 25.0


def test_chest_ct_has_two_lungs_either_side_of_the_midline(chest_ct: CTVolume, chest_labels: np.ndarray) -> None:
    labels = chest_labels
    body_x = np.argwhere(body_mask(chest_ct))[:, 2].mean()
    volumes = [(labels == i).sum() * chest_ct.voxel_volume_ml for i in (1, 2)]
    assert min(volumes) > 0.3 * sum(volumes)
    centres_x = sorted(np.argwhere(labels == i)[:, 2].mean() for i in (1, 2))
    assert centres_x[0] < body_x - 20 and centres_x[1] > body_x + 20
    # The labels do not interleave: each lung lies (almost) entirely on its own side of the midline.
    voxels = np.argwhere(labels > 0)
    owner = labels[tuple(voxels.T)]
    for i in (1, 2):
        assert abs(np.sign(voxels[owner == i][:, 2] - body_x).mean()) > 0.95


def _paint_juxtapleural_lesion(
    volume: CTVolume, air: np.ndarray, z: int, side: str, radius_mm: float
) -> tuple[CTVolume, np.ndarray]:
    """Fill the lung within `radius_mm` of a pleural point with soft tissue (+20 HU, noise 30 HU)."""
    ys, xs = np.nonzero(air[z])
    if side == "lateral":
        i = int(np.argmin(xs))  # the costal surface of the lung at the image's left
    else:  # posterior, in the lung at the image's left (dependent subpleural lung, where UIP starts)
        left = xs < np.median(xs)
        i = int(np.flatnonzero(left)[np.argmax(ys[left])])
    centre = np.array([z, ys[i], xs[i]])
    zz, yy, xx = np.ogrid[: air.shape[0], : air.shape[1], : air.shape[2]]
    sz, sy, sx = volume.spacing
    ball = ((zz - centre[0]) * sz) ** 2 + ((yy - centre[1]) * sy) ** 2 + ((xx - centre[2]) * sx) ** 2 <= radius_mm**2
    lesion = ball & air
    array = volume.array.copy()
    noise = np.random.default_rng(0).normal(20.0, 30.0, int(lesion.sum()))
    array[lesion] = noise.astype(np.int16)
    return CTVolume(array, volume.spacing, volume.origin, volume.direction), lesion


@pytest.mark.parametrize(("z", "side", "radius_mm"), [(80, "lateral", 12.0), (40, "posterior", 10.0), (100, "lateral", 8.0)])
def test_dense_juxtapleural_lesion_is_kept(chest_ct: CTVolume, z: int, side: str, radius_mm: float) -> None:
    air = threshold_mask(chest_ct)
    diseased, lesion = _paint_juxtapleural_lesion(chest_ct, air, z, side, radius_mm)
    assert lesion.sum() * chest_ct.voxel_volume_ml > 0.8  # a lesion of about 1-3 ml, broad-based on the pleura
    # It touches the chest wall: some lesion voxels border tissue that was never lung.
    assert (ndi.binary_dilation(lesion) & ~air & ~lesion).any()
    plain = threshold_mask(diseased)
    assert plain[lesion].mean() < 0.05  # a plain threshold mask loses it ...
    mask = lung_mask(diseased)
    assert mask[lesion].mean() >= 0.9  # ... ours keeps it


def test_no_lung_is_a_clear_error() -> None:
    rng = np.random.default_rng(0)
    soft = rng.normal(40, 20, size=(12, 40, 40)).astype(np.int16)
    soft[:, :, :3] = -1000  # air around a block of tissue, nothing inside
    with pytest.raises(InputError, match="no lung found"):
        lung_mask(CTVolume.from_array(soft, (2.0, 1.0, 1.0)))


def test_input_is_not_modified(chest_crop: CTVolume) -> None:
    before = chest_crop.array.copy()
    lung_mask(chest_crop)
    np.testing.assert_array_equal(chest_crop.array, before)
