"""Cohort AUROC/ROC/bootstrap against scikit-learn, and the `clipmed ct-montage` / `ct-eval` commands.

The cohort is six crops of the real chest CT written as NIfTI files; the tiny random CLIP's
scores mean nothing, but every number derived from them must match the references.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from napari_clipmed.cli import main
from napari_clipmed.ct.cohort import evaluate_cohort, read_cohort
from napari_clipmed.ct.io import CTVolume, read_ct
from napari_clipmed.ct.pipeline import CTMontageConfig, run_ct_montage
from napari_clipmed.ct.patches import PatchConfig
from napari_clipmed.errors import InputError

FAST = CTMontageConfig(patch=PatchConfig(stride_mm=24.0, slice_stride_mm=24.0), k=4, cell_size=32)
LABELS = ["ILD", "no ILD", "1", "0", "yes", "no"]


@pytest.fixture(scope="module")
def tiny_model():
    from napari_clipmed.models.loader import load_model

    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def cohort_csv(chest_ct: CTVolume, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 3 mm crops of the chest CT at different heights, as NIfTI files next to a cohort CSV."""
    folder = tmp_path_factory.mktemp("cohort")
    (folder / "volumes").mkdir()
    rows = []
    for i, z0 in enumerate(range(30, 150, 20)):
        crop = chest_ct.array[z0 : z0 + 20 : 2, ::2, ::2]
        img = sitk.GetImageFromArray(crop)
        img.SetSpacing((3.0, 3.0, 3.0))
        img.SetOrigin(tuple(chest_ct.index_to_physical(np.array([[z0, 0, 0]]))[0]))
        sitk.WriteImage(img, str(folder / "volumes" / f"case{i}.nii.gz"))
        rows.append(f"volumes/case{i}.nii.gz,{LABELS[i]}")
    path = folder / "cohort.csv"
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def cohort_result(cohort_csv: Path, tiny_model):
    return evaluate_cohort(cohort_csv, tiny_model, FAST, n_bootstrap=200, seed=7)


def test_auroc_and_roc_match_sklearn(cohort_result) -> None:
    frame = cohort_result.to_frame()
    assert len(frame) == 6 and (frame["error"] == "").all()
    y = frame["label"].to_numpy()
    np.testing.assert_array_equal(y, [1, 0, 1, 0, 1, 0])
    s = frame["score"].to_numpy()
    assert cohort_result.auroc == pytest.approx(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(cohort_result.fpr, fpr)
    np.testing.assert_allclose(cohort_result.tpr, tpr)


def test_bootstrap_ci_matches_a_direct_resampling(cohort_result) -> None:
    frame = cohort_result.to_frame()
    y, s = frame["label"].to_numpy(), frame["score"].to_numpy()
    rng = np.random.default_rng(7)
    values = []
    for _ in range(200):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) == 2:
            values.append(roc_auc_score(y[idx], s[idx]))
    low, high = np.quantile(values, [0.025, 0.975])
    assert (cohort_result.ci_low, cohort_result.ci_high) == pytest.approx((low, high))
    assert cohort_result.ci_low <= cohort_result.auroc <= cohort_result.ci_high


def test_case_scores_are_the_pipeline_probabilities(cohort_result, tiny_model) -> None:
    row = cohort_result.cases[3]
    direct = run_ct_montage(read_ct(row["path"]), tiny_model, FAST)
    assert row["score"] == pytest.approx(direct.probabilities["ILD"])
    assert row["n_patches"] == len(direct.patches)


def test_cohort_files(cohort_result, tmp_path: Path) -> None:
    files = cohort_result.save(tmp_path)
    assert sorted(files) == ["cases.csv", "config.json", "metrics.json", "roc.png"]
    metrics = json.loads(files["metrics.json"].read_text())
    assert metrics["auroc"] == pytest.approx(cohort_result.auroc) and metrics["n_positive"] == 3
    with Image.open(files["roc.png"]) as roc:
        assert roc.size[0] > 100
    assert len(pd.read_csv(files["cases.csv"])) == 6


def test_missing_files_are_all_reported_up_front(cohort_csv: Path, tmp_path: Path, tiny_model) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,label\n{cohort_csv.parent}/volumes/case0.nii.gz,1\ngone_a.nii.gz,0\nfolder/gone_b,1\n")
    with pytest.raises(InputError, match="2 volume\\(s\\) not found.*gone_a.*gone_b"):
        read_cohort(bad)
    out = tmp_path / "out"
    assert main(["ct-eval", str(bad), "--model", "tiny-random", "--out", str(out), "--quiet"]) == 2
    assert not out.exists()  # nothing written
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,label\n{cohort_csv.parent}/volumes/case0.nii.gz,maybe\n")
    with pytest.raises(InputError, match="label"):
        read_cohort(labels)
    one_class = tmp_path / "one.csv"
    one_class.write_text(f"path,label\n{cohort_csv.parent}/volumes/case0.nii.gz,1\n")
    with pytest.raises(InputError, match="positive and negative"):
        read_cohort(one_class)


def test_ct_montage_command_writes_its_files(cohort_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    volume = cohort_csv.parent / "volumes" / "case3.nii.gz"
    out = tmp_path / "montage"
    code = main(["ct-montage", str(volume), "--model", "tiny-random", "--out", str(out), "--k", "4",
                 "--stride-mm", "24", "--cell-size", "32", "--classes", "uip", "--rgb", "--quiet"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "montage.csv", "montage.png", "patches.csv", "scores.json"]
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["probabilities"]) == {"UIP pattern", "other"}
    config = json.loads((out / "config.json").read_text())
    assert config["k"] == 4 and config["patch"]["stride_mm"] == 24.0 and config["patch"]["windows"] is not None
    assert len(pd.read_csv(out / "montage.csv")) == 4
    assert config["precision"]["precision"] == "fp32" and config["precision"]["device"].startswith("CPU, fp32")
    printed = capsys.readouterr()
    assert "lung patches, montage of 4" in printed.out
    assert printed.err.startswith("model tiny-random:") and "on CPU, fp32 (" in printed.err  # the first line
    # The saved config reproduces the run.
    again = tmp_path / "again"
    assert main(["ct-montage", str(volume), "--model", "tiny-random", "--out", str(again), "--config",
                 str(out / "config.json"), "--quiet"]) == 0
    assert json.loads((again / "scores.json").read_text())["probabilities"] == pytest.approx(scores["probabilities"])


def test_ct_commands_refuse_bad_input_and_write_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    flat = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((30, 30), np.int16)), str(flat))
    out = tmp_path / "out"
    assert main(["ct-montage", str(flat), "--model", "tiny-random", "--out", str(out)]) == 2
    assert "2-D" in capsys.readouterr().err
    assert not out.exists()
    volume = tmp_path / "small.nii.gz"
    img = sitk.GetImageFromArray(np.full((6, 20, 20), -1000, np.int16))
    img.SetSpacing((2.0, 2.0, 2.0))
    sitk.WriteImage(img, str(volume))
    assert main(["ct-montage", str(volume), "--model", "tiny-random", "--out", str(out), "--size-mm", "500"]) == 2
    assert "larger than the axial slice" in capsys.readouterr().err
    assert not out.exists()
    assert main(["ct-montage", str(volume), "--model", "tiny-random", "--out", str(out)]) == 2
    assert "no lung found" in capsys.readouterr().err  # an empty lung mask
    assert not out.exists()
    assert main(["ct-montage", str(volume), "--model", "tiny-random", "--out", str(out), "--classes", "nonsense"]) == 2
    assert "preset" in capsys.readouterr().err
