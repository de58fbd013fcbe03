"""On-disk embedding cache: a second run over the same images does no model work.

Keys hash the model signature (model, weights, preprocessing, encoder version) together with
each image's shape, dtype and bytes. Storage is one SQLite file per model signature: every write
is a transaction (an interrupted run leaves no half-written entry) and SQLite's locking makes
concurrent runs safe.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_clipmed.errors import InputError

CACHE_DIR_ENV = "CLIPMED_CACHE_DIR"


def default_cache_dir() -> Path:
    """`$CLIPMED_CACHE_DIR`, else a per-user cache folder."""
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-clipmed")) / "embeddings"


def image_key(signature: str, image: np.ndarray) -> str:
    """Content hash of one image under one model signature."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(signature.encode())
    digest.update(f"{image.shape}{image.dtype.str}".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


class EmbeddingCache:
    """Embeddings of one model signature, stored under `folder`.

    Use `get_many` / `put_many`; they take and give float32 vectors.
    """

    def __init__(self, folder: str | os.PathLike[str] | None = None, signature: str = "") -> None:
        self.folder = Path(folder).expanduser() if folder else default_cache_dir()
        self.signature = signature
        self._conn: sqlite3.Connection | None = None

    def for_signature(self, signature: str) -> EmbeddingCache:
        """The same folder, bound to another model signature."""
        return EmbeddingCache(self.folder, signature)

    @property
    def path(self) -> Path:
        return self.folder / f"{self.signature[:24] or 'unsigned'}.sqlite"

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("CREATE TABLE IF NOT EXISTS embeddings (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
                conn.commit()
            except sqlite3.DatabaseError as err:
                conn.close()
                raise InputError(
                    f"the embedding cache {self.path} is damaged ({err}); delete that file (it only holds cached "
                    "embeddings, recomputed on the next run) or run with --no-cache"
                ) from None
            self._conn = conn
        return self._conn

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached vectors among `keys` (missing keys are absent from the result)."""
        if not keys or not self.path.exists():
            return {}
        conn = self._connect()
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in conn.execute(f"SELECT key, data FROM embeddings WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Store vectors in one transaction: all of them land, or none."""
        if len(keys) != len(vectors):
            raise ValueError("keys and vectors differ in length")
        rows = [(k, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for k, v in zip(keys, vectors)]
        conn = self._connect()
        with conn:
            conn.executemany("INSERT OR REPLACE INTO embeddings (key, data) VALUES (?, ?)", rows)

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        return int(self._connect().execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
