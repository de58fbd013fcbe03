"""A shared on-disk embedding store: immutable shards that every worker and machine can read and add to.

Keyed like the cache (`models.cache`): one folder per model signature (model, weights hash, preprocessing,
precision, encoder version), and in it one entry per image content hash (`cache.image_key`). Each shard is
a `distributed` item folder, ``<root>/<signature[:24]>/items/<shard>/`` with ``embeddings.npy`` (N x D float32)
and ``meta.parquet`` (key, path, label), written atomically and never changed, so a shared filesystem or a
synced object-store prefix needs no locking (SQLite, the local cache's engine, is unsafe over NFS).

`EmbeddingStore` has the cache's interface (`for_signature`, `get_many`, `put_many`), so any `cache=`
argument (encoding, `retrieve`, `robustness`) can read and fill it. `clipmed embed` fills it in chunks on a
cluster and saves ``index.npz`` (an `EmbeddingIndex` of that run's images) in the model's folder, next to
the shards, for `clipmed retrieve --gallery` and the Retrieval widget.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_clipmed.distributed import ITEMS, item_dir, write_item

INDEX_FILE = "index.npz"
INFO_FILE = "store.json"


class EmbeddingStore:
    """Embeddings of one model signature under `root` (see module docstring)."""

    def __init__(self, root: str | os.PathLike[str], signature: str = "") -> None:
        self.root = Path(root).expanduser()
        self.signature = signature
        self._where: dict[str, tuple[str, int]] | None = None  # key -> (shard, row)
        self._seen: set[str] = set()

    def for_signature(self, signature: str) -> EmbeddingStore:
        """The same root, bound to another model signature."""
        return EmbeddingStore(self.root, signature)

    @property
    def folder(self) -> Path:
        return self.root / (self.signature[:24] or "unsigned")

    @property
    def index_path(self) -> Path:
        """Where `clipmed embed` saves the index of its images (keyed by the model, next to the shards)."""
        return self.folder / INDEX_FILE

    def shards(self) -> list[str]:
        """Finished shards, in name order."""
        base = self.folder / ITEMS
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")) if base.is_dir() else []

    def _refresh(self) -> dict[str, tuple[str, int]]:
        """Map new shards' keys (shards are immutable: only unseen ones are read)."""
        import pandas as pd

        where = self._where if self._where is not None else {}
        for shard in self.shards():
            if shard in self._seen:
                continue
            keys = pd.read_parquet(item_dir(self.folder, shard) / "meta.parquet", columns=["key"])["key"]
            for row, key in enumerate(keys):
                where.setdefault(key, (shard, row))
            self._seen.add(shard)
        self._where = where
        return where

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors among `keys` (missing keys are absent from the result)."""
        where = self._refresh()
        found: dict[str, np.ndarray] = {}
        by_shard: dict[str, list[tuple[str, int]]] = {}
        for key in dict.fromkeys(keys):
            if key in where:
                shard, row = where[key]
                by_shard.setdefault(shard, []).append((key, row))
        for shard, members in by_shard.items():
            matrix = np.load(item_dir(self.folder, shard) / "embeddings.npy", mmap_mode="r")
            for key, row in members:
                found[key] = np.array(matrix[row], dtype=np.float32)
        return found

    def put_many(self, keys: Sequence[str], vectors: np.ndarray, paths: Sequence[str] | None = None,
                 labels: Sequence[str] | None = None) -> str:
        """Add one shard (atomically); its name is a hash of its keys, so a repeated put adds nothing."""
        import pandas as pd

        if len(keys) != len(vectors):
            raise ValueError("keys and vectors differ in length")
        shard = "put-" + hashlib.blake2b("\n".join(keys).encode(), digest_size=12).hexdigest()
        meta = pd.DataFrame({"key": list(keys), "path": list(paths) if paths is not None else [""] * len(keys),
                             "label": list(labels) if labels is not None else [""] * len(keys)})
        (self.folder / ITEMS).mkdir(parents=True, exist_ok=True)
        write_item(self.folder, shard, {"embeddings": np.ascontiguousarray(vectors, dtype=np.float32), "meta": meta})
        return shard

    def __len__(self) -> int:
        return len(self._refresh())

    def write_info(self, info: dict) -> Path:
        """Describe the store's model (name, identity, signature) in ``store.json``."""
        from napari_clipmed.io.atomic import write_json

        return write_json(self.folder / INFO_FILE, {"signature": self.signature, **info})

    def close(self) -> None:
        """Nothing to close (kept for the cache's interface)."""
