"""Embed a tile folder or CSV manifest (or the lung patches of CT volumes) into the shared embedding store.

Each chunk of tiles is one `distributed` item: its embeddings and table (content key, path, label) become one
shard of the store as soon as it finishes, so a stopped run resumes and a chunk that fails is reported while
the others go on. With `ct=True` the source is a CT volume or a CSV with a `path` column (label optional) and
each volume is one item: lung mask, physical-size patches (`ct.patches`), one vector per patch. The run then saves an `EmbeddingIndex` of its tiles (ids = paths, labels = classes) next to
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
    """What to embed (`source`: image folder, ImageFolder or CSV manifest; with `ct`, CT volumes) and where (`store`)."""

    source: Path
    store: Path
    chunk_size: int = 256
    batch_size: int = 64
    split: str | None = None
    ct: bool = False
    patch: Any = None  # ct.patches.PatchConfig for `ct` (default: PatchConfig())

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
        if self.ct:
            return self._ct_items(signature), True
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


    def _ct_items(self, signature: str) -> list[Item]:
        """One item per volume: from a CSV (`path`, optional `label`; paths relative to the CSV) or one volume."""
        import csv

        from napari_clipmed.ct.patches import PatchConfig
        from napari_clipmed.distributed import Item

        volumes: list[tuple[str, str]] = []
        if self.source.suffix.lower() == ".csv":
            with open(self.source, newline="", encoding="utf-8-sig") as fh:
                for row in csv.DictReader(fh):
                    raw = (row.get("path") or "").strip()
                    if raw:
                        path = Path(raw) if Path(raw).is_absolute() else self.source.parent / raw
                        volumes.append((str(path.resolve()), (row.get("label") or "").strip()))
            missing = [p for p, _ in volumes if not Path(p).exists()]
            if missing:
                raise InputError(f"{len(missing)} volume(s) of {self.source.name} not found: {'; '.join(missing[:5])}")
        else:
            volumes.append((str(self.source.resolve()), ""))
        patch = self.patch or PatchConfig()
        return [Item("ct-" + hashlib.blake2b(repr((path, label, patch)).encode(), digest_size=12).hexdigest(),
                     (path, label, patch, self.batch_size, signature)) for path, label in volumes]


def embed_ct_volume(payload: tuple, model: ClipModel) -> dict[str, object]:
    """One CT volume: lung mask, patches, one embedding per patch (ids: ``path#patch``, positions in mm)."""
    import pandas as pd

    from napari_clipmed.ct.io import read_ct
    from napari_clipmed.ct.lung import lung_mask
    from napari_clipmed.ct.patches import extract_patches
    from napari_clipmed.models.cache import image_key

    path, label, patch, batch_size, signature = payload
    _check_signature(model, signature)
    volume = read_ct(path)
    patches = extract_patches(volume, lung_mask(volume), patch)
    emb = np.empty((len(patches), model.embed_dim), dtype=np.float32)
    keys: list[str] = [""] * len(patches)
    for idx, images in patches.iter_images(batch_size=batch_size, size=int(model.spec.image_size)):
        emb[idx] = model.encode_images(images, batch_size=batch_size)
        for i, image in zip(idx, images):
            keys[i] = image_key(signature, image)
    mm = patches.centre_mm
    meta = pd.DataFrame({"key": keys, "path": [f"{path}#{i}" for i in range(len(patches))], "label": label,
                         "slice_index": patches.slice_index, "z_mm": mm[:, 0], "y_mm": mm[:, 1], "x_mm": mm[:, 2]})
    return {"embeddings": emb, "meta": meta, "skipped": pd.DataFrame({"path": [], "reason": []})}


def _check_signature(model: ClipModel, signature: str) -> None:
    if model.signature != signature:
        raise InputError("this worker's model differs from the client's (weights, device or precision): "
                         "give --device so that every worker encodes the same way")


def embed_chunk(payload: tuple, model: ClipModel) -> dict[str, object]:
    """One chunk: read its tiles (unreadable ones listed), encode them, return the shard's outputs."""
    import pandas as pd

    from napari_clipmed.datasets import iter_read_images
    from napari_clipmed.models.cache import image_key

    paths, labels, batch_size, signature = payload
    _check_signature(model, signature)
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
    fn = embed_ct_volume if request.ct else embed_chunk
    run = yield from iter_run_items(fn, items, store.folder, model=on_workers, client=client,
                                    message="volumes" if request.ct else "chunks")
    identity = model.identity
    store.write_info({"model": model.spec.name, "identity": identity})
    arrays = [a for a in run.read_arrays("embeddings") if len(a)]
    meta = run.read_table("meta")
    skipped = run.read_table("skipped")
    index_path = None
    if arrays:
        index = EmbeddingIndex(np.concatenate(arrays), labels=list(meta["label"].astype(str)) if labelled else None,
                               ids=list(meta["path"]), model_id=identity)
        index_path = index.save(store.index_path)
    yield Progress(len(items), len(items), f"embedded {len(meta)} images into {store.folder}")
    return EmbedResult(store.folder, index_path, len(meta),
                       tuple(zip(skipped.get("path", []), skipped.get("reason", []))), run)


def run(request: EmbedRequest, model: ClipModel, client: Any = None) -> EmbedResult:
    """Plain-call twin of `iter_run`."""
    return run_generator(iter_run(request, model, client))
