"""Retrieval gallery: index a folder (or CSV manifest) of tiles, and turn hits into a grid image + table (+ CSV).

Viewer-free (no Qt, no napari): the retrieval widget runs `iter_index_folder` in a worker and
`napari_clipmed.api` can call these functions directly. Labels come from a manifest's label column
or from class sub-folders (ImageFolder layout); a flat folder of images gives an index without labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed._widgets._path_layers import boxes_to_rectangles, display_uint8
from napari_clipmed.datasets import IMAGE_EXTENSIONS, iter_read_images, load_imagefolder, load_manifest, read_image
from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator
from napari_clipmed.retrieval import EmbeddingIndex

if TYPE_CHECKING:
    import pandas as pd

READ_CHUNK = 256  # images read and embedded at a time, so a big folder never sits in memory at once


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    )


def is_gallery_source(path: Path) -> bool:
    """Whether `path` is something `list_gallery` reads: a folder or a ``.csv`` manifest file."""
    return path.is_dir() or (path.is_file() and path.suffix.lower() == ".csv")


def list_gallery(source: str | os.PathLike[str]) -> tuple[list[Path], list[str] | None]:
    """Image paths and labels of a gallery: a CSV manifest (``path,label[,split]``, relative paths
    from the manifest's folder); ImageFolder (``ROOT/<label>/**/image``) when sub-folders hold
    images; else the images directly in the folder (labels None)."""
    root = Path(source)
    if not is_gallery_source(root):
        raise InputError(f"{root} is neither a folder of image tiles nor a .csv manifest")
    if root.is_file():
        tiles = load_manifest(root)
        return list(tiles.paths), [str(x) for x in tiles.label_names]
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
    """An index built from a folder or manifest, with the files that could not be read."""

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
    """Embed every readable image of `folder` (a folder or a CSV manifest, see `list_gallery`) into an
    `EmbeddingIndex` (ids = file paths)."""
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
        model_id=model.identity,
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


# ----------------------------------------------------------------------------- retrieval hits
HIT_COLUMNS: tuple[str, ...] = ("query", "rank", "path", "label", "similarity")


def hits_frame(hits: Any, query: str, row: int = 0) -> pd.DataFrame:
    """One row per hit of query `row` of a `RetrievalHits`: query, rank (1 = best), path, label, similarity."""
    import pandas as pd

    k = int(hits.indices.shape[1])
    ids = hits.ids[row] if hits.ids is not None else hits.indices[row].astype(str)
    labels = hits.labels[row] if hits.labels is not None else np.full(k, "", dtype=object)
    return pd.DataFrame(
        {
            "query": [query] * k,
            "rank": np.arange(1, k + 1),
            "path": [str(p) for p in ids],
            "label": [str(x) for x in labels],
            "similarity": np.asarray(hits.similarities[row], dtype=np.float64),
        }
    )


def _fit(tile: np.ndarray, cell: int) -> np.ndarray:
    """`tile` resized (aspect kept) to fit a cell x cell square, centred on white."""
    from PIL import Image

    rgb = display_uint8(tile)
    h, w = rgb.shape[:2]
    f = cell / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    resized = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0))
    out = np.full((cell, cell, 3), 255, dtype=np.uint8)
    top, left = (cell - resized.shape[0]) // 2, (cell - resized.shape[1]) // 2
    out[top : top + resized.shape[0], left : left + resized.shape[1]] = resized
    return out


def hits_grid(
    tiles: Sequence[np.ndarray | None],
    frame: pd.DataFrame,
    *,
    cell: int = 128,
    columns: int | None = None,
    gap: int = 4,
    name: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """An RGB grid image of the hit tiles (rank order, row by row) + image-layer kwargs.

    Missing tiles (None) are grey cells. The hits table, extended with each cell's pixel box
    (cell_row0, cell_col0, cell_row1, cell_col1), is in ``metadata["hits"]``.
    """
    n = len(tiles)
    if n == 0 or len(frame) != n:
        raise InputError(f"a hit grid needs one table row per tile, got {n} tiles and {len(frame)} rows")
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    step = cell + gap
    grid = np.full((rows * step - gap, cols * step - gap, 3), 255, dtype=np.uint8)
    boxes = np.zeros((n, 4), dtype=np.int64)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        r0, c0 = r * step, c * step
        grid[r0 : r0 + cell, c0 : c0 + cell] = _fit(tile, cell) if tile is not None else 128
        boxes[i] = (r0, c0, r0 + cell, c0 + cell)
    table = frame.reset_index(drop=True).copy()
    for j, col in enumerate(("cell_row0", "cell_col0", "cell_row1", "cell_col1")):
        table[col] = boxes[:, j]
    query = str(table["query"].iloc[0]) if "query" in table else "query"
    kwargs = {"name": name or f"hits: {query}", "rgb": True, "metadata": {"hits": table, "query": query}}
    return grid, kwargs


def hits_labels(table: pd.DataFrame, name: str) -> tuple[list[np.ndarray], dict[str, Any]]:
    """A Shapes overlay for a hit grid: one frame per cell, text = rank, label and similarity, features = the table."""
    boxes = table[["cell_row0", "cell_col0", "cell_row1", "cell_col1"]].to_numpy()
    text = "#{rank} {label} {similarity:.3f}" if (table["label"] != "").any() else "#{rank} {similarity:.3f}"
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "features": table.reset_index(drop=True),
        "face_color": "transparent",
        "edge_color": "#56B4E9",
        "edge_width": 2.0,
        "text": {"string": text, "size": 8, "color": "black", "anchor": "upper_left"},
    }
    return boxes_to_rectangles(boxes), kwargs


def query_region(source: Any, shapes: Any = None) -> tuple[np.ndarray, str]:
    """The query pixels: the whole image, or the last rectangle drawn in `shapes` (pixel coords of `source`)."""
    from napari_clipmed._widgets._path_layers import shapes_to_boxes

    if shapes is None:
        return source.pixels, source.name
    r0, c0, r1, c1 = shapes_to_boxes(shapes, source)[-1]
    return source.pixels[r0:r1, c0:c1], f"{source.name} [{r0}:{r1}, {c0}:{c1}]"


def placed_hit_layers(
    grid: np.ndarray, kwargs: dict[str, Any], source: Any
) -> tuple[tuple[np.ndarray, dict[str, Any]], tuple[list[np.ndarray], dict[str, Any]]]:
    """The hit grid and its rank/label overlay, placed to the right of the queried image."""
    geometry = source.geometry
    right = geometry.to_world(np.array([0.0, source.full_shape[1] * 1.05]))
    kwargs = kwargs | {"scale": geometry.scale, "translate": (geometry.translate[0], float(right[1]))}
    data, label_kwargs = hits_labels(kwargs["metadata"]["hits"], f"{kwargs['name']} labels")
    label_kwargs |= {"scale": kwargs["scale"], "translate": kwargs["translate"]}
    return (grid, kwargs), (data, label_kwargs)
