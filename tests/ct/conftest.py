"""Shared CT fixtures: the real sample chest CT (read once) and a small crop of it for model tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_clipmed.ct.io import CTVolume, read_ct

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "ct"
CHEST_CT = DATA / "chest_ct.nii.gz"
ABDOMEN_DICOM = DATA / "abdomen_ct_dicom"


@pytest.fixture(scope="session")
def abdomen_dicom() -> Path:
    """The real 20-slice DICOM CT series folder."""
    return ABDOMEN_DICOM


@pytest.fixture(scope="session")
def chest_ct_path() -> Path:
    return CHEST_CT


@pytest.fixture(scope="session")
def chest_ct() -> CTVolume:
    return read_ct(CHEST_CT)


@pytest.fixture(scope="session")
def chest_labels(chest_ct: CTVolume) -> np.ndarray:
    from napari_clipmed.ct.lung import lung_labels

    return lung_labels(chest_ct)


@pytest.fixture(scope="session")
def chest_mask(chest_labels: np.ndarray) -> np.ndarray:
    return chest_labels > 0


@pytest.fixture(scope="session")
def chest_crop(chest_ct: CTVolume) -> CTVolume:
    """Slices 60..84 of the chest CT at 3 mm in-plane (every other voxel): both lungs, fast to process."""
    z0 = 60
    array = chest_ct.array[z0:84:2, ::2, ::2]
    origin = chest_ct.index_to_physical(np.array([[z0, 0, 0]]))[0]
    spacing = (chest_ct.spacing[0] * 2, chest_ct.spacing[1] * 2, chest_ct.spacing[2] * 2)
    return CTVolume.from_array(array, spacing, tuple(origin), chest_ct.direction, source="chest CT crop")
