"""The one atomic-write helper: complete files or none, umask-honouring modes, folders too."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_clipmed.errors import InputError
from napari_clipmed.io.atomic import (
    atomic_dir,
    atomic_path,
    atomic_write,
    current_umask,
    write_frame,
    write_json,
    write_npy,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def test_current_umask_reads_without_changing(umask_027: int) -> None:
    assert current_umask() == 0o027
    assert current_umask() == 0o027


def test_modes_follow_the_umask_like_open(tmp_path: Path, umask_027: int) -> None:
    reference = tmp_path / "plain.txt"
    reference.write_text("x")  # what open() gives under this umask
    written = atomic_write(tmp_path / "atomic.txt", "x")
    assert _mode(written) == _mode(reference) == 0o640
    os.umask(0o002)
    assert _mode(write_json(tmp_path / "a.json", {"a": 1})) == 0o664


def test_writers_round_trip(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    pd.testing.assert_frame_equal(pd.read_csv(write_frame(tmp_path / "t.csv", frame)), frame)
    pd.testing.assert_frame_equal(pd.read_parquet(write_frame(tmp_path / "t.parquet", frame)), frame)
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(np.load(write_npy(tmp_path / "a.npy", array)), array)
    assert json.loads(write_json(tmp_path / "o.json", {"k": [1]}).read_text()) == {"k": [1]}
    assert atomic_write(tmp_path / "deep" / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "deep", "o.json", "t.csv", "t.parquet"]


def test_write_frame_refuses_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"\.csv or \.parquet"):
        write_frame(tmp_path / "t.xlsx", pd.DataFrame({"a": [1]}))
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "result.csv", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".csv" and tmp.exists()
        tmp.write_text("half")
        raise RuntimeError("cancelled")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_replaces_whole_folders(tmp_path: Path, umask_027: int) -> None:
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert [p.name for p in target.iterdir()] == ["a.txt"] and _mode(target) == 0o750
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b.txt").write_text("2")
        raise RuntimeError("failed")
    assert [p.name for p in target.iterdir()] == ["a.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
