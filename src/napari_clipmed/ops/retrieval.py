"""Retrieval: index a gallery of tiles (streaming, a chunk of images at a time) and query it with
image regions; the hits become a table, a CSV and a grid image with a rank/label overlay.

Galleries are read by `list_gallery` (one image, a folder, an ImageFolder or a CSV manifest), the
one reader the widget, `api` and `clipmed retrieve` share; an index names its model by
`ClipModel.identity`, so an index saved by any of them loads in the others.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.datasets import IMAGE_EXTENSIONS, iter_read_images, load_imagefolder, load_manifest, read_image
from napari_clipmed.errors import InputError
from napari_clipmed.ops.geometry import Geometry, SourceImage
from napari_clipmed.ops.layerdata import LayerData, boxes_to_rectangles, display_uint8
from napari_clipmed.progress import Progress, ProgressGenerator, forward, run_generator
from napari_clipmed.retrieval import EmbeddingIndex, RetrievalHits

if TYPE_CHECKING:
    import pandas as pd

    from napari_clipmed.models.cache import EmbeddingCache
    from napari_clipmed.models.model import ClipModel

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
    """Image paths and labels of a gallery (the one reader of image collections): one image file; a CSV
    manifest (``path,label[,split]``, relative paths
    from the manifest's folder); ImageFolder (``ROOT/<label>/**/image``) when sub-folders hold
    images; else the images directly in the folder (labels None)."""
    root = Path(source)
    if root.is_file() and root.suffix.lower() in IMAGE_EXTENSIONS:
        return [root], None
    if not is_gallery_source(root):
        raise InputError(f"{root} is neither an image, a folder of image tiles nor a .csv manifest")
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

    def to_frame(self) -> pd.DataFrame:
        """One row per indexed image: path, label."""
        import pandas as pd

        n = len(self.index)
        ids = self.index.ids if self.index.ids is not None else range(n)
        labels = self.index.labels if self.index.labels is not None else [""] * n
        return pd.DataFrame({"path": [str(p) for p in ids], "label": [str(x) for x in labels]})

    def save(self, path: str | os.PathLike[str]) -> Path:
        """The index as one ``.npz`` file (atomically); a folder gets ``index.npz`` inside it."""
        target = Path(path)
        if target.is_dir():
            target = target / "index.npz"
        return self.index.save(target)

    def to_layer_data(self, geometry: Geometry | None = None) -> list[LayerData]:
        """An index is not shown as a layer."""
        return []


@dataclass(frozen=True)
class IndexRequest:
    """Index the gallery at `source` (image, folder, ImageFolder or CSV manifest)."""

    source: Path
    batch_size: int = 64
    chunk: int = READ_CHUNK  # images read and embedded at a time

    def __post_init__(self) -> None:
        source = Path(self.source)
        object.__setattr__(self, "source", source)
        if not source.exists():
            raise InputError(f"the gallery {source} does not exist")
        if int(self.batch_size) < 1 or int(self.chunk) < 1:
            raise InputError(f"batch size and chunk must be at least 1, got {self.batch_size} and {self.chunk}")
        list_gallery(source)  # a folder without images, or another file type, is refused here


def iter_build_index(
    request: IndexRequest, model: ClipModel, cache: EmbeddingCache | None = None
) -> ProgressGenerator[GalleryBuild]:
    """Embed every readable image of the gallery into an `EmbeddingIndex` (ids = file paths), one
    chunk at a time, so a big folder never sits in memory at once."""
    paths, labels = list_gallery(request.source)
    total, chunk = len(paths), int(request.chunk)
    parts: list[np.ndarray] = []
    kept: list[int] = []
    failed: list[tuple[str, str]] = []
    yield Progress(0, total, f"indexing {total} images")
    for start in range(0, total, chunk):
        read = yield from iter_read_images(paths[start : start + chunk], every=chunk)  # warns about failures
        failed += read.failed
        if read.images:
            encoding = model.iter_encode_images(read.images, batch_size=request.batch_size, cache=cache)
            parts.append((yield from forward(encoding, start, total, f"embedding images ({total} in all)")))
            kept += [start + int(i) for i in read.indices]
        yield Progress(min(start + chunk, total), total, f"embedded {min(start + chunk, total)} of {total} images")
    if not kept:
        raise InputError(f"none of the {total} image files under {request.source} could be read (first: {failed[0][1]})")
    index = EmbeddingIndex(
        np.concatenate(parts),
        labels=None if labels is None else [labels[i] for i in kept],
        ids=[str(paths[i]) for i in kept],
        model_id=model.identity,
    )
    return GalleryBuild(index, request.source, failed)


def build_index(request: IndexRequest, model: ClipModel, cache: EmbeddingCache | None = None) -> GalleryBuild:
    """Plain-call twin of `iter_build_index`."""
    return run_generator(iter_build_index(request, model, cache))


def load_index(source: EmbeddingIndex | str | os.PathLike[str]) -> EmbeddingIndex:
    """An index object as is, or one saved with `.save` (``.npz``)."""
    return source if isinstance(source, EmbeddingIndex) else EmbeddingIndex.load(source)


@dataclass(frozen=True, eq=False)
class QueryRequest:
    """Query `index` with each of `queries` (image regions) for the `k` most similar gallery images.

    `query_rows` names the gallery row of each query when the queries are gallery items (each is
    then left out of its own search).
    """

    index: EmbeddingIndex
    queries: tuple[SourceImage, ...]
    k: int = 8
    query_rows: tuple[int, ...] | None = None
    query_labels: tuple[str, ...] | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", load_index(self.index))
        queries = (self.queries,) if isinstance(self.queries, SourceImage) else tuple(self.queries)
        if not queries:
            raise InputError("no query images")
        object.__setattr__(self, "queries", queries)
        object.__setattr__(self, "k", self.index.check_k(self.k, exclude_self=self.query_rows is not None))
        if self.query_labels is not None and len(self.query_labels) != len(queries):
            raise InputError(f"{len(self.query_labels)} query labels for {len(queries)} queries")
        if int(self.batch_size) < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """The hits of every query (rank order) and where the first query lies, for the hit grid."""

    hits: RetrievalHits
    query_names: tuple[str, ...]
    query_labels: tuple[str, ...] | None = None
    model: str = ""
    index_size: int = 0

    def to_frame(self) -> pd.DataFrame:
        """One row per (query, rank): query[, query_label], rank (1 = best), index, path, label, similarity."""
        import pandas as pd

        frames = [hits_frame(self.hits, name, row) for row, name in enumerate(self.query_names)]
        frame = pd.concat(frames, ignore_index=True)
        if self.query_labels is not None:
            frame.insert(1, "query_label", np.repeat(np.asarray(self.query_labels, dtype=object), self.hits.k))
        return frame

    def save(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """hits.csv in `folder` (atomically); see `save_csv` for any file name."""
        return {"hits": self.save_csv(Path(folder) / "hits.csv")}

    def save_csv(self, path: str | os.PathLike[str]) -> Path:
        """The hits table as CSV (``.csv`` added when missing), atomically; the folder must exist."""
        from napari_clipmed.io.atomic import write_frame

        target = Path(path)
        if target.suffix.lower() != ".csv":
            target = target.with_name(target.name + ".csv")
        if not target.parent.is_dir():
            raise InputError(f"cannot write {target}: the folder {target.parent} does not exist")
        return write_frame(target, self.to_frame())

    def to_layer_data(self, geometry: Geometry, row: int = 0, quality_gate: bool = False) -> list[LayerData]:
        """The hit grid of query `row` (RGB image) and its rank/label overlay (shapes), placed to the
        right of the queried image (`geometry.shape` gives its size). With `quality_gate`, hits that
        fail the shipped quality gate get a thick red outline and their reasons (docs/quality.md)."""
        frame = hits_frame(self.hits, self.query_names[row], row)
        tiles = read_tiles(frame["path"].tolist())
        grid, kwargs = hits_grid(tiles, frame)
        plane = geometry.last(2)
        width = plane.shape[1] if plane.shape else 0
        right = plane.to_world(np.array([0.0, width * 1.05]))
        kwargs = kwargs | {"scale": plane.scale, "translate": (plane.translate[0], float(right[1]))}
        data, label_kwargs = hits_labels(kwargs["metadata"]["hits"], f"{kwargs['name']} labels")
        label_kwargs |= {"scale": kwargs["scale"], "translate": kwargs["translate"]}
        if quality_gate and tiles and all(t is not None for t in tiles):
            from napari_clipmed.ops.qc import gate_images, mark_failing

            try:
                label_kwargs = mark_failing(label_kwargs, gate_images([t for t in tiles if t is not None]))
            except InputError:  # tiles too small to measure: shown unmarked
                pass
        return [(grid, kwargs, "image"), (data, label_kwargs, "shapes")]


def iter_query(
    request: QueryRequest, model: ClipModel, cache: EmbeddingCache | None = None
) -> ProgressGenerator[RetrievalResult]:
    """Embed the queries with `model` (which must be the index's) and search the index."""
    index = request.index
    index.check_model(model.identity, "the queries")  # before any model work
    pixels = [q.pixels for q in request.queries]
    embeddings = yield from model.iter_encode_images(pixels, batch_size=request.batch_size, cache=cache)
    hits = yield from index.iter_search(embeddings, request.k, model_id=model.identity, query_rows=request.query_rows)
    yield Progress(1, 1, f"top {request.k} of {len(index)} found")
    return RetrievalResult(hits, tuple(q.name for q in request.queries), request.query_labels, model.identity, len(index))


def query(request: QueryRequest, model: ClipModel, cache: EmbeddingCache | None = None) -> RetrievalResult:
    """Plain-call twin of `iter_query`."""
    return run_generator(iter_query(request, model, cache))


def read_tiles(paths: Sequence[str]) -> list[np.ndarray | None]:
    """RGB uint8 pixels of each path (None where the file is gone or unreadable)."""
    tiles: list[np.ndarray | None] = []
    for p in paths:
        try:
            tiles.append(read_image(p))
        except Exception:  # noqa: BLE001 - a hit whose file vanished is shown as a blank cell
            tiles.append(None)
    return tiles


def hits_frame(hits: RetrievalHits, query: str, row: int = 0) -> pd.DataFrame:
    """One row per hit of query `row`: query, rank (1 = best), index, path, label, similarity."""
    import pandas as pd

    k = hits.k
    ids = hits.ids[row] if hits.ids is not None else hits.indices[row].astype(str)
    labels = hits.labels[row] if hits.labels is not None else np.full(k, "", dtype=object)
    return pd.DataFrame(
        {
            "query": [query] * k,
            "rank": np.arange(1, k + 1),
            "index": np.asarray(hits.indices[row], dtype=np.int64),
            "path": [str(p) for p in ids],
            "label": [str(x) for x in labels],
            "similarity": np.asarray(hits.similarities[row], dtype=np.float64),
        }
    )


HIT_COLUMNS: tuple[str, ...] = ("query", "rank", "path", "label", "similarity")


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
