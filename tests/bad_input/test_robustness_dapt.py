"""Bad input and interruptions of `robustness` and `dapt`; the run lock, the status and the atomic writer."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pandas as pd
import pytest

from napari_clipmed.bench.robustness import (
    PARTIAL,
    RESULTS,
    RobustnessConfig,
    run_robustness,
)
from napari_clipmed.datasets import load_tileset
from napari_clipmed.errors import InputError
from napari_clipmed.io.atomic import atomic_write, write_json
from napari_clipmed.io.runfolder import (
    RunFolder,
    defer_interrupts,
    is_locked,
    read_status,
)

from .conftest import one_line_error, tree


def robustness(cli, tile_folder: Path, out: Path, *extra: object):
    return cli("robustness", "--data", tile_folder, "--models", "tiny-random", "--corruptions", "brightness",
               "--severities", "0,1", "--k", "1,3", "--out", out, "--quiet", "--no-cache", *extra)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--seed", "-1"], "--seed must be 0 or more"),
        (["--templates", "a {} and {}"], "needs a {}"),
        (["--templates", ";;"], "at least one prompt template"),
        (["--device", "tpu"], "unknown device"),
        (["--corruptions", "brightnes"], "unknown corruption"),
    ],
)
def test_robustness_arguments_are_checked_before_any_work(cli, tmp_path: Path, tile_folder: Path, extra, needle) -> None:
    code, _, err = robustness(cli, tile_folder, tmp_path / "run", *extra)
    assert code == 2
    one_line_error(err, "robustness", needle)
    assert tree(tmp_path / "run") == []


def test_robustness_output_paths(cli, tmp_path: Path, tile_folder: Path, a_file: Path) -> None:
    for out, needle in ((a_file, "is an existing file"), (a_file / "run", "which is a file"), (Path("/proc/run"), "/proc")):
        code, _, err = robustness(cli, tile_folder, out)
        assert code == 2
        one_line_error(err, "robustness", needle)
    with pytest.raises(InputError, match="is an existing file"):  # the Python call checks it too
        RobustnessConfig(models=("tiny-random",), out_dir=a_file).resolved()


def test_a_changed_grid_extends_the_run_and_never_deletes_finished_work(tmp_path: Path, tile_folder: Path) -> None:
    tiles = load_tileset(tile_folder)
    out = tmp_path / "run"

    def config(severities: tuple[int, ...], corruptions: tuple[str, ...] = ("brightness",)) -> RobustnessConfig:
        return RobustnessConfig(models=("tiny-random",), corruptions=corruptions, severities=severities, ks=(1, 3),
                                out_dir=out, use_cache=False)

    first = run_robustness(tiles, config((0, 1)))
    smaller = run_robustness(tiles, config((0,)))  # a smaller grid on a complete folder
    assert smaller.computed == [] and smaller.reused == [("tiny-random", "brightness", 0)]
    table = pd.read_csv(out / RESULTS)
    pd.testing.assert_frame_equal(table, first.frame.reset_index(drop=True), check_dtype=False)  # nothing lost
    wider = run_robustness(tiles, config((0, 1), ("brightness", "blur")))
    assert sorted(wider.computed) == [("tiny-random", "blur", 0), ("tiny-random", "blur", 1)]
    table = pd.read_csv(out / RESULTS)
    assert set(zip(table.corruption, table.severity)) == {("brightness", 0), ("brightness", 1), ("blur", 0), ("blur", 1)}
    kept = table[table.corruption == "brightness"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first.frame.reset_index(drop=True), check_dtype=False)
    assert not (out / PARTIAL).exists() and json.loads((out / "run.json").read_text())["status"] == "complete"
    assert read_status(out, "run.json")["status"] == "complete"


def test_a_second_run_on_a_locked_folder_is_refused(cli, tmp_path: Path, tile_folder: Path) -> None:
    out = tmp_path / "run"
    with RunFolder(out, "run.json", command="robustness") as held:
        assert is_locked(out) and read_status(out, "run.json")["status"] == "running"
        code, _, err = robustness(cli, tile_folder, out)
        assert code == 2
        one_line_error(err, "robustness", "another run (robustness, pid", str(out))
        held.set("running", note="still mine")
    assert read_status(out, "run.json")["note"] == "still mine"  # the refused run changed nothing


def test_status_is_accurate_after_failure_interrupt_and_a_killed_process(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), RunFolder(tmp_path / "a"):
        raise RuntimeError("disk full")
    assert read_status(tmp_path / "a") | {"updated": None} == read_status(tmp_path / "a") | {"updated": None}
    assert read_status(tmp_path / "a")["status"] == "failed" and read_status(tmp_path / "a")["reason"] == "disk full"
    with pytest.raises(KeyboardInterrupt), RunFolder(tmp_path / "b"):
        raise KeyboardInterrupt
    assert read_status(tmp_path / "b")["status"] == "interrupted"
    killed = tmp_path / "c"
    killed.mkdir()
    write_json(killed / "status.json", {"status": "running", "pid": 999999})  # what a SIGKILLed run leaves
    assert read_status(killed)["status"] == "interrupted"
    with pytest.raises(InputError), RunFolder(tmp_path / "d", defer_status=True):
        raise InputError("refused before it began")
    assert not (tmp_path / "d").exists()  # nothing written


def test_ctrl_c_waits_for_the_final_phase() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), defer_interrupts():
        os.kill(os.getpid(), signal.SIGINT)
        done.append("renames finished")
    assert done == ["renames finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "results.csv", "a,b\n")
        plain = tmp_path / "plain.csv"
        plain.write_text("a,b\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask == stat.S_IMODE(plain.stat().st_mode)


def test_dapt_bad_templates_and_output_are_one_line(cli, tmp_path: Path, a_file: Path) -> None:
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("text\nfibrosis\nnormal lung\n", encoding="utf-8")
    code, _, err = cli("dapt", manifest, "--model", "tiny-random", "--out", tmp_path / "run",
                       "--templates", "a {} and {}")
    assert code == 2
    one_line_error(err, "dapt", "needs a {}")
    code, _, err = cli("dapt", manifest, "--model", "tiny-random", "--out", a_file)
    assert code == 2
    one_line_error(err, "dapt", "is an existing file")
    code, _, err = cli("dapt", manifest, "--model", "tiny-random", "--out", tmp_path / "run", "--seed", "-3")
    assert code == 2
    one_line_error(err, "dapt", "--seed must be 0 or more")
    assert tree(tmp_path / "run") == []


def test_dapt_crash_on_a_truncated_image_is_recorded_as_failed(cli, tmp_path: Path, tile_folder: Path) -> None:
    images = sorted(tile_folder.rglob("*.png"))[:4]
    cut = tmp_path / "cut.png"
    big = tmp_path / "big.png"
    from PIL import Image

    Image.effect_noise((64, 64), 60).convert("RGB").save(big)
    cut.write_bytes(big.read_bytes()[: big.stat().st_size // 2])  # the header (size) passes the pre-check
    manifest = tmp_path / "pairs.csv"
    rows = [f"{p},tile {i}" for i, p in enumerate(images)] + [f"{cut},damaged tile"]
    manifest.write_text("image,text\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    code, _, err = cli("dapt", manifest, "--model", "tiny-random", "--out", out, "--epochs", "1", "--batch-size", "5",
                       "--val-fraction", "0", "--quiet", "--device", "cpu")
    assert code == 2
    one_line_error(err, "dapt", "cut.png", "rerun to resume")
    status = read_status(out, "dapt-config.json")
    assert status["status"] == "failed" and "cut.png" in status["reason"]
    assert not is_locked(out)
