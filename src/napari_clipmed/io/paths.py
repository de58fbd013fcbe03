"""Output-path preflight: every command checks where it will write before any model work.

A file where a folder is expected, a folder where a file is expected, a path under a file, or a
place the user cannot write (e.g. under /proc) is one `InputError` naming the path, raised
before anything is read, loaded or written. Nothing is created here: a missing folder is fine
when its nearest existing parent is a writable folder.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from napari_clipmed.errors import InputError


def _nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists (`path` is absolute)."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor)


def _check_writable_folder(folder: Path, target: Path, what: str) -> None:
    """`folder` (an existing ancestor of `target`) must be a folder we can create files in."""
    if not folder.is_dir():
        raise InputError(f"{what} {target} lies under {folder}, which is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what} {target}: no permission to write in {folder}")
    try:  # root passes os.access everywhere; an anonymous temp file is the real test (it leaves nothing)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:  # /proc reports ENOENT here: name the place, not the errno
        detail = "" if err.errno == errno.ENOENT else f" ({err.strerror or err})"
        raise InputError(f"{what} {target}: cannot create files in {folder}{detail}") from None


def check_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """`path` as an absolute Path after checking a folder can be made or written there."""
    target = Path(path).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise InputError(f"{what} {target} is an existing file; give a folder (a new or an existing one)")
    _check_writable_folder(_nearest_existing(target), target, what)
    return target


def check_output_file(
    path: str | os.PathLike[str], what: str = "output file", suffixes: Iterable[str] | None = None
) -> Path:
    """`path` as an absolute Path after checking a file can be written there (suffix too, when given)."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise InputError(f"{what} {target} is an existing folder; give a file name, e.g. {target / 'out'}")
    allowed = tuple(s.lower() for s in suffixes or ())
    if allowed and target.suffix.lower() not in allowed:
        raise InputError(f"{what} {target} must end in {' or '.join(allowed)}")
    _check_writable_folder(_nearest_existing(target.parent), target, what)
    return target


def check_input_exists(path: str | os.PathLike[str], what: str = "input") -> Path:
    """`path` as a Path after checking it exists (a missing file is named as missing, not as corrupt)."""
    target = Path(path).expanduser()
    if not target.exists():
        raise InputError(f"{what} not found: {target}")
    return target
