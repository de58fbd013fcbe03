"""Real CT patches with tissue labels chosen by HU, written as PNG files plus DAPT manifests.

Patches are 16 x 16 voxels (24 mm at 1.5 mm spacing) cut from axial slices of the real chest CT,
windowed W2000/L0 to uint8. A patch is "lung parenchyma" when its median is below -500 HU and 90%
of it is below -500, "soft tissue" when its median is in -100..150 HU and 80% of it is in that
range, "bone" when its median is above 300 HU. Training and held-out patches come from different
slice ranges (z < 95 and z >= 110), so no voxel is shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

CT_PATH = Path(__file__).resolve().parents[3] / "shared" / "data" / "ct" / "chest_ct.nii.gz"
CLASSES = ("lung parenchyma", "soft tissue", "bone")
TEMPLATE = "a CT patch of {}"
SIZE = 16


@dataclass(frozen=True)
class Patches:
    images: np.ndarray  # (N, 16, 16) uint8
    labels: list[str]
    slices: np.ndarray  # z index of each patch


def _labels(blocks: np.ndarray) -> np.ndarray:
    """Label of each (n, 16, 16) HU block ("" when it is none of the three tissues)."""
    flat = blocks.reshape(len(blocks), -1)
    median = np.median(flat, axis=1)
    lung = (median < -500) & ((flat < -500).mean(axis=1) > 0.9)
    soft = (median >= -100) & (median <= 150) & (((flat >= -100) & (flat <= 150)).mean(axis=1) > 0.8)
    bone = median > 300
    return np.select([lung, soft, bone], list(CLASSES), default="")


def _cut(volume: np.ndarray, z_range: range, per_class: int, seed: int) -> Patches:
    """`per_class` random patches of each class from the non-overlapping 16 x 16 grid of slices `z_range`."""
    z = np.array(z_range)
    ny, nx = volume.shape[1] // SIZE, volume.shape[2] // SIZE
    grid = volume[z][:, : ny * SIZE, : nx * SIZE].reshape(len(z), ny, SIZE, nx, SIZE)
    blocks = grid.transpose(0, 1, 3, 2, 4).reshape(-1, SIZE, SIZE)
    slices = np.repeat(z, ny * nx)
    labels = _labels(blocks)
    rng = np.random.default_rng(seed)
    picks = np.concatenate([rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False) for c in CLASSES])
    windowed = np.clip((blocks[picks].astype(np.float32) + 1000.0) / 2000.0, 0.0, 1.0)  # W2000 / L0
    return Patches(np.round(windowed * 255).astype(np.uint8), list(labels[picks]), slices[picks])


@pytest.fixture(scope="session")
def ct_patches() -> tuple[Patches, Patches]:
    """(training, held-out) patches: 60 and 30 per class, balanced."""
    import SimpleITK as sitk

    volume = sitk.GetArrayFromImage(sitk.ReadImage(str(CT_PATH)))  # (z, y, x) HU
    train = _cut(volume, range(0, 95, 3), per_class=60, seed=0)
    held_out = _cut(volume, range(110, volume.shape[0], 3), per_class=30, seed=1)
    return train, held_out


def write_manifest(folder: Path, patches: Patches, name: str = "manifest.csv", text: bool = False) -> Path:
    """PNG files plus a CSV manifest (relative image paths) with label and, optionally, text columns."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    rows = ["image,label" + (",text" if text else "")]
    for i, (image, label) in enumerate(zip(patches.images, patches.labels)):
        Image.fromarray(image).save(folder / "img" / f"p{i:04d}.png")
        rows.append(f"img/p{i:04d}.png,{label}" + (f",{TEMPLATE.format(label)}" if text else ""))
    path = folder / name
    path.write_text("\n".join(rows) + "\n")
    return path


def subset(patches: Patches, per_class: int) -> Patches:
    """The first `per_class` patches of each class."""
    labels = np.array(patches.labels)
    keep = [i for c in CLASSES for i in np.flatnonzero(labels == c)[:per_class]]
    return Patches(patches.images[keep], [patches.labels[i] for i in keep], patches.slices[keep])


def zero_shot_accuracy(model, patches: Patches) -> float:
    """Held-out accuracy of the model's zero-shot classifier (one prompt per class)."""
    from napari_clipmed.zeroshot import ZeroShotClassifier

    classifier = ZeroShotClassifier.from_prompts(model, list(CLASSES), [TEMPLATE])
    predicted = np.array(CLASSES)[classifier.predict(model.encode_images(patches.images))]
    return float(np.mean(predicted == np.array(patches.labels)))


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers above, for test modules (which cannot import conftest reliably)."""
    return SimpleNamespace(classes=CLASSES, template=TEMPLATE, Patches=Patches, subset=subset,
                           write_manifest=write_manifest, zero_shot_accuracy=zero_shot_accuracy)


@pytest.fixture(scope="session")
def ct_manifest(ct_patches, tmp_path_factory) -> Path:
    """Training manifest (image + label columns) of the training patches."""
    return write_manifest(tmp_path_factory.mktemp("ct-dapt"), ct_patches[0])


@pytest.fixture(autouse=True)
def _dapt_on_one_torch_thread(one_torch_thread: None) -> None:
    """Every DAPT test runs torch on one thread (`one_torch_thread`, tests/conftest.py)."""
