"""The robustness runner end to end on tiles of the real H&E samples, with the tiny random model.

Values are checked against an independent recomputation (scikit-learn metrics and
NearestNeighbors on embeddings encoded here), and an interrupted run must resume without
recomputing finished conditions and end with the same table as an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path
import shutil

import numpy as np
import pandas as pd
from PIL import Image
import pytest
from sklearn import metrics as skm
from sklearn.neighbors import NearestNeighbors

from napari_clipmed.bench.robustness import (
    PARTIAL,
    RobustnessConfig,
    _complete_conditions,
    _read_rows,
    corruption_seed,
    iter_run_robustness,
    metric_names,
    run_robustness,
)
from napari_clipmed.datasets import load_imagefolder
from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.registry import get_spec
from napari_clipmed.models.weights import WeightsNotFoundError
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.zeroshot import PromptSet, ZeroShotClassifier

CORRUPTIONS = ("brightness", "blur")
K = 3


def _config(out: Path, **changes: object) -> RobustnessConfig:
    base = dict(models=("tiny-random",), corruptions=CORRUPTIONS, severities=(0, 1, 2), ks=(1, K), out_dir=out,
                device="cpu")
    return RobustnessConfig(**{**base, **changes})  # type: ignore[arg-type]


def _reference(tile_root: Path, corruption: str, severity: int) -> dict[str, float]:
    """The metrics of one condition recomputed independently of the runner."""
    ts = load_imagefolder(tile_root)
    model = load_model("tiny-random", device="cpu")
    clean = [np.asarray(Image.open(p).convert("RGB")) for p in ts.paths]
    seed = np.random.SeedSequence([corruption_seed(0, corruption, severity), 0])  # one batch: all tiles are 64 x 64
    queries = clean if severity == 0 else list(corrupt(np.stack(clean), corruption, severity, seed=seed))
    g, q = model.encode_images(clean), model.encode_images(queries)
    prompts = PromptSet.from_spec({c: c.replace("_", " ") for c in ts.class_names})
    pred = ZeroShotClassifier.from_prompts(model, prompts).predict(q)
    y = ts.labels
    _, nn = NearestNeighbors(n_neighbors=K + 1, metric="cosine", algorithm="brute").fit(g).kneighbors(q)
    loo = np.array([row[row != i][:K] for i, row in enumerate(nn)])  # leave the query's own tile out
    rel = ts.labels[loo] == y[:, None]
    return {
        "zeroshot_accuracy": skm.accuracy_score(y, pred),
        "zeroshot_balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "zeroshot_f1_weighted": skm.f1_score(y, pred, average="weighted", zero_division=0),
        "retrieval_top@1": rel[:, 0].mean(),
        f"retrieval_top@{K}": rel.any(axis=1).mean(),
        f"retrieval_precision@{K}": rel.mean(),
    }


@pytest.mark.slow
def test_end_to_end_resume_and_reference_values(tile_root: Path, tmp_path: Path) -> None:
    ts = load_imagefolder(tile_root)
    out = tmp_path / "run"
    gen = iter_run_robustness(ts, _config(out))
    for step in gen:  # stop once the first corrupted condition is finished (a killed run)
        if step.done == 3:
            break
    gen.close()
    assert (out / PARTIAL).is_file() and not (out / "results.csv").exists() and not (out / "summary.md").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"  # the lock is gone with the run

    steps = []
    result = run_robustness(ts, _config(out), on_progress=steps.append)
    assert any("(24 cached)" in step.message for step in steps)  # clean embeddings come from the cache
    first = [("tiny-random", "blur", 0), ("tiny-random", "brightness", 0), ("tiny-random", "brightness", 1)]
    assert result.reused == first
    assert result.computed == [("tiny-random", "brightness", 2), ("tiny-random", "blur", 1), ("tiny-random", "blur", 2)]
    assert not (out / PARTIAL).exists()

    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == ["model", "corruption", "severity", "metric", "value", "n"]
    assert len(table) == 1 * 2 * 3 * len(metric_names((1, K))) and set(table["n"]) == {24}
    assert not table.duplicated(["model", "corruption", "severity", "metric"]).any()
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(
        [f"{m.replace('@', '_at_')}.png" for m in metric_names((1, K)) if not m.startswith("selective_")]
        + ["selective_accuracy.png"]  # the accuracy-vs-coverage points, one curve per severity
    )
    with Image.open(out / "plots" / "retrieval_map_at_3.png") as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]  # two panels side by side
    summary = (out / "summary.md").read_text()
    assert "| zeroshot_accuracy | tiny-random |" in summary and "## retrieval_majority@3 per corruption" in summary
    assert json.loads((out / "run.json").read_text())["status"] == "complete"

    # same table as an uninterrupted run
    fresh = run_robustness(ts, _config(tmp_path / "fresh"))
    pd.testing.assert_frame_equal(fresh.frame, result.frame)
    assert fresh.reused == []

    # severity 0 appears under every corruption with the same (clean) values
    clean = table[table["severity"] == 0].pivot(index="metric", columns="corruption", values="value")
    np.testing.assert_array_equal(clean["blur"], clean["brightness"])

    # values against an independent recomputation
    for corruption, severity in (("blur", 0), ("blur", 2)):
        ref = _reference(tile_root, corruption, severity)
        got = table[(table["corruption"] == corruption) & (table["severity"] == severity)].set_index("metric")["value"]
        for name, value in ref.items():
            assert got[name] == pytest.approx(value, abs=1e-9), (corruption, severity, name)

    # a rerun of a complete folder recomputes nothing
    again = run_robustness(ts, _config(out))
    assert again.computed == [] and len(again.reused) == 6
    pd.testing.assert_frame_equal(again.frame, result.frame)
    assert json.loads((out / "run.json").read_text())["precision"]["tiny-random"]["precision"] == "fp32"

    # the same folder in bf16 reuses nothing: results of two precisions never mix
    bf16 = run_robustness(ts, _config(out, precision="bf16"))
    assert bf16.reused == [] and len(bf16.computed) == 6
    assert json.loads((out / "run.json").read_text())["precision"]["tiny-random"]["reason"] == "requested"


def test_unreadable_tiles_are_skipped_and_reported(tile_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "tiles"
    shutil.copytree(tile_root, root)
    (root / "cmu_skin" / "zz_broken.png").write_bytes(b"\x89PNG\r\n truncated")
    ts = load_imagefolder(root)
    assert len(ts) == 25
    with pytest.warns(UserWarning, match="skipped 1 unreadable image file.*zz_broken.png"):
        result = run_robustness(ts, _config(tmp_path / "out", corruptions=("blur",), severities=(0,), ks=(1,)))
    assert result.skipped_images[0][0].endswith("zz_broken.png")
    assert set(result.frame["n"]) == {24}
    skipped = pd.read_csv(tmp_path / "out" / "skipped_images.csv")
    assert skipped["path"].str.endswith("zz_broken.png").all() and len(skipped) == 1
    assert "unreadable images skipped**: 1" in (tmp_path / "out" / "summary.md").read_text()


def test_bad_runs_fail_before_writing_results(tile_root: Path, tmp_path: Path) -> None:
    ts = load_imagefolder(tile_root)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="k=30 is larger than the gallery: 24 readable tiles"):
        run_robustness(ts, _config(out, ks=(1, 30)))
    one = tmp_path / "one"
    shutil.copytree(tile_root / "cmu_skin", one / "cmu_skin")
    with pytest.raises(InputError, match="at least 2 classes.*has 1 \\(cmu_skin\\)"):
        run_robustness(load_imagefolder(one), _config(out))
    with pytest.raises(InputError, match="unknown corruption\\(s\\): fog"):
        run_robustness(ts, _config(out, corruptions=("blur", "fog")))
    with pytest.raises(InputError, match="severities must lie in 0..4"):
        run_robustness(ts, _config(out, severities=(0, 5)))
    with pytest.raises(ClipmedError):  # no checkpoint for a real model offline
        run_robustness(ts, _config(out, models=("tiny-random", "plip")))
    assert not out.exists() or not any(out.glob("results*.csv"))


def test_checkpoints_join_the_grid_under_their_labels(tile_root: Path, tmp_path: Path) -> None:
    """A "LABEL=CHECKPOINT" model (e.g. a DAPT result) is compared with registry models in one run."""
    ts = load_imagefolder(tile_root)
    checkpoint = load_model(get_spec("tiny-random").with_changes(seed=5), device="cpu").save(tmp_path / "mine.pt")
    small = {"corruptions": ("blur",), "severities": (0, 1), "ks": (1,)}
    result = run_robustness(ts, _config(tmp_path / "out", models=("tiny-random", f"mine={checkpoint}"), **small))
    table = result.frame
    assert sorted(set(table["model"])) == ["mine", "tiny-random"]
    mine = table[table["model"] == "mine"].set_index(["corruption", "severity", "metric"])["value"]
    base = table[table["model"] == "tiny-random"].set_index(["corruption", "severity", "metric"])["value"]
    assert not np.allclose(mine.to_numpy(), base.to_numpy())  # other weights, other scores
    # the same checkpoint given through `weights` alone gives the same values
    alone = run_robustness(ts, _config(tmp_path / "alone", models=("mine",), weights={"mine": checkpoint}, **small))
    pd.testing.assert_series_equal(alone.frame.set_index(["corruption", "severity", "metric"])["value"], mine)
    recorded = json.loads((tmp_path / "out" / "run.json").read_text())["config"]
    assert recorded["models"] == ["tiny-random", "mine"] and recorded["weights"] == {"mine": str(checkpoint)}


def test_bad_model_entries_are_refused_before_any_work(tile_root: Path, tmp_path: Path) -> None:
    ts = load_imagefolder(tile_root)
    out = tmp_path / "out"
    with pytest.raises(InputError, match="has no label"):
        _config(out, models=("=x.pt",)).resolved()
    with pytest.raises(InputError, match="'a' is given two checkpoints"):
        _config(out, models=("a=one.pt", "a=two.pt")).resolved()
    with pytest.raises(InputError, match="checkpoints given for models not in the run: b"):
        _config(out, models=("tiny-random",), weights={"b": Path("b.pt")}).resolved()
    with pytest.raises(WeightsNotFoundError, match="checkpoint given for model 'mine', .*missing.pt, does not exist"):
        run_robustness(ts, _config(out, models=("tiny-random", f"mine={tmp_path / 'missing.pt'}")))
    assert not out.exists()


def test_a_different_run_in_the_same_folder_is_refused(tile_root: Path, tmp_path: Path) -> None:
    ts = load_imagefolder(tile_root)
    out = tmp_path / "out"
    run_robustness(ts, _config(out, corruptions=("blur",), severities=(0,), ks=(1,)))
    before = (out / "results.csv").read_bytes()
    with pytest.raises(InputError, match="holds results of a different run"):
        run_robustness(ts, _config(out, corruptions=("blur",), severities=(0,), ks=(1,), seed=1))
    assert (out / "results.csv").read_bytes() == before


def test_partial_file_with_a_torn_last_line(tmp_path: Path) -> None:
    expected = ["a", "b"]
    path = tmp_path / PARTIAL
    path.write_text(
        "model,corruption,severity,metric,value,n\n"
        "m,blur,1,a,0.5,10\nm,blur,1,b,0.25,10\n"  # complete
        "m,blur,2,a,0.5,10\nm,blur,2,b,0.2"  # torn mid-line: condition incomplete
    )
    groups = _complete_conditions(_read_rows(path), expected)
    assert list(groups) == [("m", "blur", 1)]
    assert [r["value"] for r in groups[("m", "blur", 1)]] == ["0.5", "0.25"]
