"""Retrieval over whole slides: index one or several slides' tissue tiles, query with a rectangle.

`iter_index_slide` is the per-slide unit: the slide's tissue tiles at the target magnification are
embedded and, with an output folder, saved atomically as `<out>/<slide>/` (embeddings.npy, tiles.csv,
config.json last). A resumed run loads the slides already done instead of encoding them again. With a
Dask client (`iter_run(..., client=)`, `iter_run_on_cluster`) each slide is one task of
`distributed.iter_run_items` and lands in `<out>/items/<slide>/slide/`; the gallery is built from those.
A query is any level-0 rectangle of a slide (drawn at whatever zoom): it is read at the index's
magnification, embedded, and matched against every tile; hits come back as boxes on their slides
and as a grid of the hit tiles.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.io.slide import open_slide, slide_stem
from napari_clipmed.ops.layerdata import LayerData
from napari_clipmed.ops.slide_common import (
    SlideTiling,
    check_slide_path,
    iter_embed_grid,
    rectangles,
    slide_geometry_args,
    tile_slide,
)
from napari_clipmed.pathology.slide_tiler import TileGrid, read_box, read_tiles
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator
from napari_clipmed.retrieval import EmbeddingIndex

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from napari_clipmed.distributed import ModelRef, RunItemsResult
    from napari_clipmed.models.model import ClipModel

DONE_FILE = "config.json"  # written last: its presence marks a finished slide


@dataclass(frozen=True)
class SlideIndexRequest:
    """Slides to index, how to tile them, and an optional output folder (one subfolder per slide)."""

    slides: tuple[str, ...]
    tiling: SlideTiling = field(default_factory=SlideTiling)
    out: str | None = None

    def __post_init__(self) -> None:
        slides = (self.slides,) if isinstance(self.slides, str) else tuple(self.slides)
        if not slides:
            raise InputError("give at least one slide to index")
        object.__setattr__(self, "slides", tuple(check_slide_path(s) for s in slides))
        stems = [slide_stem(s) for s in self.slides]
        twins = sorted({s for s in stems if stems.count(s) > 1})
        if twins:
            raise InputError(f"slides must have distinct names (their output folders): {', '.join(twins)}")


@dataclass(frozen=True)
class SlideEmbeddings:
    """One slide's tile grid and tile embeddings."""

    slide: str
    grid: TileGrid
    embeddings: np.ndarray  # (N, D)
    model: str

    @property
    def name(self) -> str:
        return slide_stem(self.slide)

    def save(self, folder: str | Path) -> Path:
        from napari_clipmed.io.atomic import (
            atomic_dir,
            write_frame,
            write_json,
            write_npy,
        )

        g = self.grid
        with atomic_dir(folder) as tmp:
            write_npy(tmp / "embeddings.npy", self.embeddings)
            write_frame(tmp / "tiles.csv", g.to_frame())
            write_json(tmp / DONE_FILE, {
                "operation": "slide-index", "slide": self.slide, "model": self.model,
                "slide_shape": list(g.slide_shape), "slide_mpp": g.slide_mpp, "target_mpp": g.target_mpp,
                "tile": g.tile, "level": g.level, "level_downsample": g.level_downsample,
                "origin": list(g.origin), "grid_shape": list(g.grid_shape),
            })
        return Path(folder)

    @classmethod
    def load(cls, folder: str | Path) -> SlideEmbeddings:
        import pandas as pd

        folder = Path(folder)
        try:
            meta = json.loads((folder / DONE_FILE).read_text())
            table = pd.read_csv(folder / "tiles.csv")
            embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        except (OSError, ValueError, KeyError) as err:
            raise InputError(f"cannot read the slide index in {folder}: {err}") from err
        grid = TileGrid(
            tuple(meta["slide_shape"]), meta["slide_mpp"], meta["target_mpp"], meta["tile"], meta["level"],
            meta["level_downsample"], tuple(meta["origin"]), tuple(meta["grid_shape"]),
            table[["grid_row", "grid_col"]].to_numpy(np.int64), table["tissue_fraction"].to_numpy(),
        )
        return cls(meta["slide"], grid, embeddings, meta["model"])


def iter_index_slide(slide: str, tiling: SlideTiling, model: Any, out: str | None = None) -> ProgressGenerator[SlideEmbeddings]:
    """Embed one slide's tissue tiles (or load them from `out/<slide>` when a previous run finished it)."""
    folder = Path(out) / slide_stem(slide) if out is not None else None
    if folder is not None and (folder / DONE_FILE).is_file():
        done = SlideEmbeddings.load(folder)
        if done.model == model.identity and done.grid.target_mpp == tiling.target_mpp and done.grid.tile == tiling.tile:
            yield Progress(len(done.grid), len(done.grid), f"{done.name}: already indexed")
            return done
    opened, _tissue, grid = tile_slide(slide, tiling)
    try:
        embeddings = yield from iter_embed_grid(opened, grid, model, tiling.batch_size)
    finally:
        opened.close()
    result = SlideEmbeddings(slide, grid, embeddings, model.identity)
    if folder is not None:
        result.save(folder)
    return result


def run_slide(slide: str, tiling: SlideTiling, model: Any, out: str | None = None) -> SlideEmbeddings:
    """Plain call of `iter_index_slide`: the unit a cluster maps over slides."""
    return run_generator(iter_index_slide(slide, tiling, model, out))


@dataclass(frozen=True)
class SlideIndexResult:
    """Every indexed slide's tiles and embeddings, searchable as one gallery.

    On a cluster, `run` says which slides were computed, reused or failed (`entries` holds the finished ones).
    """

    entries: tuple[SlideEmbeddings, ...]
    tiling: SlideTiling
    run: RunItemsResult | None = field(default=None, compare=False, repr=False)

    def to_frame(self) -> pd.DataFrame:
        """All tiles: slide, tile, grid position, level-0 box, µm, tissue fraction."""
        import pandas as pd

        frames = []
        for e in self.entries:
            frame = e.grid.to_frame()
            frame.insert(0, "slide", e.slide)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def index(self) -> EmbeddingIndex:
        """One gallery over all slides; labels are the slide paths, ids `slide#tile`."""
        emb = np.concatenate([e.embeddings for e in self.entries])
        labels = np.concatenate([[e.slide] * len(e.grid) for e in self.entries])
        ids = np.concatenate([[f"{e.name}#{i}" for i in range(len(e.grid))] for e in self.entries])
        return EmbeddingIndex(emb, labels=labels, ids=ids, model_id=self.entries[0].model)

    def iter_query(self, model: Any, slide: str, box: tuple[float, float, float, float], k: int = 12,
                   slide_mpp: float | None = None) -> ProgressGenerator[SlideHits]:
        """The `k` tiles most similar to the level-0 `box` of `slide`, read at the index's magnification."""
        if not isinstance(k, int) or k < 1:
            raise InputError(f"k (hits to return) must be a positive whole number; got {k!r}")
        with open_slide(slide, mpp=slide_mpp or self.tiling.slide_mpp) as opened:
            query = read_query(opened, box, self.tiling.target_mpp)
        yield Progress(0, 1, "embedding the query region")
        vector = model.encode_images([query])
        hits = self.index().search(vector, min(k, sum(len(e.grid) for e in self.entries)), model_id=model.identity)
        entries = {e.name: e for e in self.entries}
        rows = []
        assert hits.ids is not None  # the index is built with ids
        for rank, (hit_id, sim) in enumerate(zip(hits.ids[0], hits.similarities[0]), start=1):
            name, _, tile = str(hit_id).rpartition("#")
            e = entries[name]
            y0, x0, y1, x1 = e.grid.boxes[int(tile)]
            rows.append({"rank": rank, "slide": e.slide, "tile": int(tile), "similarity": float(sim),
                         "y0_px": y0, "x0_px": x0, "y1_px": y1, "x1_px": x1})
        import pandas as pd

        frame = pd.DataFrame(rows)
        tiles: list[tuple[int, np.ndarray]] = []
        for e in self.entries:  # read each slide's hit tiles in one pass
            chosen = frame.index[frame["slide"] == e.slide]
            if len(chosen):
                with open_slide(e.slide, mpp=e.grid.slide_mpp) as opened:
                    tiles.extend(zip(chosen, read_tiles(opened, e.grid, frame.loc[chosen, "tile"].to_numpy())))
        pixels = np.stack([t for _, t in sorted(tiles, key=lambda item: item[0])])
        yield Progress(1, 1, f"{len(frame)} hits")
        return SlideHits(frame, pixels, query, {e.slide: e.grid.slide_mpp for e in self.entries})

    def query(self, model: Any, slide: str, box: tuple[float, float, float, float], k: int = 12) -> SlideHits:
        return run_generator(self.iter_query(model, slide, box, k))


def read_query(slide: Any, box: tuple[float, float, float, float], target_mpp: float) -> np.ndarray:
    """The level-0 `box` of an opened slide at `target_mpp` µm/px, from the best level."""
    y0, x0, y1, x1 = (float(v) for v in box)
    if y1 <= y0 or x1 <= x0:
        raise InputError(f"a query rectangle is (y0, x0, y1, x1) with y1 > y0 and x1 > x0; got {box!r}")
    if slide.mpp is None:
        raise InputError(f"{slide.name} has no pixel size; set the slide's µm/px to query it")
    factor = slide.mpp / target_mpp
    size = (max(2, round((y1 - y0) * factor)), max(2, round((x1 - x0) * factor)))
    return read_box(slide, slide.best_level(1 / factor), (y0, x0, y1, x1), size)


@dataclass(frozen=True)
class SlideHits:
    """Ranked hit tiles: table (rank, slide, tile, similarity, level-0 box), their pixels, the query image."""

    frame: pd.DataFrame
    tiles: np.ndarray  # (k, T, T, 3) uint8, rank order
    query: np.ndarray
    slide_mpp: dict[str, float]

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def grid(self, columns: int | None = None, gap: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """The hit tiles as one RGB grid image (rank order, row by row) and each cell's (y0, x0, y1, x1)."""
        n, t = len(self.tiles), self.tiles.shape[1]
        cols = columns or int(np.ceil(np.sqrt(n)))
        rows, step = int(np.ceil(n / cols)), t + gap
        image = np.full((rows * step - gap, cols * step - gap, 3), 255, dtype=np.uint8)
        cells = np.zeros((n, 4), dtype=np.int64)
        for i, tile in enumerate(self.tiles):
            r, c = divmod(i, cols)
            image[r * step : r * step + t, c * step : c * step + t] = tile
            cells[i] = (r * step, c * step, r * step + t, c * step + t)
        return image, cells

    def to_layer_data(self, geometries: dict[str, Any] | None = None) -> list[LayerData]:
        """Boxes on each slide with hits (Shapes, features = the table) and the gallery grid (Image + cell frames)."""
        layers: list[LayerData] = []
        for slide, part in self.frame.groupby("slide", sort=False):
            scale, translate = slide_geometry_args(self.slide_mpp[slide], (geometries or {}).get(slide))
            boxes = part[["y0_px", "x0_px", "y1_px", "x1_px"]].to_numpy()
            kwargs = {
                "name": f"{slide_stem(slide)}: hits", "shape_type": "rectangle",
                "scale": tuple(float(v) for v in scale), "translate": tuple(float(v) for v in translate),
                "features": part.reset_index(drop=True), "face_color": "transparent", "edge_color": "#56B4E9",
                "edge_width": max(2.0, float(boxes[0, 2] - boxes[0, 0]) / 40),
                "text": {"string": "#{rank} {similarity:.3f}", "size": 10, "color": "white"},
            }
            layers.append((rectangles(boxes), kwargs, "shapes"))
        image, cells = self.grid()
        table = self.frame.reset_index(drop=True).copy()
        for j, col in enumerate(("cell_row0", "cell_col0", "cell_row1", "cell_col1")):
            table[col] = cells[:, j]
        layers.append((image, {"name": "slide hits", "rgb": True, "metadata": {"hits": table}}, "image"))
        frames = [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float) - 0.5 for y0, x0, y1, x1 in cells]
        layers.append((frames, {
            "name": "slide hits labels", "shape_type": "rectangle", "features": table, "face_color": "transparent",
            "edge_color": "#56B4E9", "text": {"string": "#{rank} {similarity:.3f}", "size": 8, "color": "black"},
        }, "shapes"))
        return layers


def iter_run(request: SlideIndexRequest, model: Any, client: Client | None = None) -> ProgressGenerator[SlideIndexResult]:
    """Index every slide in turn (resuming finished ones from `request.out`); with a Dask `client`, one task per slide.

    On a cluster (`iter_run_on_cluster`), `model` may be a `ModelRef` (loaded once per worker) and `request.out`
    is required: each slide's outputs land in ``out/items/<slide>/slide/`` as it finishes.
    """
    if client is not None:
        return (yield from iter_run_on_cluster(request, model, client))
    entries = []
    total = len(request.slides)
    for i, slide in enumerate(request.slides):
        inner = iter_index_slide(slide, request.tiling, model, request.out)
        entry = yield from _scaled(inner, i, total)
        entries.append(entry)
    yield Progress(1000 * total, 1000 * total, f"indexed {sum(len(e.grid) for e in entries):,} tiles of {total} slide(s)")
    return SlideIndexResult(tuple(entries), request.tiling)


SLIDE_OUTPUT = "slide"  # a finished item's folder: out/items/<key>/slide/ (a saved SlideEmbeddings)


def item_key(slide: str) -> str:
    """The slide's item key: its file stem, or a file-name-safe form of it plus a short hash of the stem."""
    import hashlib
    import re

    stem = slide_stem(slide)
    if re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,150}$", stem):
        return stem
    safe = re.sub(r"[^A-Za-z0-9_.=+-]", "_", stem)[:120]
    return f"_{safe}-{hashlib.blake2b(stem.encode(), digest_size=4).hexdigest()}"


def item_outputs(payload: tuple[str, SlideTiling], model: Any) -> dict[str, object]:
    """One slide as an item of `distributed.iter_run_items` (runs on a worker): its embeddings, saved as ``slide/``."""
    slide, tiling = payload
    return {SLIDE_OUTPUT: run_slide(slide, tiling, model)}


def iter_run_on_cluster(request: SlideIndexRequest, model: ClipModel | ModelRef,
                        client: Client | None) -> ProgressGenerator[SlideIndexResult]:
    """One item per slide (`distributed.iter_run_items`; `client` None runs the items here): resumable, a failing
    slide recorded in ``out/failed/`` while the others go on. The result holds the finished slides in request order.
    """
    from dataclasses import replace

    from napari_clipmed.distributed import Item, ModelRef, iter_run_items

    if request.out is None:
        raise InputError("indexing slides on a cluster needs an output folder (out) for each slide's embeddings")
    if isinstance(model, ModelRef):
        model_id = repr((str(model.name), model.weights, model.precision))
    else:
        model_id = model.identity
    fingerprint = json.dumps({"operation": "slide-index", **request.tiling.config(), "model": model_id},
                             sort_keys=True, default=str)
    items = [Item(item_key(s), (str(Path(s).resolve()), request.tiling)) for s in request.slides]
    run = yield from iter_run_items(item_outputs, items, request.out, model=model, client=client, message="slides",
                                    fingerprint=fingerprint)
    finished = set(run.finished)
    entries = tuple(replace(SlideEmbeddings.load(run.item_dir(item.key) / SLIDE_OUTPUT), slide=slide)
                    for item, slide in zip(items, request.slides) if item.key in finished)
    tiles = sum(len(e.grid) for e in entries)
    yield Progress(len(items), len(items), f"indexed {tiles:,} tiles of {len(entries)} slide(s), {len(run.failed)} failed")
    return SlideIndexResult(entries, request.tiling, run)


def _scaled(gen: ProgressGenerator[Any], i: int, total: int) -> ProgressGenerator[Any]:
    """A slide's progress as slide i's share (1000 steps) of the whole run."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(1000 * i + int(1000 * step.fraction), 1000 * total, f"slide {i + 1}/{total}: {step.message}")


def run(request: SlideIndexRequest, model: Any, client: Client | None = None) -> SlideIndexResult:
    return run_generator(iter_run(request, model, client))
