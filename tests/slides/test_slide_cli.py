"""`clipmed slide-zeroshot` / `slide-index`: outputs per slide, resume, and bad input that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from napari_clipmed.cli import main


def test_slide_zeroshot_writes_each_slide_and_resumes(slides: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    common = ["--model", "tiny-random", "--device", "cpu", "--classes", "tumor,stroma", "--top-k", "2", "--out", str(out), "--quiet"]
    assert main(["slide-zeroshot", str(slides["pyramid"]), *common]) == 0
    first = (out / "carcinoma" / "scores.json").stat().st_mtime_ns
    # a second run with one more slide: the finished one is skipped, the new one done
    assert main(["slide-zeroshot", str(slides["pyramid"]), str(slides["svs"]), *common, "--table", "parquet"]) == 0
    assert "carcinoma: already done" in capsys.readouterr().out
    assert (out / "carcinoma" / "scores.json").stat().st_mtime_ns == first
    folder = out / "cmu_small_region"
    assert {p.name for p in folder.iterdir()} >= {"tiles.parquet", "heatmap.tif", "scores.json", "config.json", "top_tiles"}
    summary = pd.read_csv(out / "slide_scores.csv")
    assert list(summary["slide"]) == [str(slides["pyramid"]), str(slides["svs"])]
    config = json.loads((out / "run_config.json").read_text())
    assert config["target_mpp"] == 0.5 and config["tile"] == 224 and config["classes"] == {"tumor": ["tumor"], "stroma": ["stroma"]}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left


@pytest.mark.parametrize("bad", ["truncated", "grey", "no_mpp"])
def test_bad_slide_is_one_message_and_nothing_written(slides: dict[str, Path], tmp_path: Path, bad: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["slide-zeroshot", str(slides["pyramid"]), str(slides[bad]), "--model", "tiny-random", "--device", "cpu",
                 "--classes", "a,b", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("clipmed slide-zeroshot: error:")
    assert not out.exists()


def test_slide_index_with_a_query(slides: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "index"
    assert main(["slide-index", str(slides["svs"]), "--model", "tiny-random", "--device", "cpu", "--out", str(out),
                 "--query", f"{slides['svs']}:1500,800,1800,1100", "--k", "3", "--quiet"]) == 0
    hits = pd.read_csv(out / "hits.csv")
    assert len(hits) == 3 and hits["similarity"].is_monotonic_decreasing
    assert (out / "cmu_small_region" / "embeddings.npy").is_file()


def test_slide_zeroshot_is_an_item_for_the_cluster_runner(slides: dict[str, Path], tmp_path: Path) -> None:
    """`item_outputs` is the per-slide unit `distributed.iter_run_items` maps (here in-process, no Dask)."""
    from napari_clipmed.distributed import Item, run_items
    from napari_clipmed.models.loader import load_model
    from napari_clipmed.ops.slide_zeroshot import SlideZeroShotRequest, item_outputs

    model = load_model("tiny-random", device="cpu")
    items = [Item("carcinoma", SlideZeroShotRequest(str(slides["pyramid"]), ["tumor", "stroma"], top_k=1))]
    result = run_items(item_outputs, items, tmp_path, model=model)
    assert result.computed == ("carcinoma",) and not result.failed
    folder = tmp_path / "items" / "carcinoma" / "slide"
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["tiles"] == 36 and (folder / "heatmap.tif").is_file()
    again = run_items(item_outputs, items, tmp_path, model=model)
    assert again.reused == ("carcinoma",)
