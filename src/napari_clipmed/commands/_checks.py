"""Checks every command runs on its arguments before any model work (one `InputError` each)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable

from napari_clipmed.errors import InputError
from napari_clipmed.io.paths import check_output_dir, check_output_file


def preflight(
    args: argparse.Namespace,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    out_files: Iterable[tuple[str | os.PathLike[str] | None, tuple[str, ...] | None]] = (),
) -> None:
    """Device, seed, cache folder and output paths of a command, checked before anything is read or loaded."""
    from napari_clipmed.models.device import check_device

    if getattr(args, "device", None):
        check_device(args.device)
    seed = getattr(args, "seed", None)
    if seed is not None and seed < 0:
        raise InputError(f"--seed must be 0 or more, got {seed}")
    if getattr(args, "cache_dir", None) and not getattr(args, "no_cache", False):
        check_output_dir(args.cache_dir, "cache folder (--cache-dir)")
    if out_dir is not None:
        check_output_dir(out_dir)
    for path, suffixes in out_files:
        if path is not None:
            check_output_file(path, suffixes=suffixes)
