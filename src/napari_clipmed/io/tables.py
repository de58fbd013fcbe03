"""Reading the CSV tables users write by hand (manifests, cohorts): one encoding rule, one duplicate rule."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable
from pathlib import Path

from napari_clipmed.errors import InputError


def read_csv_rows(path: str | os.PathLike[str], what: str = "CSV file") -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a UTF-8 CSV (a BOM is fine); any other encoding is one clear `InputError`."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except UnicodeDecodeError as err:
        raise InputError(
            f"{what} {path} is not UTF-8 text (byte {err.start}: {err.object[err.start:err.start + 1]!r}; "
            "saved as Latin-1 or Windows-1252?); save it as 'CSV UTF-8' and try again"
        ) from None
    except csv.Error as err:
        raise InputError(f"{what} {path} is not a readable CSV table ({err})") from None


def check_unique(entries: Iterable[tuple[int, str, str]], what: str) -> None:
    """`entries` are (line, key, label): a key listed twice (with the same or another label) is refused."""
    first: dict[str, tuple[int, str]] = {}
    problems: list[str] = []
    for line, key, label in entries:
        if key in first:
            other_line, other_label = first[key]
            kind = "repeats" if other_label == label else f"gives label {label!r} against {other_label!r} on"
            problems.append(f"line {line} {kind} line {other_line} ({key})")
        else:
            first[key] = (line, label)
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise InputError(f"{what} lists an image more than once: {'; '.join(problems[:3])}{more}; keep one row per image")
