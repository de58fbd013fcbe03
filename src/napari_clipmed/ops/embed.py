"""Embed a tile folder or CSV manifest into the shared embedding store, chunk by chunk, in-process or on a cluster.

Each chunk of tiles is one `distributed` item: its embeddings and table (content key, path, label) become one
shard of the store as soon as it finishes, so a stopped run resumes and a chunk that fails is reported while
the others go on. The run then saves an `EmbeddingIndex` of its tiles (ids = paths, labels = classes) next to
the shards (`EmbeddingStore.index_path`), for `clipmed retrieve --gallery` and the Retrieval widget.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    import pandas as pd

    from napari_clipmed.distributed import Item, RunItemsResult
    from napari_clipmed.models.model import ClipModel


@dataclass(frozen=True)
class EmbedRequest:
    """What to embed (`source`: image folder, ImageFolder or CSV manifest) and where (`store` root)."""

    source: Path
    store: Path
    chunk_size: int = 256
    batch_size: int = 64
    split: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "store", Path(self.store))
        if not self.source.exists():
            raise InputError(f"nothing to embed at {self.source} (give a tile folder or a CSV manifest)")
        if self.store.exists() and not self.store.is_dir():
            raise InputError(f"the store {self.store} is a file; give a folder")
        for name in ("chunk_size", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InputError(f"{name} must be a whole number of at least 1, got {value!r}")

    def items(self, signature: str) -> tuple[list[Item], bool]:
        """The chunks of tiles (absolute paths, so workers can read them) and whether they carry labels.

        A chunk's key hashes its paths and labels: the same tiles make the same shard in any later run.
        """
        from napari_clipmed.datasets import load_images
        from napari_clipmed.distributed import Item

        tileset, labelled = load_images(self.source)
        if self.split:
            tileset = tileset.select_split(self.split)
        paths = [str(Path(p).resolve()) for p in tileset.paths]
        labels = [str(x) for x in tileset.label_names] if labelled else [""] * len(paths)
        items = []
        for start in range(0, len(paths), self.chunk_size):
            chunk_p, chunk_l = tuple(paths[start : start + self.chunk_size]), tuple(labels[start : start + self.chunk_size])
            key = hashlib.blake2b(repr((chunk_p, chunk_l)).encode(), digest_size=12).hexdigest()
            items.append(Item(f"tiles-{key}", (chunk_p, chunk_l, self.batch_size, signature)))
        return items, labelled


def embed_chunk(payload: tuple, model: ClipModel) -> dict[str, object]:
    """One chunk: read its tiles (unreadable ones listed), encode them, return the shard's outputs."""
    import pandas as pd

    from napari_clipmed.datasets import iter_read_images
    from napari_clipmed.models.cache import image_key

    paths, labels, batch_size, signature = payload
    if model.signature != signature:
        raise InputError("this worker's model differs from the client's (weights, device or precision): "
                         "give --device so that every worker encodes the same way")
    read = run_generator(iter_read_images(paths))
    images = read.images
    emb = model.encode_images(images, batch_size=batch_size) if images else np.empty((0, model.embed_dim), np.float32)
    meta = pd.DataFrame({"key": [image_key(signature, im) for im in images],
                         "path": [paths[i] for i in read.indices], "label": [labels[i] for i in read.indices]})
    return {"embeddings": emb, "meta": meta, "skipped": pd.DataFrame(read.failed, columns=["path", "reason"])}


@dataclass(frozen=True)
class EmbedResult:
    """The store folder of the model, the saved index of this run's tiles, and each chunk's status."""

    store_dir: Path
    index_path: Path | None
    n_images: int
    skipped: tuple[tuple[str, str], ...]
    run: RunItemsResult

    def to_frame(self) -> pd.DataFrame:
        """One row per chunk: item, status (computed, reused, failed), error."""
        return self.run.to_frame()

    def save(self, folder: str | Path) -> dict[str, Path]:
        """chunks.csv (chunk status) and skipped.csv (unreadable tiles) in `folder`, atomically."""
        import pandas as pd

        from napari_clipmed.io.atomic import write_frame

        out = Path(folder)
        return {"chunks": write_frame(out / "chunks.csv", self.to_frame()),
                "skipped": write_frame(out / "skipped.csv", pd.DataFrame(list(self.skipped), columns=["path", "reason"]))}

    def to_layer_data(self, geometry: Any = None) -> list:
        """No layers: the store is the output."""
        return []


def iter_run(request: EmbedRequest, model: ClipModel, client: Any = None,
             device: str | None = None) -> ProgressGenerator[EmbedResult]:
    """Embed every chunk not in the store yet (on `client`'s workers when given); yields Progress in chunks."""
    from napari_clipmed.distributed import ModelRef, iter_run_items
    from napari_clipmed.models.store import EmbeddingStore
    from napari_clipmed.retrieval import EmbeddingIndex

    store = EmbeddingStore(request.store, model.signature)
    items, labelled = request.items(model.signature)
    if not items:
        raise InputError(f"{request.source} holds no images to embed")
    on_workers = ModelRef.of(model, device or model.device.type) if client is not None else model
    run = yield from iter_run_items(embed_chunk, items, store.folder, model=on_workers, client=client, message="chunks")
    identity = model.identity
    store.write_info({"model": model.spec.name, "identity": identity})
    arrays = [a for a in run.read_arrays("embeddings") if len(a)]
    meta = run.read_table("meta")
    skipped = run.read_table("skipped")
    index_path = None
    if arrays:
        index = EmbeddingIndex(np.concatenate(arrays), labels=list(meta["label"]) if labelled else None,
                               ids=list(meta["path"]), model_id=identity)
        index_path = index.save(store.index_path)
    yield Progress(len(items), len(items), f"embedded {len(meta)} images into {store.folder}")
    return EmbedResult(store.folder, index_path, len(meta),
                       tuple(zip(skipped.get("path", []), skipped.get("reason", []))), run)


def run(request: EmbedRequest, model: ClipModel, client: Any = None) -> EmbedResult:
    """Plain-call twin of `iter_run`."""
    return run_generator(iter_run(request, model, client))
