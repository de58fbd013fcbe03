"""`clipmed robustness | zeroshot | retrieve` through `napari_clipmed.cli.main` with the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from napari_clipmed.cli import main


def test_robustness_command_writes_results(tile_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "results"
    code = main(["robustness", "--data", str(tile_root), "--models", "tiny-random", "--corruptions", "hue",
                 "--severities", "0,4", "--k", "1", "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 0
    table = pd.read_csv(out / "results.csv")
    # 7 zero-shot + retrieval metrics and 7 of the gate and selective prediction, per severity
    assert len(table) == 2 * 14 and set(table["severity"]) == {0, 4} and set(table["corruption"]) == {"hue"}
    # one plot per metric, and gate_flagged, gated accuracy and the selective curve
    assert (out / "summary.md").is_file() and len(list((out / "plots").glob("*.png"))) == 7 + 3
    assert "wrote" in capsys.readouterr().out


def test_robustness_command_compares_a_checkpoint(tile_root: Path, tmp_path: Path) -> None:
    from napari_clipmed.models.loader import load_model
    from napari_clipmed.models.registry import get_spec

    checkpoint = load_model(get_spec("tiny-random").with_changes(seed=9), device="cpu").save(tmp_path / "dapt.pt")
    out = tmp_path / "results"
    code = main(["robustness", "--data", str(tile_root), "--models", f"tiny-random,dapt={checkpoint}",
                 "--corruptions", "hue", "--severities", "0", "--k", "1", "--out", str(out), "--quiet"])
    assert code == 0
    table = pd.read_csv(out / "results.csv")
    assert sorted(set(table["model"])) == ["dapt", "tiny-random"] and len(table) == 2 * 14
    assert "| dapt |" in (out / "summary.md").read_text()


def test_robustness_command_reports_bad_input(tile_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["robustness", "--data", str(tile_root), "--models", "tiny-random", "--k", "1,100",
                 "--corruptions", "hue", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "k=100 is larger than the gallery: 24 readable tiles" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_zeroshot_command_scores_a_labelled_tile_set(tile_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    preds = tmp_path / "preds.csv"
    assert main(["zeroshot", "--data", str(tile_root), "--model", "tiny-random", "--out", str(preds), "--quiet"]) == 0
    frame = pd.read_csv(preds)
    assert list(frame.columns) == ["path", "label", "predicted", "probability", "margin", "entropy", "p(cmu_skin)", "p(he_carcinoma)"]
    assert len(frame) == 24
    np.testing.assert_allclose(frame[["p(cmu_skin)", "p(he_carcinoma)"]].sum(axis=1), 1, atol=1e-5)
    printed = dict(line.split(": ") for line in capsys.readouterr().out.splitlines() if line.startswith("zeroshot_"))
    assert float(printed["zeroshot_accuracy"]) == pytest.approx(skm.accuracy_score(frame["label"], frame["predicted"]),
                                                                abs=1e-4)
    assert float(printed["zeroshot_balanced_accuracy"]) == pytest.approx(
        skm.balanced_accuracy_score(frame["label"], frame["predicted"]), abs=1e-4)


def test_zeroshot_command_on_one_image_needs_classes(tile_root: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    image = tile_root / "cmu_skin" / "tile_00.png"
    assert main(["zeroshot", "--data", str(image), "--model", "tiny-random", "--out", str(tmp_path / "p.csv")]) == 2
    assert "--classes" in capsys.readouterr().err
    assert main(["zeroshot", "--data", str(image), "--model", "tiny-random", "--classes", "tumour,stroma,fat",
                 "--out", str(tmp_path / "p.csv"), "--quiet"]) == 0
    frame = pd.read_csv(tmp_path / "p.csv")
    assert list(frame.columns) == ["path", "predicted", "probability", "margin", "entropy",
                                   "p(tumour)", "p(stroma)", "p(fat)"] and len(frame) == 1


def test_retrieve_command_leave_one_out_and_saved_index(tile_root: Path, tmp_path: Path) -> None:
    hits_csv, index_path = tmp_path / "hits.csv", tmp_path / "gallery.npz"
    assert main(["retrieve", "--gallery", str(tile_root), "--query", str(tile_root), "--model", "tiny-random",
                 "--k", "5", "--out", str(hits_csv), "--save-index", str(index_path), "--quiet"]) == 0
    hits = pd.read_csv(hits_csv)
    assert len(hits) == 24 * 5 and list(hits["rank"][:5]) == [1, 2, 3, 4, 5]
    assert not (hits["query"] == hits["path"]).any()  # a query never retrieves itself
    assert (hits.groupby("query")["similarity"].apply(lambda s: s.is_monotonic_decreasing)).all()

    # the saved index answers a single-image query; its own tile comes first (it is in the gallery)
    image = tile_root / "he_carcinoma" / "tile_03.png"
    single = tmp_path / "one.csv"
    assert main(["retrieve", "--gallery", str(index_path), "--query", str(image), "--model", "tiny-random",
                 "--k", "6", "--out", str(single), "--quiet"]) == 0
    one = pd.read_csv(single)
    assert one["path"].iloc[0] == str(image) and one["similarity"].iloc[0] == pytest.approx(1, abs=1e-5)
    loo = hits[hits["query"] == str(image)]["path"].tolist()
    assert one["path"].iloc[1:].tolist() == loo


def test_retrieve_command_refuses_k_beyond_the_gallery(tile_root: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    code = main(["retrieve", "--gallery", str(tile_root / "cmu_skin"), "--query", str(tile_root / "he_carcinoma"),
                 "--model", "tiny-random", "--k", "13", "--out", str(tmp_path / "h.csv"), "--quiet"])
    assert code == 2
    assert "k=13 is larger than the gallery: it has 12 items" in capsys.readouterr().err
    assert not (tmp_path / "h.csv").exists()


def test_retrieve_refuses_an_index_of_another_model(tile_root: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    from napari_clipmed.retrieval import EmbeddingIndex

    rng = np.random.default_rng(0)
    EmbeddingIndex(rng.normal(size=(30, 64)), model_id="plip:0123456789abcdef").save(tmp_path / "plip.npz")
    code = main(["retrieve", "--gallery", str(tmp_path / "plip.npz"), "--query", str(tile_root / "cmu_skin"),
                 "--model", "tiny-random", "--k", "3", "--out", str(tmp_path / "h.csv"), "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "come from model 'tiny-random:" in err and "'plip:0123456789abcdef'" in err
    assert not (tmp_path / "h.csv").exists()


def test_zeroshot_and_retrieve_take_an_explicit_checkpoint(tile_root: Path, tmp_path: Path) -> None:
    """`--model local --weights FILE` (e.g. a DAPT result) gives what the model it was saved from gives."""
    from napari_clipmed.models.loader import load_model

    checkpoint = load_model("tiny-random", device="cpu").save(tmp_path / "mine.pt")
    for name, extra in (("tiny", ["--model", "tiny-random"]), ("local", ["--model", "local", "--weights", str(checkpoint)])):
        assert main(["zeroshot", "--data", str(tile_root), *extra, "--out", str(tmp_path / f"{name}.csv"), "--quiet",
                     "--no-cache"]) == 0
        assert main(["retrieve", "--gallery", str(tile_root), "--query", str(tile_root), *extra, "--k", "3",
                     "--out", str(tmp_path / f"{name}-hits.csv"), "--quiet", "--no-cache"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "tiny.csv"), pd.read_csv(tmp_path / "local.csv"), atol=1e-5)
    tiny_hits, local_hits = pd.read_csv(tmp_path / "tiny-hits.csv"), pd.read_csv(tmp_path / "local-hits.csv")
    assert list(tiny_hits.columns) == list(local_hits.columns)
    pd.testing.assert_frame_equal(tiny_hits.drop(columns=[c for c in tiny_hits if "model" in c]),
                                  local_hits.drop(columns=[c for c in local_hits if "model" in c]), atol=1e-5)
