"""Cohorts on a real Dask `LocalCluster` (2 worker processes) against the in-process run.

One cluster serves the module. A cohort of crops of the real chest CT (plus one file that is not a
CT) is scored with the tiny model in-process and on the cluster: same rows in the same order. A
failing item is recorded while the others finish; a cancelled run and a run whose worker dies both
resume to the same outputs, nothing missing or duplicated; without `distributed`, `--cluster`
names the extra; after a CLI run no worker process and no temporary file is left.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import psutil
import pytest
import SimpleITK as sitk

from napari_clipmed.cli import main
from napari_clipmed.ct.cohort import evaluate_cohort
from napari_clipmed.ct.io import read_ct
from napari_clipmed.ct.patches import PatchConfig
from napari_clipmed.ct.pipeline import CTMontageConfig
from napari_clipmed.distributed import (
    DASK_TRIM_DEFAULT,
    TRIM_KEY,
    ClusterSpec,
    Item,
    ModelRef,
    cluster_client,
    iter_run_items,
    prune_items,
    run_items,
    torch_friendly_worker_env,
)
from napari_clipmed.errors import InputError

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get this module's item functions by value

CHEST_CT = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct" / "chest_ct.nii.gz"
FAST = CTMontageConfig(patch=PatchConfig(stride_mm=24.0, slice_stride_mm=24.0), k=4, cell_size=32)
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def client():
    with cluster_client("local:2") as c:
        yield c


@pytest.fixture(scope="module")
def cohort_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 3 mm crops of the real chest CT (one intensity-shifted) and one broken 'volume'."""
    ct = read_ct(CHEST_CT)
    folder = tmp_path_factory.mktemp("cohort")
    rows = []
    for i, (z0, shift) in enumerate([(40, 0), (70, 0), (100, 30)]):
        img = sitk.GetImageFromArray((ct.array[z0 : z0 + 16 : 2, ::2, ::2] + shift).astype(np.int16))
        img.SetSpacing((3.0, 3.0, 3.0))
        sitk.WriteImage(img, str(folder / f"case{i}.nii.gz"))
        rows.append(f"case{i}.nii.gz,{i % 2}")
    (folder / "broken.nii.gz").write_bytes(b"not a volume")
    rows.insert(2, "broken.nii.gz,1")
    path = folder / "cohort.csv"
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name]


def _marked_processes(mark: str) -> list[psutil.Process]:
    """Live processes started with CLIPMED_TEST_MARK=`mark` in their environment (inherited by every child)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("CLIPMED_TEST_MARK") == mark and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


# ----------------------------------------------------------------------------- item functions (sent by value)
def square(payload: int, model: object) -> dict[str, object]:
    if payload == 3:
        raise RuntimeError("item 3 is broken")
    return {"table": pd.DataFrame({"x": [payload], "x2": [payload * payload]}), "vec": np.full(4, payload, np.float32)}


def slow_square(payload: int, model: object, delay: float) -> dict[str, object]:
    time.sleep(delay)
    return {"table": pd.DataFrame({"x": [payload], "x2": [payload * payload]})}


def die_once(payload: int, model: object, marker_dir: str) -> dict[str, object]:
    """Kills its own worker process the first time item 2 runs (the scheduler then reruns it elsewhere)."""
    marker = Path(marker_dir) / f"tried-{payload}"
    if payload == 2 and not marker.exists():
        marker.write_text(str(os.getpid()))
        os._exit(1)
    return {"table": pd.DataFrame({"x": [payload], "pid_ok": [True]})}


# ----------------------------------------------------------------------------- tests
def test_cohort_on_the_cluster_equals_the_in_process_run(client, cohort_csv: Path, tmp_path: Path) -> None:
    from napari_clipmed.models.loader import load_model

    local = evaluate_cohort(cohort_csv, load_model("tiny-random", device="cpu"), FAST, n_bootstrap=50, seed=3)
    remote = evaluate_cohort(cohort_csv, ModelRef("tiny-random", device="cpu"), FAST, n_bootstrap=50, seed=3,
                             client=client, work_dir=tmp_path / "run")
    expected, got = local.to_frame(), remote.to_frame()
    assert list(got["case"]) == ["case0", "case1", "broken", "case2"]
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert got.loc[2, "error"] != ""  # the broken case is reported, the others scored
    assert (got.drop(index=2)["error"] == "").all() and got.drop(index=2)["score"].notna().all()
    assert remote.model_name == local.model_name and remote.model_name.startswith("tiny-random:")
    assert remote.auroc == local.auroc and (remote.ci_low, remote.ci_high) == (local.ci_low, local.ci_high)
    # each worker that ran a case loaded the model once, however many cases it ran
    loads = client.run(lambda: len(__import__("napari_clipmed.distributed", fromlist=["x"]).MODEL_LOADS))
    assert sum(loads.values()) >= 1 and max(loads.values()) == 1


def test_a_failing_item_is_recorded_and_the_others_finish(client, tmp_path: Path) -> None:
    items = [Item(f"n{i}", i) for i in range(6)]
    local = run_items(square, items, tmp_path / "local")
    remote = run_items(square, items, tmp_path / "remote", client=client)
    for run in (local, remote):
        assert [f.key for f in run.failed] == ["n3"] and "item 3 is broken" in run.failed[0].error
        assert run.finished == ["n0", "n1", "n2", "n4", "n5"]
        assert (run.out_dir / "failed" / "n3.json").is_file()
    pd.testing.assert_frame_equal(remote.read_table("table"), local.read_table("table"))
    assert list(remote.read_table("table")["x"]) == [0, 1, 2, 4, 5]
    np.testing.assert_array_equal(np.stack(remote.read_arrays("vec")), np.stack(local.read_arrays("vec")))
    assert _files(tmp_path / "remote" / "items") == _files(tmp_path / "local" / "items")


def test_a_cancelled_run_resumes_with_nothing_missing_or_duplicated(client, tmp_path: Path) -> None:
    items = [Item(f"n{i}", i) for i in range(8)]
    fn = functools.partial(slow_square, delay=0.4)
    gen = iter_run_items(fn, items, tmp_path / "run", client=client)
    for step in gen:
        if step.done >= 2:
            break
    gen.close()  # cancels what has not started
    time.sleep(1.0)  # tasks already running finish (atomically) or not at all
    first = sorted(p.name for p in (tmp_path / "run" / "items").iterdir())
    assert 2 <= len(first) < 8
    resumed = run_items(fn, items, tmp_path / "run", client=client)
    assert set(resumed.reused) == set(first) and set(resumed.reused).isdisjoint(resumed.computed)
    assert sorted(resumed.reused + resumed.computed) == sorted(i.key for i in items) and not resumed.failed
    whole = run_items(fn, items, tmp_path / "whole")
    pd.testing.assert_frame_equal(resumed.read_table("table"), whole.read_table("table"))
    assert _files(tmp_path / "run" / "items") == _files(tmp_path / "whole" / "items")
    assert not _temporaries(tmp_path)


def test_a_killed_worker_is_replaced_and_its_item_rerun(client, tmp_path: Path) -> None:
    items = [Item(f"n{i}", i) for i in range(5)]
    run = run_items(functools.partial(die_once, marker_dir=str(tmp_path)), items, tmp_path / "run", client=client)
    assert (tmp_path / "tried-2").exists()  # item 2 did kill a worker
    assert run.finished == [i.key for i in items] and not run.failed
    assert list(run.read_table("table")["x"]) == [0, 1, 2, 3, 4]
    assert not _temporaries(tmp_path / "run")
    client.wait_for_workers(2, timeout=30)  # the nanny restarted it


def test_local_workers_keep_glibcs_adaptive_mmap_threshold(client) -> None:
    # Dask's MALLOC_TRIM_THRESHOLD_=65536 made every torch forward page-fault its activations afresh
    # (1.35x slower per task with two workers busy); local:N workers, restarted ones too, go without it.
    import os

    assert set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) == {None}
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nor is the parent process changed


def test_a_users_own_trim_threshold_is_kept() -> None:
    import dask
    import distributed  # noqa: F401  (loads its configuration defaults, as cluster_client does)

    with dask.config.set({TRIM_KEY: 131072}), torch_friendly_worker_env():
        assert dask.config.get(TRIM_KEY) == 131072
    with torch_friendly_worker_env():
        assert dask.config.get(TRIM_KEY) is None
    assert dask.config.get(TRIM_KEY) == DASK_TRIM_DEFAULT


def test_pruning_keeps_the_current_plans_items_only(tmp_path: Path) -> None:
    run = run_items(square, [Item(f"old{i}", i) for i in range(3)], tmp_path / "run")
    (tmp_path / "run" / "failed" / "gone.json").write_text("{}")
    (tmp_path / "run" / "failed" / "old1.json").write_text("{}")
    removed = prune_items(tmp_path / "run", ["old1", "new0"])
    assert removed == ["old0", "old2"] and run.finished == ["old0", "old1", "old2"]
    assert sorted(p.name for p in (tmp_path / "run" / "items").iterdir()) == ["old1"]
    assert sorted(p.name for p in (tmp_path / "run" / "failed").iterdir()) == ["old1.json"]


def test_item_keys_and_cluster_specs_are_checked() -> None:
    with pytest.raises(InputError, match="unique"):
        run_items(square, [Item("a", 1), Item("a", 2)], "/nonexistent-not-created")
    assert not Path("/nonexistent-not-created").exists()
    assert ClusterSpec.parse("local:3").n_workers == 3
    assert ClusterSpec.parse("tcp://10.0.0.2:8786").address == "tcp://10.0.0.2:8786"
    for bad in ("local:0", "local:x", "slurm", "http://host:1"):
        with pytest.raises(InputError, match="--cluster"):
            ClusterSpec.parse(bad)


def test_without_distributed_the_message_names_the_extra(cohort_csv: Path, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "distributed"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named distributed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shadow.parent), SRC])}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "napari_clipmed.cli", "ct-eval", str(cohort_csv), "--out", str(out),
                           "--model", "tiny-random", "--cluster", "local:2"], check=False, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "napari-clipmed[cluster]" in lines[0]
    assert not out.exists()


def test_tile_chunks_on_the_cluster_equal_the_in_process_store(client, tmp_path: Path) -> None:
    from test_embed import write_tiles

    from napari_clipmed.models.loader import load_model
    from napari_clipmed.ops.embed import EmbedRequest, run
    from napari_clipmed.retrieval import EmbeddingIndex

    tiny = load_model("tiny-random", device="cpu")
    tiles = write_tiles(tmp_path / "tiles", per_class=5)
    local = run(EmbedRequest(tiles, tmp_path / "local", chunk_size=3), tiny)
    remote = run(EmbedRequest(tiles, tmp_path / "remote", chunk_size=3), tiny, client=client)
    assert remote.run.keys == local.run.keys and set(remote.run.computed) == set(remote.run.keys)
    a, b = EmbeddingIndex.load(local.index_path), EmbeddingIndex.load(remote.index_path)
    # workers run torch with one thread: another summation order, equal to float32 rounding
    np.testing.assert_allclose(b.embeddings, a.embeddings, rtol=0, atol=1e-6)
    assert list(b.ids) == list(a.ids) and list(b.labels) == list(a.labels) and b.model_id == a.model_id
    assert remote.skipped == local.skipped and len(remote.skipped) == 1


def test_cli_on_a_local_cluster_leaves_no_process_or_temporary_file(client, cohort_csv: Path, tmp_path: Path) -> None:
    small = cohort_csv.parent / "small.csv"  # two cases and the broken one: the CLI path, not the pipeline, is tested
    small.write_text("\n".join(cohort_csv.read_text().splitlines()[:4]) + "\n")
    mark = f"clipmed-test-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, "PYTHONPATH": SRC, "CLIPMED_TEST_MARK": mark}
    out = tmp_path / "out"
    args = [sys.executable, "-m", "napari_clipmed.cli", "ct-eval", str(small), "--out", str(out), "--model",
            "tiny-random", "--device", "cpu", "--bootstrap", "20", "--stride-mm", "24", "--slice-stride-mm", "24",
            "--k", "4", "--cell-size", "32", "--cluster", "local:1", "--quiet"]
    proc = subprocess.run(args, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "2 of 3 cases scored" in proc.stdout
    cases = pd.read_csv(out / "cases.csv")
    assert len(cases) == 3 and cases["error"].notna().sum() == 1
    assert sorted(p.name for p in (out / "items").iterdir()) == ["000_case0", "001_case1", "002_broken"]
    assert not _temporaries(out)
    assert not _marked_processes(mark)  # the scheduler, nannies and workers all ended with the command
    # rerun on an existing scheduler (this module's): every case reused, same table
    args[args.index("local:1")] = client.scheduler.address
    assert main(args[3:]) == 0  # in this process: no second interpreter start
    pd.testing.assert_frame_equal(pd.read_csv(out / "cases.csv"), cases)
