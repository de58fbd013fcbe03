"""Coarse-to-fine patch search on a crop of the real chest CT (tiny random CLIP).

References: the exhaustive run (today's pipeline) on the same volume and settings; grid
neighbours checked against distances between patch centres in mm; round results against
`select_top_k` and `build_montage` called on the scores the round had.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from napari_clipmed.ct.ild import select_top_k
from napari_clipmed.ct.io import CTVolume
from napari_clipmed.ct.lung import lung_mask
from napari_clipmed.ct.patches import PatchConfig, extract_patches
from napari_clipmed.ct.pipeline import CTMontageConfig, MontageRound, iter_run_ct_montage, run_ct_montage
from napari_clipmed.ct.search import Grid, SearchConfig
from napari_clipmed.errors import InputError

# 24 mm patches every 12 mm on 3 mm voxels: about 560 candidates on the 12-slice crop
BASE = CTMontageConfig(patch=PatchConfig(size_mm=24.0, stride_mm=12.0), k=6, cell_size=32)
C2F = SearchConfig(mode="coarse-to-fine", budget=0.4, max_rounds=4)


@pytest.fixture(scope="module")
def tiny_model():
    from napari_clipmed.models.loader import load_model

    return load_model("tiny-random", device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def crop_mask(chest_crop: CTVolume) -> np.ndarray:
    return lung_mask(chest_crop)


@pytest.fixture(scope="module")
def exhaustive(chest_crop, crop_mask, tiny_model):
    return run_ct_montage(chest_crop, tiny_model, BASE, mask=crop_mask)


def _drive(gen):
    """(every MontageRound, the returned result)."""
    rounds = []
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return rounds, stop.value
        if isinstance(step, MontageRound):
            rounds.append(step)


def test_grid_neighbours_are_the_patches_one_stride_away(chest_crop, crop_mask) -> None:
    patches = extract_patches(chest_crop, crop_mask, BASE.patch)
    grid = Grid(patches)
    mm = patches.centre_mm
    stride = np.array([12.0, 12.0, 12.0])
    some = np.arange(0, len(patches), 7)
    for i, row in zip(some, grid.neighbours(some)):
        steps = np.abs(mm - mm[i]) / stride  # 3 mm voxels: positions are exact multiples of the stride
        expected = np.flatnonzero((np.rint(steps) <= 1).all(axis=1))
        assert set(row[row >= 0]) == set(expected) - {i}
    coarse = grid.coarse(2)
    steps_from_first = np.rint((mm - mm.min(axis=0)) / stride).astype(int)
    np.testing.assert_array_equal(coarse, np.flatnonzero((steps_from_first % 2 == 0).all(axis=1)))
    assert 0.08 < len(coarse) / len(patches) < 0.2  # about 1/8 of the grid


@pytest.mark.parametrize("priority", ["surrogate", "neighbours"])
def test_budget_of_the_whole_grid_returns_exactly_the_exhaustive_top_k(chest_crop, crop_mask, tiny_model,
                                                                       exhaustive, priority) -> None:
    # round 2's share of the budget is everything the coarse round left: the whole grid gets scored
    search = SearchConfig(mode="coarse-to-fine", budget=1.0, max_rounds=2, stable_changes=None, priority=priority)
    result = run_ct_montage(chest_crop, tiny_model, replace(BASE, search=search), mask=crop_mask)
    assert result.patches_scored == len(exhaustive.patches) == len(result.patches)
    np.testing.assert_array_equal(result.chosen, exhaustive.chosen)
    np.testing.assert_allclose(result.scores.score, exhaustive.scores.score, atol=1e-5)
    np.testing.assert_array_equal(result.montage.image, exhaustive.montage.image)
    assert result.probabilities == pytest.approx(exhaustive.probabilities, abs=1e-5)
    assert set(np.unique(result.rounds)) == {1, 2} and not result.partial
    # the exhaustive run itself: one round, every patch scored, unchanged outputs plus the round column
    assert exhaustive.patches_scored == len(exhaustive.patches) and exhaustive.stop_reason == "exhaustive"
    assert (exhaustive.patches_frame()["round"] == 1).all()


def test_every_round_is_a_valid_montage_with_provenance(chest_crop, crop_mask, tiny_model, exhaustive) -> None:
    config = replace(BASE, search=C2F)
    rounds, final = _drive(iter_run_ct_montage(chest_crop, tiny_model, config, mask=crop_mask))
    assert 2 <= len(rounds) <= C2F.max_rounds
    n = len(exhaustive.patches)
    scored_before = 0
    for i, step in enumerate(rounds, start=1):
        r = step.result
        assert r.partial and r.search_round == i and r.max_rounds == C2F.max_rounds
        assert r.patches_scored > scored_before and r.rounds.max() == i
        scored_before = r.patches_scored
        scored = r.rounds > 0
        assert np.isnan(r.scores.score[~scored]).all() and not np.isnan(r.scores.score[scored]).any()
        # scores of the patches scored so far are the exhaustive run's; the chosen set is their NMS top k
        np.testing.assert_allclose(r.scores.score[scored], exhaustive.scores.score[scored], atol=1e-5)
        np.testing.assert_array_equal(r.chosen, select_top_k(r.scores.score, r.patches, BASE.k, BASE.nms_distance_mm))
        assert scored[r.chosen].all()
        # the montage: one cell per chosen patch, each traced back to its patch, slice and score
        frame = r.to_frame()
        assert len(r.montage) == len(r.chosen) == BASE.k
        np.testing.assert_array_equal(frame["patch"], r.chosen)
        np.testing.assert_array_equal(frame["slice"], r.patches.slice_index[r.chosen])
        np.testing.assert_allclose(frame["score"], r.scores.score[r.chosen])
        y0, x0, _, _ = r.montage.cell_box(len(r.chosen) - 1)
        assert r.montage.cell_at(y0 + 1, x0 + 1) == len(r.chosen) - 1
        assert sum(r.probabilities.values()) == pytest.approx(1.0)
        table = r.patches_frame()
        assert table["round"].isna().sum() == n - r.patches_scored
        assert set(table["round"].dropna()) == set(range(1, i + 1))
    assert not final.partial and final.stop_reason in ("stable", "budget", "max rounds", "converged")
    np.testing.assert_array_equal(final.chosen, rounds[-1].result.chosen)
    assert final.patches_scored <= max(int(C2F.budget * n), (rounds[0].result.rounds == 1).sum())
    assert final.patches_scored < n
    summary = final.summary()
    assert summary["patches_scored"] == final.patches_scored and summary["n_patches"] == n
    assert summary["search"]["mode"] == "coarse-to-fine" and summary["search"]["partial"] is False


def test_cancel_between_rounds_keeps_the_last_complete_round_and_writes_nothing(
        chest_crop, crop_mask, tiny_model, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    gen = iter_run_ct_montage(chest_crop, tiny_model, replace(BASE, search=C2F), mask=crop_mask)
    last = None
    for step in gen:
        if isinstance(step, MontageRound):
            last = step.result
            if last.search_round == 2:
                break
    gen.close()  # what a napari worker's quit does at the next yield
    assert last is not None and last.partial and last.search_round == 2
    assert len(last.chosen) == BASE.k and last.montage.image.any()
    assert os.listdir(tmp_path) == []


def test_scout_scores_the_coarse_round_and_the_chosen_model_the_montage(chest_crop, crop_mask, tiny_model,
                                                                       exhaustive) -> None:
    from napari_clipmed.models.loader import load_model

    scout = load_model("tiny-random", device="cpu")
    with torch.no_grad():  # a different network than the chosen one
        for p in scout.module.visual.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.05)
    config = replace(BASE, search=replace(C2F, scout="tiny-random"))
    rounds, final = _drive(iter_run_ct_montage(chest_crop, tiny_model, config, mask=crop_mask, scout_model=scout))
    first = rounds[0].result
    assert first.patches_scored == 0 and first.scout_model == scout.identity != tiny_model.identity
    coarse = ~np.isnan(first.scout_score)
    assert coarse[first.chosen].all()
    assert not np.allclose(first.scout_score[coarse], exhaustive.scores.score[coarse], atol=1e-4)
    # after round 1 only the chosen model's scores choose the montage
    scored = final.rounds > 0
    np.testing.assert_allclose(final.scores.score[scored], exhaustive.scores.score[scored], atol=1e-5)
    assert scored[final.chosen].all() and final.rounds.min() == 0 and 1 not in set(final.rounds)
    summary = final.summary()["search"]
    assert summary["scout_model"] == scout.identity and summary["scout_patches_scored"] == coarse.sum()
    assert "scout_score" in final.patches_frame().columns


def test_search_settings_are_checked_and_saved(chest_crop, crop_mask, tiny_model, tmp_path) -> None:
    for bad, message in (({"mode": "fast"}, "unknown search"), ({"mode": "coarse-to-fine", "budget": 0}, "budget"),
                         ({"mode": "coarse-to-fine", "max_rounds": 1}, "at least 2 rounds"),
                         ({"scout": "tiny-random"}, "scout"), ({"coarse_factor": 1}, "coarse_factor"),
                         ({"priority": "random"}, "priority")):
        with pytest.raises(InputError, match=message):
            SearchConfig(**bad)
    config = replace(BASE, search=C2F)
    result = run_ct_montage(chest_crop, tiny_model, config, mask=crop_mask)
    files = result.save(tmp_path)
    saved = json.loads(files["config.json"].read_text())
    saved.pop("model")
    assert saved.pop("precision")["precision"] == "fp32"
    assert CTMontageConfig.from_dict(saved) == config
    scores = json.loads(files["scores.json"].read_text())
    assert scores["patches_scored"] == result.patches_scored < scores["n_patches"]
    table = pd.read_csv(files["patches.csv"])
    assert table["round"].notna().sum() == result.patches_scored
    assert table.loc[table["round"].isna(), "score"].isna().all()


def test_cli_coarse_to_fine_writes_only_the_final_result(chest_crop, tmp_path: Path, capsys) -> None:
    import SimpleITK as sitk

    from napari_clipmed.cli import main

    img = sitk.GetImageFromArray(chest_crop.array)
    img.SetSpacing(tuple(float(s) for s in chest_crop.spacing[::-1]))
    sitk.WriteImage(img, str(tmp_path / "crop.nii.gz"))
    out = tmp_path / "out"
    args = [str(tmp_path / "crop.nii.gz"), "--model", "tiny-random", "--out", str(out), "--quiet", "--k", "6",
            "--size-mm", "24", "--stride-mm", "12", "--cell-size", "32"]
    assert main(["ct-montage", *args, "--search", "coarse-to-fine", "--budget", "0.4"]) == 0
    assert "scored in" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "montage.csv", "montage.png", "patches.csv",
                                                     "scores.json"]
    scores = json.loads((out / "scores.json").read_text())
    assert scores["search"]["partial"] is False and scores["patches_scored"] < scores["n_patches"]
    assert main(["ct-montage", *args, "--search", "exhaustive", "--scout", "tiny-random"]) == 2
    assert "scout" in capsys.readouterr().err
