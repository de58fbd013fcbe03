"""Zero-shot ILD steps with the tiny random CLIP on a crop of the real chest CT.

References: scores recomputed from the model's own encoders (whole-batch encode, hand-made
class embeddings); NMS against a brute-force greedy loop; the pipeline's files read back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_clipmed.ct.ild import (
    ILD_CLASS_PRESETS,
    ILD_PATCH_PROMPTS,
    PATCH_TEMPLATES,
    classify_montage,
    iter_score_patches,
    score_patches,
    select_top_k,
    square_image,
)
from napari_clipmed.ct.io import CTVolume
from napari_clipmed.ct.lung import lung_mask
from napari_clipmed.ct.patches import Patches, extract_patches
from napari_clipmed.ct.pipeline import CTMontageConfig, iter_run_ct_montage, run_ct_montage
from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, run_generator


@pytest.fixture(scope="module")
def tiny_model():
    from napari_clipmed.models.loader import load_model

    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def crop_patches(chest_crop: CTVolume) -> Patches:
    return extract_patches(chest_crop, lung_mask(chest_crop))


def _class_embeddings(model, prompts: dict, templates) -> np.ndarray:
    rows = []
    for names in prompts.values():
        names = (names,) if isinstance(names, str) else names
        mean = model.encode_texts([t.format(n) for n in names for t in templates]).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_patch_scores_match_a_direct_computation(tiny_model, crop_patches: Patches) -> None:
    steps: list[Progress] = []
    gen = iter_score_patches(tiny_model, crop_patches, batch_size=50)
    scores = run_generator(gen, steps.append)
    n = len(crop_patches)
    assert [s.done for s in steps] == [0, *range(50, n, 50), n] and steps[-1].total == n
    emb = tiny_model.encode_images(crop_patches.images(size=64))
    np.testing.assert_allclose(scores.embeddings, emb, atol=1e-5)
    text = _class_embeddings(tiny_model, ILD_PATCH_PROMPTS, PATCH_TEMPLATES)
    np.testing.assert_allclose(scores.similarities, emb @ text.T, atol=1e-5)
    probs = _softmax(tiny_model.logit_scale * (emb @ text.T).astype(np.float64))
    np.testing.assert_allclose(scores.probabilities, probs, atol=1e-4)
    normal = list(ILD_PATCH_PROMPTS).index("normal lung parenchyma")
    np.testing.assert_allclose(scores.score, 1.0 - probs[:, normal], atol=1e-4)
    # No class marked normal: the score is the largest class probability.
    custom = {"fibrosis": "pulmonary fibrosis", "emphysema": ("emphysema", "bullae")}
    plain = score_patches(tiny_model, crop_patches.subset(range(10)), custom, normal_classes=())
    np.testing.assert_allclose(plain.score, plain.probabilities.max(axis=1))
    with pytest.raises(InputError, match="normal class"):
        score_patches(tiny_model, crop_patches, custom)


def _greedy_reference(scores: np.ndarray, centres: np.ndarray, k: int, d: float) -> list[int]:
    chosen: list[int] = []
    for i in sorted(range(len(scores)), key=lambda j: (-scores[j], j)):
        if all(np.linalg.norm(centres[i] - centres[j]) >= d for j in chosen):
            chosen.append(i)
        if len(chosen) == k:
            break
    return chosen


@pytest.mark.parametrize("distance", [0.0, 20.0, 32.0, 60.0])
def test_top_k_nms_matches_brute_force_and_keeps_distance(crop_patches: Patches, distance: float) -> None:
    rng = np.random.default_rng(int(distance))
    scores = rng.random(len(crop_patches))
    chosen = select_top_k(scores, crop_patches, k=16, min_distance_mm=distance)
    centres = crop_patches.centre_mm
    assert chosen.tolist() == _greedy_reference(scores, centres, 16, distance)
    gaps = np.linalg.norm(centres[chosen][:, None] - centres[chosen][None], axis=-1)
    assert gaps[~np.eye(len(chosen), dtype=bool)].min() >= distance
    assert np.all(np.diff(scores[chosen]) <= 0)  # best first
    # Without a cap on k, greedy NMS keeps going; its first 16 are the same, and nothing is left
    # out: every other patch lies within reach of a chosen one.
    everything = select_top_k(scores, crop_patches, k=10_000, min_distance_mm=distance)
    np.testing.assert_array_equal(everything[:16], chosen)
    others = np.setdiff1d(np.arange(len(scores)), everything)
    if distance == 0.0:
        assert len(others) == 0
        np.testing.assert_array_equal(chosen, np.argsort(-scores, kind="stable")[:16])
    else:
        assert len(others) > 0
        near = np.linalg.norm(centres[others][:, None] - centres[everything][None], axis=-1) < distance
        assert near.any(axis=1).all()


def test_classify_montage_is_softmax_of_cosines(tiny_model) -> None:
    image = np.random.default_rng(0).integers(0, 255, size=(40, 90, 3), dtype=np.uint8)
    probs = classify_montage(tiny_model, image)
    assert list(probs) == ["ILD", "no ILD"]
    square = square_image(image)
    assert square.shape == (90, 90, 3) and (square[25:65] == image).all() and square[:25].max() == 0
    emb = tiny_model.encode_images([square])[0]
    text = _class_embeddings(tiny_model, ILD_CLASS_PRESETS["ild"], ("a montage of chest CT patches showing {}.",
                                                                     "a CT image of {}."))
    expected = _softmax(tiny_model.logit_scale * (text @ emb).astype(np.float64))
    np.testing.assert_allclose(list(probs.values()), expected, atol=1e-5)
    uip = classify_montage(tiny_model, image, ILD_CLASS_PRESETS["uip"])
    assert list(uip) == ["UIP pattern", "other"] and sum(uip.values()) == pytest.approx(1.0)
    with pytest.raises(InputError, match="at least two classes"):
        classify_montage(tiny_model, image, {"ILD": "fibrosis"})


def test_pipeline_result_and_saved_files(tiny_model, chest_crop: CTVolume, tmp_path: Path) -> None:
    config = CTMontageConfig(k=9, min_distance_mm=40.0, cell_size=48)
    progress: list[Progress] = []
    gen = iter_run_ct_montage(chest_crop, tiny_model, config)
    result = run_generator(gen, progress.append)
    assert progress[-1].done == progress[-1].total
    assert len(result.chosen) == 9 and result.montage.grid == (3, 3)
    centres = result.patches.centre_mm[result.chosen]
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert gaps[~np.eye(9, dtype=bool)].min() >= 40.0
    assert sum(result.probabilities.values()) == pytest.approx(1.0)

    files = result.save(tmp_path / "out")
    assert sorted(p.name for p in files.values()) == ["config.json", "montage.csv", "montage.png", "patches.csv", "scores.json"]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left
    png = np.asarray(Image.open(files["montage.png"]))
    np.testing.assert_array_equal(png, result.montage.image)
    cells = pd.read_csv(files["montage.csv"])
    for rank, patch_index in enumerate(result.chosen):
        p = result.patches[int(patch_index)]
        row = cells.iloc[rank]
        assert (row["patch"], row["slice"], row["row"], row["col"]) == (patch_index, p.slice_index, p.row, p.col)
        assert row["score"] == pytest.approx(result.scores.score[patch_index])
        y0, x0, y1, x1 = result.montage.cell_box(rank)
        np.testing.assert_array_equal(png[y0:y1, x0:x1], result.patches.images([patch_index], size=48)[0])
    table = pd.read_csv(files["patches.csv"])
    assert len(table) == len(result.patches)
    np.testing.assert_array_equal(np.flatnonzero(table["montage_rank"].notna()), np.sort(result.chosen))
    summary = json.loads(files["scores.json"].read_text())
    assert summary["probabilities"] == pytest.approx(result.probabilities)
    assert summary["prediction"] == max(result.probabilities, key=result.probabilities.get)
    saved = json.loads(files["config.json"].read_text())
    assert saved.pop("model") == tiny_model.identity
    assert saved.pop("precision")["precision"] == "fp32"  # which precision ran, and why
    assert CTMontageConfig.from_dict(saved) == config


def test_pipeline_accepts_a_given_mask_and_refuses_bad_ones(tiny_model, chest_crop: CTVolume) -> None:
    mask = chest_crop.array < -400
    mask[:, :, :5] = False
    result = run_ct_montage(chest_crop, tiny_model, CTMontageConfig(k=4), mask=mask)
    assert result.lung_volume_ml == pytest.approx(mask.sum() * chest_crop.voxel_volume_ml)
    with pytest.raises(InputError, match="empty"):
        run_ct_montage(chest_crop, tiny_model, mask=np.zeros_like(mask))
    with pytest.raises(InputError, match="shape"):
        run_ct_montage(chest_crop, tiny_model, mask=mask[1:])
    with pytest.raises(InputError, match="unknown CT montage settings"):
        CTMontageConfig.from_dict({"kk": 3})
