"""A retrieval gallery from a folder of tiles: list, read (tolerantly), embed (cached), index.

Viewer-free (no Qt, no napari): the retrieval widget runs `iter_index_folder` in a worker and
`napari_clipmed.api` can call it directly. Labels come from class sub-folders (ImageFolder
layout); a flat folder of images gives an index without labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_clipmed.datasets import IMAGE_EXTENSIONS, iter_read_images, load_imagefolder, read_image
from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator
from napari_clipmed.retrieval import EmbeddingIndex

READ_CHUNK = 256  # images read and embedded at a time, so a big folder never sits in memory at once


def model_id_of(model: Any) -> str:
    """A readable identity of a loaded model: registry name + start of its signature (weights, preprocessing)."""
    return f"{model.spec.name}@{model.signature[:12]}"


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def list_gallery(folder: str | os.PathLike[str]) -> tuple[list[Path], list[str] | None]:
    """Image paths and labels: ImageFolder (``ROOT/<label>/**/image``) when sub-folders hold images,
    else the images directly in `folder` (labels None)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder: choose a folder of image tiles")
    subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if any(any(q.suffix.lower() in IMAGE_EXTENSIONS for q in d.rglob("*")) for d in subdirs):
        tiles = load_imagefolder(root)
        return list(tiles.paths), [str(x) for x in tiles.label_names]
    paths = _images_in(root)
    if not paths:
        raise InputError(
            f"the folder {root} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)} directly inside it "
            "or in one sub-folder per class)"
        )
    return paths, None


@dataclass
class GalleryBuild:
    """An index built from a folder, with the files that could not be read."""

    index: EmbeddingIndex
    root: Path
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return self.index.labels is not None


def iter_index_folder(
    model: Any,
    folder: str | os.PathLike[str],
    *,
    cache: Any | None = None,
    batch_size: int = 64,
    chunk: int = READ_CHUNK,
) -> ProgressGenerator[GalleryBuild]:
    """Embed every readable image under `folder` into an `EmbeddingIndex` (ids = file paths)."""
    paths, labels = list_gallery(folder)
    total = len(paths)
    parts: list[np.ndarray] = []
    kept: list[int] = []
    failed: list[tuple[str, str]] = []
    yield Progress(0, total, f"indexing {total} images")
    for start in range(0, total, chunk):
        read = yield from iter_read_images(paths[start : start + chunk], every=chunk)  # warns about failures
        failed += read.failed
        if read.images:
            gen = model.iter_encode_images(read.images, batch_size=batch_size, cache=cache)
            while True:
                try:
                    step = next(gen)
                except StopIteration as stop:
                    parts.append(stop.value)
                    break
                yield Progress(start + int(step.done), total, f"embedded {start + int(step.done)} of {total} images")
            kept += [start + int(i) for i in read.indices]
        yield Progress(min(start + chunk, total), total, f"embedded {min(start + chunk, total)} of {total} images")
    if not kept:
        raise InputError(f"none of the {total} image files under {folder} could be read (first: {failed[0][1]})")
    embeddings = np.concatenate(parts)
    index = EmbeddingIndex(
        embeddings,
        labels=None if labels is None else [labels[i] for i in kept],
        ids=[str(paths[i]) for i in kept],
        model_id=model_id_of(model),
    )
    return GalleryBuild(index, Path(folder), failed)


def index_folder(model: Any, folder: str | os.PathLike[str], **kwargs: Any) -> GalleryBuild:
    """Plain-call twin of `iter_index_folder`."""
    return run_generator(iter_index_folder(model, folder, **kwargs))


def read_tiles(paths: Sequence[str]) -> list[np.ndarray | None]:
    """RGB uint8 pixels of each path (None where the file is gone or unreadable)."""
    tiles: list[np.ndarray | None] = []
    for p in paths:
        try:
            tiles.append(read_image(p))
        except Exception:  # noqa: BLE001 - a hit whose file vanished is shown as a blank cell
            tiles.append(None)
    return tiles
