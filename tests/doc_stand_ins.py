"""Stand-ins that let the documentation's snippets run in the suite, as written, without real weights.

A snippet marked ``<!-- snippet: stand-ins=NAME (why) -->`` names real weights (PLIP, PathCLIP, OpenAI
ViT-B/16) and the user's own files. The suite runs its code unchanged except for the names in
`MODEL_STAND_INS` (tiny models: the calls, arguments and outputs are what the docs promise; the
numbers mean nothing), in a working folder where `STAND_INS[NAME]` has built the files it names
from the real samples in ../shared/data.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HE = DATA / "pathology" / "he_carcinoma_tiatoolbox.png"
SVS = DATA / "pathology" / "cmu_small_region.svs"
CHEST_CT = DATA / "ct" / "chest_ct.nii.gz"
ABDOMEN_DICOM = DATA / "ct" / "abdomen_ct_dicom"


def model_stand_ins(folder: Path) -> dict[str, str]:
    """Real model names in the docs -> tiny ones: PathCLIP becomes a second, differently seeded tiny model
    (a checkpoint), so a two-model run stays two models."""
    import torch

    from napari_clipmed.models.loader import load_model

    torch.manual_seed(1)
    second = load_model("tiny-random", device="cpu")
    for parameter in second.module.parameters():
        parameter.data.normal_(0.0, 0.02)
    checkpoint = second.save(folder / "tiny-b.pt")
    return {'"plip"': '"tiny-random"', '"openai-vit-b-16"': '"tiny-random"',
            '"pathclip"': f'"tiny-b={checkpoint}"', '"local:4"': '"local:2"'}


def _he_crops(count: int, side: int, seed: int = 0) -> list[np.ndarray]:
    image = np.asarray(Image.open(HE).convert("RGB"))
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, image.shape[0] - side, count), rng.integers(0, image.shape[1] - side, count)
    return [image[y : y + side, x : x + side].copy() for y, x in zip(ys, xs)]


def labelled_tiles(folder: Path, classes: tuple[str, ...] = ("tumour", "stroma"), per_class: int = 6) -> None:
    """tiles/<class>/*.png: crops of the real H&E image (an ImageFolder)."""
    for c, name in enumerate(classes):
        (folder / "tiles" / name).mkdir(parents=True)
        for i, tile in enumerate(_he_crops(per_class, 64, seed=c)):
            Image.fromarray(tile).save(folder / "tiles" / name / f"{i}.png")


def pairs_csv(folder: Path) -> None:
    """pairs.csv: image-text pairs (H&E crops with a sentence per label) and a label column for validation."""
    (folder / "img").mkdir()
    rows = ["image,text,label"]
    for i, tile in enumerate(_he_crops(12, 64)):
        label = ("tumour", "stroma")[i % 2]
        Image.fromarray(tile).save(folder / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,an H&E image of {label},{label}")
    (folder / "pairs.csv").write_text("\n".join(rows) + "\n")


def cohort_csv(folder: Path) -> None:
    """cohort.csv: four 3 mm crops of the real chest CT at different heights, labelled ILD / no ILD."""
    import SimpleITK as sitk

    volume = sitk.ReadImage(str(CHEST_CT))
    array = sitk.GetArrayFromImage(volume)
    (folder / "volumes").mkdir()
    rows = ["path,label"]
    for i, z0 in enumerate((50, 70, 90, 110)):
        crop = sitk.GetImageFromArray(array[z0 : z0 + 16 : 2, ::2, ::2])
        crop.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(crop, str(folder / "volumes" / f"case{i}.nii.gz"))
        rows.append(f"volumes/case{i}.nii.gz,{('ILD', 'no ILD')[i % 2]}")
    (folder / "cohort.csv").write_text("\n".join(rows) + "\n")


def _readme(folder: Path) -> dict[str, Any]:
    return {"tiles": _he_crops(4, 224)}  # "your own tiles": the snippet's `tiles` variable


def _ct(folder: Path) -> dict[str, Any]:
    (folder / "case001").symlink_to(ABDOMEN_DICOM)  # a real DICOM series folder
    return {}


def _dapt(folder: Path) -> dict[str, Any]:
    pairs_csv(folder)
    return {}


def _robustness(folder: Path) -> dict[str, Any]:
    classes = ("non-tumour", "viable tumour", "necrotic tumour")  # the osteosarcoma preset's classes
    labelled_tiles(folder, classes, per_class=4)  # 12 tiles: the default k=10 needs 11 neighbours
    return {}


def _cluster_cohort(folder: Path) -> dict[str, Any]:
    cohort_csv(folder)
    return {}


def _cluster_pathology(folder: Path) -> dict[str, Any]:
    labelled_tiles(folder)
    for name in ("a.svs", "b.svs"):
        (folder / name).symlink_to(SVS)
    return {}


# stand-ins name (from the snippet's comment) -> builds the files the snippet names; returns extra globals
STAND_INS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "readme": _readme,
    "ct": _ct,
    "dapt": _dapt,
    "robustness": _robustness,
    "cluster-cohort": _cluster_cohort,
    "cluster-pathology": _cluster_pathology,
}
