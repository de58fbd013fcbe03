"""`robustness` and `slide-index` on a real Dask `LocalCluster` (2 worker processes) against the in-process runs.

- Markup ink of a chunk of tiles (`corrupt(..., first=)`, `corrupt_tiles(..., first=, shapes=)`) equals the whole
  batch's, also for a tile set that mixes tile sizes.
- The robustness grid on the cluster (one task per model x chunk of tiles, every condition in it) writes the same
  `results.csv` as the in-process run; a chunk that fails is recorded and retried by the next run, and a grid
  extended by a corruption reuses the finished conditions.
- Slides indexed on the cluster (one task per slide) give the in-process index; a broken slide is recorded while
  the others finish; the CLI writes index.npz and answers a query.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from slide_support import carcinoma_pyramid
from test_embed import HE, write_tiles

from napari_clipmed.bench.robustness import RobustnessConfig, corrupt_tiles, iter_run_robustness, run_robustness
from napari_clipmed.cli import main
from napari_clipmed.datasets import load_tileset
from napari_clipmed.distributed import ModelRef, cluster_client
from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.pathology.corrupt import corrupt

SVS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pathology" / "cmu_small_region.svs"


@pytest.fixture(scope="module")
def client():
    with cluster_client("local:2") as c:
        yield c


@pytest.fixture(scope="module", autouse=True)
def _no_plots():
    """The plots (about a second each, 13 per run) are not what these tests compare: results.csv is."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("napari_clipmed.bench.report.write_plots", lambda frame, folder: [])
        yield


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return np.asarray(Image.open(HE).convert("RGB"))


def _mixed_tiles(he: np.ndarray) -> list[np.ndarray]:
    sides = [48, 48, 56, 48, 56, 48, 48, 40]
    return [np.ascontiguousarray(he[100 + 30 * i : 100 + 30 * i + s, 200 : 200 + s]) for i, s in enumerate(sides)]


# ----------------------------------------------------------------------------- corruption offsets
def test_a_chunk_of_a_batch_gets_the_whole_batch_ink(he: np.ndarray) -> None:
    batch = np.stack([he[100 : 148, 100 + 50 * i : 148 + 50 * i] for i in range(7)])
    whole = corrupt(batch, "markup", 3, seed=11)
    parts = np.concatenate([corrupt(batch[:3], "markup", 3, seed=11), corrupt(batch[3:], "markup", 3, seed=11, first=3)])
    np.testing.assert_array_equal(parts, whole)
    assert not np.array_equal(corrupt(batch[3:], "markup", 3, seed=11), whole[3:])  # without the offset: other ink
    np.testing.assert_array_equal(corrupt(batch[4], "markup", 3, seed=11, first=4), whole[4])  # one image alone
    with pytest.raises(InputError, match="first"):
        corrupt(batch, "markup", 1, seed=1, first=-1)


@pytest.mark.parametrize("corruption", ["markup", "blur"])
def test_corrupt_tiles_in_chunks_equals_the_whole_tile_set(he: np.ndarray, corruption: str) -> None:
    tiles = _mixed_tiles(he)
    shapes = [t.shape for t in tiles]
    whole = corrupt_tiles(tiles, corruption, 2, seed=5)
    for a, b in [(0, 2), (2, 5), (5, 8), (1, 7)]:
        part = corrupt_tiles(tiles[a:b], corruption, 2, seed=5, first=a, shapes=shapes)
        for got, want in zip(part, whole[a:b]):
            np.testing.assert_array_equal(got, want)
    uniform = [tiles[i] for i in (0, 1, 3, 5, 6)]  # one size: the offset alone is enough
    whole = corrupt_tiles(uniform, corruption, 2, seed=5)
    for got, want in zip(corrupt_tiles(uniform[2:], corruption, 2, seed=5, first=2), whole[2:]):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="shapes"):
        corrupt_tiles(tiles[2:4], corruption, 2, seed=5, first=2, shapes=[(48, 48, 3)] * 8)


# ----------------------------------------------------------------------------- robustness
def _robustness_config(out: Path, corruptions: tuple[str, ...] = ("markup", "blur")) -> RobustnessConfig:
    return RobustnessConfig(models=("tiny-random",), corruptions=corruptions, severities=(0, 1, 2), ks=(1, 3),
                            out_dir=out, device="cpu", use_cache=False)


@pytest.fixture(scope="module")
def tile_folder(tmp_path_factory: pytest.TempPathFactory, he: np.ndarray) -> Path:
    """12 tiles of 48 px in two classes, one unreadable file, and one 56 px tile (a set of mixed tile sizes)."""
    root = write_tiles(tmp_path_factory.mktemp("robustness") / "tiles", per_class=6)
    Image.fromarray(np.ascontiguousarray(he[300:356, 900:956])).save(root / "tumour" / "t9_large.png")
    return root


def _same_results(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(b / "results.csv"), pd.read_csv(a / "results.csv"), check_exact=False,
                                  rtol=0, atol=1e-5)


def test_robustness_on_the_cluster_equals_the_in_process_run(client, tile_folder: Path, tmp_path: Path) -> None:
    tileset = load_tileset(tile_folder)
    local = run_robustness(tileset, _robustness_config(tmp_path / "local"))
    remote = run_robustness(tileset, _robustness_config(tmp_path / "remote"), client=client, chunk_size=5)
    _same_results(tmp_path / "local", tmp_path / "remote")
    assert len(remote.frame) == len(local.frame) and sorted(remote.computed) == sorted(local.computed)
    assert remote.skipped_images == local.skipped_images and len(remote.skipped_images) == 1
    (folder,) = (tmp_path / "remote" / "cluster").iterdir()  # one model: one folder of items
    assert folder.name.startswith("tiny-random-")
    chunks = sorted(p.name for p in (folder / "items").iterdir())
    assert [c.split("-")[1:3] for c in chunks] == [["0000000", "0000005"], ["0000005", "0000010"], ["0000010", "0000013"]]
    outputs = {p.name for p in (folder / "items" / chunks[0]).iterdir()}
    assert outputs == {"emb-clean.npy", *(f"{kind}-{c}-{s}.npy" for kind in ("emb", "passed")
                                          for c in ("markup", "blur") for s in (1, 2))}
    assert not (tmp_path / "remote" / "results.partial.csv").exists()


def test_an_extended_grid_on_the_cluster_reuses_the_finished_conditions(client, tile_folder: Path,
                                                                        tmp_path: Path) -> None:
    tileset = load_tileset(tile_folder)
    run_robustness(tileset, _robustness_config(tmp_path / "remote"), client=client, chunk_size=5)
    more = run_robustness(tileset, _robustness_config(tmp_path / "remote", ("markup", "blur", "brightness")),
                          client=client, chunk_size=5)
    assert sorted(more.computed) == [("tiny-random", "brightness", s) for s in (0, 1, 2)]
    assert len(more.reused) == 6
    (folder,) = (tmp_path / "remote" / "cluster").iterdir()
    chunks = sorted(p.name for p in (folder / "items").iterdir())  # the first grid's chunks are gone
    assert len(chunks) == 3 and len({c.rsplit("-", 1)[1] for c in chunks}) == 1
    assert all((folder / "items" / c / "emb-brightness-2.npy").is_file() for c in chunks)
    run_robustness(tileset, _robustness_config(tmp_path / "whole", ("markup", "blur", "brightness")))
    _same_results(tmp_path / "whole", tmp_path / "remote")


def test_a_failing_chunk_is_recorded_and_retried(client, tile_folder: Path, tmp_path: Path) -> None:
    tiles = tmp_path / "tiles"
    shutil.copytree(tile_folder, tiles)
    tileset = load_tileset(tiles)
    victim = tiles / "tumour" / "t2.png"
    good = victim.read_bytes()
    out = tmp_path / "remote"
    gen = iter_run_robustness(tileset, _robustness_config(out), client=client, chunk_size=5)
    with pytest.raises(ClipmedError, match="1 of 3 tile chunks failed"):
        for step in gen:
            if step.message.startswith("read "):  # the client has read the tiles: the worker will not manage to
                victim.write_bytes(b"not a png any more")
    (folder,) = (out / "cluster").iterdir()
    assert len(list((folder / "failed").iterdir())) == 1 and len(list((folder / "items").iterdir())) == 2
    assert not (out / "results.csv").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in (folder / "items").iterdir()}

    victim.write_bytes(good)
    run_robustness(tileset, _robustness_config(out), client=client, chunk_size=5)
    assert not list((folder / "failed").iterdir())
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "items").iterdir() if p.name in kept} == kept  # reused
    run_robustness(tileset, _robustness_config(tmp_path / "local"))
    _same_results(tmp_path / "local", out)


def test_robustness_cli_takes_a_cluster(client, tile_folder: Path, tmp_path: Path, capsys) -> None:
    common = ["robustness", "--data", str(tile_folder), "--models", "tiny-random", "--corruptions", "markup",
              "--severities", "0,2", "--k", "1,3", "--device", "cpu", "--no-cache", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "remote"), "--cluster", client.scheduler.address,
                 "--chunk-size", "4"]) == 0
    _same_results(tmp_path / "local", tmp_path / "remote")
    (folder,) = (tmp_path / "remote" / "cluster").iterdir()
    assert len(list((folder / "items").iterdir())) == 4  # 13 readable tiles in chunks of 4
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "bad"), "--cluster", "local:0"]) == 2
    assert "local:N" in capsys.readouterr().err and not (tmp_path / "bad").exists()


# ----------------------------------------------------------------------------- slide index
@pytest.fixture(scope="module")
def slide_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slides")
    pyramid = carcinoma_pyramid(root / "carcinoma.tif", repeat=2)
    broken = root / "broken.svs"
    broken.write_bytes(b"II*\x00" + b"\x00" * 20)  # a TIFF header and nothing else: opening fails on the worker
    return {"pyramid": pyramid, "svs": SVS, "broken": broken}


def test_slide_index_on_the_cluster_equals_the_in_process_index(client, slide_files: dict[str, Path],
                                                                tmp_path: Path) -> None:
    from napari_clipmed.models.loader import load_model
    from napari_clipmed.ops.slide_common import SlideTiling
    from napari_clipmed.ops.slide_index import SlideIndexRequest, run

    request = SlideIndexRequest((str(slide_files["pyramid"]), str(slide_files["svs"])), SlideTiling(batch_size=16),
                                out=str(tmp_path / "local"))
    local = run(request, load_model("tiny-random", device="cpu"))
    remote_request = replace(request, out=str(tmp_path / "remote"))
    remote = run(remote_request, ModelRef("tiny-random", device="cpu"), client=client)
    assert remote.run is not None and sorted(remote.run.computed) == ["carcinoma", "cmu_small_region"]
    a, b = local.index(), remote.index()
    np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=0, atol=1e-6)
    assert list(b.ids) == list(a.ids) and list(b.labels) == list(a.labels) and b.model_id == a.model_id
    pd.testing.assert_frame_equal(remote.to_frame(), local.to_frame())
    assert (tmp_path / "remote" / "items" / "carcinoma" / "slide" / "embeddings.npy").is_file()

    # a broken slide is recorded while the others finish; the next run reuses the finished ones
    with_broken = replace(remote_request, slides=(*remote_request.slides, str(slide_files["broken"])))
    again = run(with_broken, ModelRef("tiny-random", device="cpu"), client=client)
    assert again.run is not None and again.run.reused == ("carcinoma", "cmu_small_region")
    assert [f.key for f in again.run.failed] == ["broken"] and len(again.entries) == 2
    assert (tmp_path / "remote" / "failed" / "broken.json").is_file()
    np.testing.assert_array_equal(again.index().embeddings, b.embeddings)
    with pytest.raises(InputError, match="output folder"):
        run(replace(request, out=None), ModelRef("tiny-random", device="cpu"), client=client)


def test_slide_index_cli_takes_a_cluster(client, slide_files: dict[str, Path], tmp_path: Path) -> None:
    from napari_clipmed.retrieval import EmbeddingIndex

    svs = slide_files["svs"]
    common = ["slide-index", str(slide_files["pyramid"]), str(svs), "--model", "tiny-random", "--device", "cpu",
              "--batch-size", "16", "--query", f"{svs}:1500,800,1800,1100", "--k", "3", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "remote"), "--cluster", client.scheduler.address]) == 0
    hits_local, hits_remote = pd.read_csv(tmp_path / "local" / "hits.csv"), pd.read_csv(tmp_path / "remote" / "hits.csv")
    pd.testing.assert_frame_equal(hits_remote, hits_local, check_exact=False, rtol=0, atol=1e-5)
    index = EmbeddingIndex.load(tmp_path / "remote" / "index.npz")
    assert len(index) == sum(len(np.load(p)) for p in (tmp_path / "local").glob("*/embeddings.npy"))


def test_slide_zeroshot_cli_on_a_cluster_equals_the_in_process_run(client, slide_files: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    common = ["slide-zeroshot", str(slide_files["pyramid"]), str(slide_files["svs"]), "--model", "tiny-random",
              "--device", "cpu", "--classes", "tumor,stroma", "--top-k", "2", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "remote"), "--cluster", client.scheduler.address]) == 0
    local, remote = (pd.read_csv(tmp_path / run / "slide_scores.csv") for run in ("local", "remote"))
    pd.testing.assert_frame_equal(remote, local, check_exact=False, rtol=0, atol=1e-5)
    for stem in ("carcinoma", "cmu_small_region"):
        tiles_local = pd.read_csv(tmp_path / "local" / stem / "tiles.csv")
        tiles_remote = pd.read_csv(tmp_path / "remote" / "items" / stem / "slide" / "tiles.csv")
        pd.testing.assert_frame_equal(tiles_remote, tiles_local, check_exact=False, rtol=0, atol=1e-5)
    config = json.loads((tmp_path / "remote" / "run_config.json").read_text())
    assert config["cluster"] == client.scheduler.address and len(config["slides"]) == 2
