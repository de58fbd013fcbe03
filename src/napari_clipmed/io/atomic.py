"""The one way napari-clipmed writes files: complete or not at all.

Every writer goes through `atomic_path`: the data is written to a temporary file in the target's
folder, then renamed over the target (atomic on POSIX and Windows), and the temporary file is
removed if anything fails, so a cancelled or failed run never leaves a half-written file.
Files get the mode a plain ``open(path, "w")`` would give (0666 minus the umask), not the 0600
of `tempfile.mkstemp`. `atomic_dir` does the same for a whole folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

__all__ = ["atomic_dir", "atomic_path", "atomic_write", "current_umask", "write_frame", "write_json", "write_npy"]

FRAME_SUFFIXES = (".csv", ".parquet")


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix); on success it is renamed onto `path`.

    The temporary file exists (empty) when the block starts, so writers may open or replace it.
    On any exception, the temporary file is removed and the target is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it replaces `path` (an old folder is removed).

    On any exception the temporary folder is removed and an existing `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~current_umask())
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old / path.name, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write bytes, or text as UTF-8, to `path` atomically."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """`obj` as indented JSON (non-JSON values through `str`), atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_frame(path: str | os.PathLike[str], frame: pd.DataFrame) -> Path:
    """A table as ``.csv`` or ``.parquet`` (chosen by the suffix), without the index, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FRAME_SUFFIXES:
        raise InputError(f"cannot write a table to {path.name}: use a .csv or .parquet file name")
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """One array as ``.npy`` (no pickles), atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(array), allow_pickle=False)
    return Path(path)
