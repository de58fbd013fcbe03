"""Labelled tile sets from disk: an ImageFolder layout or a CSV manifest, and tolerant image reading.

- ImageFolder: ``ROOT/<class name>/**/<image>``; every class folder must hold at least one image.
- Manifest: a CSV with a header ``path,label[,split]``; relative paths are relative to the CSV's folder.

Reading is tolerant: an unreadable file is skipped and reported (`ImageReadResult.failed` and a
warning with the count), so one broken tile never silently aborts a long benchmark.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import TYPE_CHECKING
import warnings

import numpy as np

from napari_clipmed.errors import ClipmedWarning, InputError
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    import pandas as pd

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


@dataclass
class TileSet:
    """Image paths with integer labels (`labels[i]` indexes `class_names`) and an optional split."""

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    split: list[str] | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if self.labels.shape != (len(self.paths),):
            raise InputError(f"{len(self.paths)} paths but {self.labels.size} labels")
        if self.split is not None and len(self.split) != len(self.paths):
            raise InputError(f"{len(self.paths)} paths but {len(self.split)} split entries")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def label_names(self) -> np.ndarray:
        """The class name of every tile."""
        return np.asarray(self.class_names, dtype=str)[self.labels]

    def counts(self) -> dict[str, int]:
        """Tiles per class."""
        return {name: int(np.sum(self.labels == i)) for i, name in enumerate(self.class_names)}

    def subset(self, keep: np.ndarray | Sequence[int] | Sequence[bool]) -> TileSet:
        """The tiles at integer positions (or where a boolean mask is true); class names are kept."""
        idx = np.asarray(keep)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        split = None if self.split is None else [self.split[i] for i in idx]
        return TileSet([self.paths[i] for i in idx], self.labels[idx], list(self.class_names), split, self.source)

    def select_split(self, name: str) -> TileSet:
        """Only the tiles of one split (e.g. ``test``)."""
        if self.split is None:
            raise InputError(f"this tile set has no split column, so split '{name}' cannot be selected")
        mask = np.array([s == name for s in self.split], dtype=bool)
        if not mask.any():
            raise InputError(f"no tile is in split '{name}'; splits present: {', '.join(sorted(set(self.split)))}")
        return self.subset(mask)

    def require_classes(self, minimum: int = 2, purpose: str = "this evaluation") -> None:
        """Raise `InputError` unless at least `minimum` classes have tiles."""
        present = [name for name, n in self.counts().items() if n > 0]
        if len(present) < minimum:
            where = f" in {self.source}" if self.source else ""
            raise InputError(
                f"{purpose} needs at least {minimum} classes, but the tile set{where} has "
                f"{len(present)} ({', '.join(present) or 'none'}); add a folder (or manifest label) per class"
            )

    def to_frame(self) -> pd.DataFrame:
        """One row per tile: path, label (class name)[, split]."""
        import pandas as pd

        cols: dict[str, object] = {"path": [str(p) for p in self.paths], "label": self.label_names}
        if self.split is not None:
            cols["split"] = self.split
        return pd.DataFrame(cols)


def _is_image(path: Path, extensions: Sequence[str]) -> bool:
    return path.is_file() and path.suffix.lower() in extensions and not path.name.startswith(".")


def load_imagefolder(root: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> TileSet:
    """One sub-folder per class (sorted by name); images are found recursively inside each."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        loose = sum(_is_image(p, extensions) for p in root.iterdir())
        hint = f" (it holds {loose} images directly: move them into one folder per class)" if loose else ""
        raise InputError(f"{root} has no class folders{hint}; expected ROOT/<class>/<image>")
    paths: list[Path] = []
    labels: list[int] = []
    empty: list[str] = []
    for code, folder in enumerate(class_dirs):
        files = sorted(p for p in folder.rglob("*") if _is_image(p, extensions))
        if not files:
            empty.append(folder.name)
        paths += files
        labels += [code] * len(files)
    if empty:
        raise InputError(
            f"class folder(s) without images in {root}: {', '.join(empty)} "
            f"(looked for {', '.join(extensions)}); remove them or add images"
        )
    return TileSet(paths, np.array(labels), [d.name for d in class_dirs], None, root)


def load_manifest(path: str | os.PathLike) -> TileSet:
    """A CSV with columns ``path,label[,split]`` (header required; extra columns are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"manifest {path} does not exist")
    from napari_clipmed.io.tables import check_unique, read_csv_rows

    fieldnames, rows = read_csv_rows(path, "manifest")
    header = {(name or "").strip().lower(): name for name in fieldnames}
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise InputError(f"manifest {path} lacks column(s) {', '.join(missing)}; its header must start path,label[,split]")
    if not rows:
        raise InputError(f"manifest {path} lists no images")
    paths, names, split = [], [], []
    for line, row in enumerate(rows, start=2):
        p, label = (row.get(header["path"]) or "").strip(), (row.get(header["label"]) or "").strip()
        if not p or not label:
            raise InputError(f"manifest {path}, line {line}: empty path or label")
        paths.append(Path(p) if Path(p).is_absolute() else path.parent / p)
        names.append(label)
        if "split" in header:
            split.append((row.get(header["split"]) or "").strip())
    check_unique(((i + 2, str(p.resolve()), n) for i, (p, n) in enumerate(zip(paths, names))), f"manifest {path}")
    class_names = sorted(set(names))
    codes = {name: i for i, name in enumerate(class_names)}
    return TileSet(paths, np.array([codes[n] for n in names]), class_names, split if "split" in header else None, path)


def load_tileset(path: str | os.PathLike) -> TileSet:
    """A folder is read as ImageFolder, a ``.csv`` file as a manifest."""
    path = Path(path)
    if path.is_dir():
        return load_imagefolder(path)
    if path.suffix.lower() == ".csv":
        return load_manifest(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    raise InputError(f"{path} is neither a folder of class folders nor a .csv manifest")


def load_images(path: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> tuple[TileSet, bool]:
    """Any image source and whether it carries labels: an ImageFolder or manifest (labelled), or a
    single image file / a folder of images without class folders (unlabelled: one class named "")."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() != ".csv":
        return TileSet([path], np.zeros(1, np.int64), [""], None, path), False
    if path.is_dir():
        loose = sorted(p for p in path.iterdir() if _is_image(p, extensions))
        has_classes = any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir())
        if loose:  # images directly in the folder: read those, unlabelled
            return TileSet(loose, np.zeros(len(loose), np.int64), [""], None, path), False
        if not has_classes:
            raise InputError(f"{path} holds no images ({', '.join(extensions)})")
    return load_tileset(path), True


# ----------------------------------------------------------------------------- reading
@dataclass
class ImageReadResult:
    """The images that could be read, their positions in the input list, and the failures."""

    images: list[np.ndarray]
    indices: np.ndarray
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def failed_frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.failed, columns=["path", "reason"])


def read_image(path: str | os.PathLike) -> np.ndarray:
    """One image as an H x W x 3 uint8 RGB array (Pillow; tifffile for TIFFs Pillow cannot decode).

    16-bit and greyscale images follow the encoder's rule (`models.images.to_rgb8`).
    """
    from PIL import Image

    from napari_clipmed.models.images import pil_pixels, to_rgb8

    path = Path(path)
    with warnings.catch_warnings():  # Pillow's warnings about a damaged file: the error says it
        warnings.simplefilter("ignore")
        try:
            with Image.open(path) as im:
                return to_rgb8(pil_pixels(im))
        except Exception as pil_err:
            if path.suffix.lower() not in (".tif", ".tiff"):
                raise
            import logging

            import tifffile

            quiet = logging.getLogger("tifffile")
            previous, quiet.disabled = quiet.disabled, True
            try:
                arr = tifffile.imread(path)
            except Exception:
                raise pil_err from None
            finally:
                quiet.disabled = previous
            if arr.ndim < 2 or arr.size == 0:
                raise pil_err from None
    return to_rgb8(arr)


def iter_read_images(paths: Sequence[str | os.PathLike], every: int = 64) -> ProgressGenerator[ImageReadResult]:
    """Read images, skipping unreadable ones; yields `Progress` every `every` files."""
    images: list[np.ndarray] = []
    ok: list[int] = []
    failed: list[tuple[str, str]] = []
    for i, p in enumerate(paths):
        try:
            images.append(read_image(p))
            ok.append(i)
        except Exception as err:  # any decoder failure: report, do not abort the run
            failed.append((str(p), f"{type(err).__name__}: {err}"))
        if (i + 1) % every == 0 or i + 1 == len(paths):
            yield Progress(i + 1, len(paths), "reading images")
    if failed:
        first = ", ".join(p for p, _ in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        warnings.warn(f"skipped {len(failed)} unreadable image file(s): {first}{more}", ClipmedWarning, stacklevel=2)
    return ImageReadResult(images, np.asarray(ok, dtype=np.int64), failed)


def read_images(paths: Sequence[str | os.PathLike]) -> ImageReadResult:
    """Plain-call twin of `iter_read_images`."""
    return run_generator(iter_read_images(paths))
