"""Nearest-neighbour search over L2-normalised embeddings (cosine similarity = inner product): exact, or approximate at archive scale.

`EmbeddingIndex` keeps a gallery of embeddings (with optional labels and ids) and answers top-k
queries. Two backends give identical hits:

- ``torch``: chunked matrix product + `topk`, so even all-pairs search over 100k items fits in memory;
- ``faiss``: `faiss.IndexFlatIP` (exact), chosen automatically when faiss is installed, the
  gallery has at least `FAISS_MIN_GALLERY` items and there are at least `FAISS_MIN_QUERIES`
  queries (faiss answers a handful of queries on one thread; torch is faster there).

Both backends only *propose* candidates (a few more than k); the candidates are then re-scored by
one fixed computation (the same summation order for every pair, so bit-identical whatever the
backend) and ordered by similarity (descending), then gallery index (ascending). When rounding
could have hidden a better item (near-ties at the candidate boundary, e.g. duplicated tiles) the
row is re-scored against the whole gallery. The hits are therefore the top-k under that order,
whatever the backend, and the tie order is deterministic.

At archive scale (`APPROX_MIN_GALLERY` items and more, with faiss) ``auto`` searches an inverted-file index
(``ivf``: faiss `IndexIVFFlat`, `nlist` k-means cells, `nprobe` of them visited per query) instead: its candidates
get the same exact re-scoring, but an item in a cell that was not visited can be missed (recall@10 measured in
`benchmarks/retrieval.py --approximate`). `RetrievalHits.method` says which search answered. The trained IVF index
is saved inside the index file, so an index built on a cluster opens ready to search (e.g. in the Retrieval widget).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.io.atomic import atomic_path
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    import pandas as pd

Backend = Literal["auto", "torch", "faiss", "ivf"]

FAISS_MIN_GALLERY = 50_000  # "auto" uses faiss (when it imports) from this gallery size on ...
FAISS_MIN_QUERIES = 64  # ... and this many queries: for a few queries faiss scans on one thread, torch is faster
_FAISS_QUERY_CHUNK = 4096  # faiss blocks the gallery itself; large query batches amortise each pass over it
_REFINE_BLOCK = 128  # queries re-scored at a time (keeps the gathered candidates small)
_MARGIN = 8  # extra float32 candidates per query, re-scored exactly
_CHUNK_ELEMENTS = 2**25  # query chunk x gallery size of one similarity block (128 MB of float32)
_FORMAT = "napari-clipmed.embedding-index"
APPROX_MIN_GALLERY = 1_000_000  # "auto" searches the IVF index from this gallery size on (exact below it)
IVF_TRAIN_PER_CELL = 40  # k-means training points per cell (faiss warns below 39)


@dataclass
class RetrievalHits:
    """Top-k neighbours per query: gallery rows, cosine similarities and their labels/ids.

    All arrays have shape (n_queries, k), best hit first.
    """

    indices: np.ndarray
    similarities: np.ndarray
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None
    query_ids: np.ndarray | None = None
    method: str = "exact"  # "exact (torch)", "exact (faiss flat)" or "approximate (faiss IVF, nprobe=...)"

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def to_frame(self) -> pd.DataFrame:
        """One row per (query, rank): query, rank (1 = best), index, similarity[, label][, id]."""
        import pandas as pd

        q, k = self.indices.shape
        query = np.repeat(np.arange(q) if self.query_ids is None else np.asarray(self.query_ids), k)
        cols: dict[str, np.ndarray] = {
            "query": query,
            "rank": np.tile(np.arange(1, k + 1), q),
            "index": self.indices.ravel(),
            "similarity": self.similarities.ravel(),
        }
        if self.labels is not None:
            cols["label"] = self.labels.ravel()
        if self.ids is not None:
            cols["id"] = self.ids.ravel()
        return pd.DataFrame(cols)


def _unit_rows(x: np.ndarray | Sequence, what: str) -> np.ndarray:
    """Float32 C-contiguous copy of `x` (N, D), rows scaled to unit length when they are not already."""
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] == 0:
        raise InputError(f"{what} must be a 2-D array (items x dimensions), got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number):
        raise InputError(f"{what} must be numeric, got dtype {a.dtype}")
    a = np.array(a, dtype=np.float32, order="C", copy=True)
    if not np.all(np.isfinite(a)):
        raise InputError(f"{what} contain NaN or infinite values")
    norms = np.linalg.norm(a, axis=1)
    if np.any(norms == 0):
        raise InputError(f"{what} contain {int(np.sum(norms == 0))} all-zero rows, which have no direction")
    if np.any(np.abs(norms - 1) > 1e-4):
        a /= norms[:, None]
    return a


def _column(values: Sequence | np.ndarray | None, n: int, what: str) -> np.ndarray | None:
    if values is None:
        return None
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = arr.astype(str)
    if arr.shape != (n,):
        raise InputError(f"{what} must have one entry per embedding ({n}), got shape {arr.shape}")
    return arr


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _ivf_to_array(index: object) -> np.ndarray:
    """A faiss index as bytes. Through a Python stream: `faiss.serialize_index` returns a std::vector proxy that
    SimpleITK's SWIG bindings (loaded for CT) claim, and then fails."""
    import io

    import faiss

    buffer = io.BytesIO()
    writer = faiss.PyCallbackIOWriter(buffer.write)
    faiss.write_index(index, writer)
    del writer  # flushes
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _ivf_from_array(data: np.ndarray) -> object:
    import io

    import faiss

    return faiss.read_index(faiss.PyCallbackIOReader(io.BytesIO(np.asarray(data, dtype=np.uint8).tobytes()).read))


class EmbeddingIndex:
    """A gallery of L2-normalised embeddings from one model, with exact top-k search.

    `model_id` names the model (and weights) that produced the embeddings; adding or querying
    with embeddings of another model is refused, since their similarities would mean nothing.
    """

    def __init__(
        self,
        embeddings: np.ndarray | Sequence,
        labels: Sequence | np.ndarray | None = None,
        ids: Sequence | np.ndarray | None = None,
        model_id: str | None = None,
    ) -> None:
        self._emb = _unit_rows(embeddings, "gallery embeddings")
        self.labels = _column(labels, len(self._emb), "labels")
        self.ids = _column(ids, len(self._emb), "ids")
        self.model_id = model_id
        self._faiss_index: object | None = None
        self._ivf: object | None = None
        self.nprobe = 0

    def __len__(self) -> int:
        return int(self._emb.shape[0])

    @property
    def dim(self) -> int:
        return int(self._emb.shape[1])

    @property
    def embeddings(self) -> np.ndarray:
        view = self._emb.view()
        view.flags.writeable = False
        return view

    def _check_model(self, model_id: str | None, what: str) -> None:
        if model_id is not None and self.model_id is not None and model_id != self.model_id:
            raise InputError(
                f"{what} come from model '{model_id}' but this index holds embeddings of model "
                f"'{self.model_id}'; embeddings of different models cannot be compared"
            )

    def add(
        self,
        embeddings: np.ndarray | Sequence,
        labels: Sequence | np.ndarray | None = None,
        ids: Sequence | np.ndarray | None = None,
        model_id: str | None = None,
    ) -> None:
        """Append embeddings (of the same model and dimension) to the gallery."""
        self._check_model(model_id, "the new embeddings")
        new = _unit_rows(embeddings, "new embeddings")
        if new.shape[1] != self.dim:
            raise InputError(f"the new embeddings have {new.shape[1]} dimensions, the index has {self.dim}")
        for name, have, given in (("labels", self.labels, labels), ("ids", self.ids, ids)):
            if (have is None) != (given is None):
                state = "has" if have is not None else "has no"
                raise InputError(f"the index {state} {name}; give {name} for all items or for none")
        self.labels = None if labels is None else np.concatenate([self.labels, _column(labels, len(new), "labels")])
        self.ids = None if ids is None else np.concatenate([self.ids, _column(ids, len(new), "ids")])
        self._emb = np.concatenate([self._emb, new])
        self._faiss_index = None
        self._ivf = None
        if model_id is not None and self.model_id is None:
            self.model_id = model_id

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray | Sequence,
        k: int,
        exclude_self: bool = False,
        model_id: str | None = None,
        backend: Backend = "auto",
        query_rows: np.ndarray | Sequence[int] | None = None,
    ) -> RetrievalHits:
        """Top-`k` gallery items for each query (see `iter_search`)."""
        return run_generator(self.iter_search(queries, k, exclude_self, model_id, backend, query_rows))

    def search_gallery(self, k: int, backend: Backend = "auto") -> RetrievalHits:
        """Leave-one-out: every gallery item queried against all the others."""
        return self.search(self._emb, k, exclude_self=True, backend=backend)

    def iter_search(
        self,
        queries: np.ndarray | Sequence,
        k: int,
        exclude_self: bool = False,
        model_id: str | None = None,
        backend: Backend = "auto",
        query_rows: np.ndarray | Sequence[int] | None = None,
    ) -> ProgressGenerator[RetrievalHits]:
        """Generator yielding `Progress` per chunk of queries; returns `RetrievalHits`.

        Leave-one-out: `exclude_self=True` means query i is gallery item i (the same item, possibly
        re-encoded, e.g. a corrupted copy); `query_rows` names the gallery row of each query for a
        subset. A query then never retrieves its own gallery item.
        """
        self._check_model(model_id, "the queries")
        q = _unit_rows(queries, "query embeddings")
        n = len(self)
        if q.shape[1] != self.dim:
            raise InputError(f"the queries have {q.shape[1]} dimensions but the index has {self.dim}; were they made by another model?")
        self_rows: np.ndarray | None = None
        if query_rows is not None:
            self_rows = np.asarray(query_rows, dtype=np.int64)
            if self_rows.shape != (len(q),) or np.any((self_rows < 0) | (self_rows >= n)):
                raise InputError(f"query_rows must give one gallery row (0..{n - 1}) per query ({len(q)})")
            exclude_self = True
        elif exclude_self:
            if len(q) != n:
                raise InputError(f"leave-one-out search needs one query per gallery item ({n}), got {len(q)} queries")
            self_rows = np.arange(n)
        n_eff = n - int(exclude_self)
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive whole number, got {k!r}")
        if k > n_eff:
            extra = " once each query is left out of its own search" if exclude_self else ""
            raise InputError(f"k={k} is larger than the gallery: it has {n} items, so at most {n_eff} neighbours{extra}")
        use_ivf = self._use_ivf(backend)
        use_faiss = use_ivf or self._use_faiss(backend, len(q))
        fetch = min(n, min(n_eff, k + _MARGIN) + int(exclude_self))
        chunk = _FAISS_QUERY_CHUNK if use_faiss else max(1, min(len(q), _CHUNK_ELEMENTS // max(n, 1)))
        if use_ivf:
            self.build_ivf()
            fetch = min(n, 2 * k + _MARGIN + int(exclude_self))
        out_idx = np.empty((len(q), k), dtype=np.int64)
        out_sim = np.empty((len(q), k), dtype=np.float32)
        total = (len(q) + chunk - 1) // chunk
        for step, start in enumerate(range(0, len(q), chunk)):
            qc = q[start : start + chunk]
            if use_ivf:
                vals, cand = self._ivf.search(qc, fetch)  # type: ignore[attr-defined]
            else:
                vals, cand = self._faiss_topk(qc, fetch) if use_faiss else self._torch_topk(qc, fetch)
            rows = None if self_rows is None else self_rows[start : start + len(qc)]
            out_idx[start : start + len(qc)], out_sim[start : start + len(qc)] = self._refine(
                qc, cand.astype(np.int64, copy=False), vals, k, rows, all_candidates=use_ivf or fetch >= n
            )
            yield Progress(step + 1, total, f"searching {len(q)} queries")
        return RetrievalHits(
            indices=out_idx,
            similarities=out_sim,
            labels=None if self.labels is None else self.labels[out_idx],
            ids=None if self.ids is None else self.ids[out_idx],
            method=f"approximate (faiss IVF, nlist={self._ivf.nlist}, nprobe={self.nprobe})" if use_ivf  # type: ignore[attr-defined]
            else "exact (faiss flat)" if use_faiss else "exact (torch)",
        )

    def _use_faiss(self, backend: Backend, n_queries: int) -> bool:
        if backend == "faiss":
            if not faiss_available():
                raise InputError("backend 'faiss' was asked for but faiss is not installed (pip install faiss-cpu)")
            return True
        if backend == "torch":
            return False
        if backend != "auto":
            raise InputError(f"backend must be 'auto', 'torch' or 'faiss', got {backend!r}")
        return len(self) >= FAISS_MIN_GALLERY and n_queries >= FAISS_MIN_QUERIES and faiss_available()

    def _use_ivf(self, backend: Backend) -> bool:
        if backend == "ivf":
            if not faiss_available():
                raise InputError("approximate search (backend 'ivf') needs faiss: pip install 'napari-clipmed[faiss]'")
            return True
        return backend == "auto" and (self._ivf is not None or len(self) >= APPROX_MIN_GALLERY) and faiss_available()

    def build_ivf(self, nlist: int | None = None, nprobe: int | None = None, seed: int = 0) -> None:
        """Train and fill the approximate (IVF) index, once; `nlist` cells (default ~sqrt(N)), `nprobe` visited per query.

        A quantizer trained on a seeded sample of `IVF_TRAIN_PER_CELL` points per cell; the defaults reach
        recall@10 >= 0.99 on clustered embeddings (see docs/performance.md). An index already built is kept
        unless `nlist` is given; `nprobe` can be changed at any time.
        """
        import faiss

        n = len(self)
        if self._ivf is None or nlist is not None:
            cells = int(nlist or max(1, min(65536, round(np.sqrt(n)))))
            if not 1 <= cells <= n:
                raise InputError(f"nlist must lie in 1..{n} (the gallery size), got {cells}")
            rng = np.random.default_rng(seed)
            sample = self._emb[np.sort(rng.choice(n, min(n, cells * IVF_TRAIN_PER_CELL), replace=False))]
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, cells, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = seed
            index.cp.niter = 10
            index.train(sample)
            index.add(self._emb)
            self._ivf = index
            self.nprobe = 0
        if nprobe is not None or not self.nprobe:
            self.nprobe = int(nprobe or max(8, self._ivf.nlist // 64))  # type: ignore[attr-defined]
            if self.nprobe < 1:
                raise InputError(f"nprobe must be at least 1, got {nprobe}")
        self._ivf.nprobe = min(self.nprobe, self._ivf.nlist)  # type: ignore[attr-defined]

    def _torch_topk(self, qc: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            sims = torch.from_numpy(qc) @ torch.from_numpy(self._emb).T
            vals, idx = torch.topk(sims, fetch, dim=1)
        return vals.numpy(), idx.numpy().astype(np.int64)

    def _faiss_topk(self, qc: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self._faiss_index is None:
            index = faiss.IndexFlatIP(self.dim)
            index.add(self._emb)
            self._faiss_index = index
        vals, idx = self._faiss_index.search(qc, fetch)  # type: ignore[attr-defined]
        return vals, idx.astype(np.int64)

    def _canonical(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Inner products of query i with gallery rows `rows[i]`, computed one fixed way.

        Every (query, item) pair is summed in the same order (numpy's pairwise sum over a
        contiguous row), whatever backend proposed it and however the work is blocked, so both
        backends and the full-row fallback give bit-identical similarities.
        """
        out = np.empty(rows.shape, dtype=np.float32)
        for s in range(0, len(q), _REFINE_BLOCK):
            block = self._emb[rows[s : s + _REFINE_BLOCK]]  # a gathered copy, safe to scale in place
            block *= q[s : s + _REFINE_BLOCK, None, :]
            out[s : s + _REFINE_BLOCK] = block.sum(axis=-1)
        return out

    def _refine(
        self,
        qc: np.ndarray,
        cand: np.ndarray,
        approx: np.ndarray,
        k: int,
        self_rows: np.ndarray | None,
        all_candidates: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Canonical re-scoring of the candidates; rows where rounding may matter get a full scan."""
        n = len(self)
        valid = cand >= 0
        if self_rows is not None:
            valid &= cand != self_rows[:, None]
        sims = self._canonical(qc, np.where(valid, cand, 0))
        sims[~valid] = -np.inf
        order = np.lexsort((np.where(valid, cand, n), -sims), axis=1)[:, :k]
        idx = np.take_along_axis(cand, order, axis=1)
        sim = np.take_along_axis(sims, order, axis=1)
        for r in np.flatnonzero(~np.isfinite(sim[:, -1])):  # fewer than k candidates (an IVF visited too few items)
            idx[r], sim[r] = self._full_row(qc[r], k, None if self_rows is None else int(self_rows[r]))
        if not all_candidates:
            # an item left out has approximate similarity <= the smallest candidate's; with both
            # computations within eps/2 of the true value, it cannot beat the k-th hit unless this fails
            eps = 2.0 * self.dim * 2.0**-24 + 1e-6
            bound = approx.min(axis=1).astype(np.float64)
            for r in np.flatnonzero(~(bound + eps < sim[:, -1])):
                idx[r], sim[r] = self._full_row(qc[r], k, None if self_rows is None else int(self_rows[r]))
        return idx, sim

    def _full_row(self, q: np.ndarray, k: int, self_row: int | None) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        sims = np.concatenate(
            [self._canonical(q[None], np.arange(s, min(s + 4096, n))[None])[0] for s in range(0, n, 4096)]
        )
        if self_row is not None:
            sims[self_row] = -np.inf
        order = np.lexsort((np.arange(n), -sims))[:k]
        return order.astype(np.int64), sims[order]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index to one ``.npz`` file (arrays + JSON metadata), atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        meta = {"format": _FORMAT, "version": 1, "model_id": self.model_id, "n": len(self), "dim": self.dim}
        arrays: dict[str, np.ndarray] = {"embeddings": self._emb, "meta": np.array(json.dumps(meta))}
        if self.labels is not None:
            arrays["labels"] = self.labels
        if self.ids is not None:
            arrays["ids"] = self.ids
        if self._ivf is not None:
            arrays["ivf"] = _ivf_to_array(self._ivf)
            meta["nprobe"] = self.nprobe
            arrays["meta"] = np.array(json.dumps(meta))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> EmbeddingIndex:
        """Read an index written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no index file at {path}")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.get("format") != _FORMAT:
                    raise InputError(f"{path} is not a napari-clipmed embedding index")
                emb = data["embeddings"]
                labels = data["labels"] if "labels" in data.files else None
                ids = data["ids"] if "ids" in data.files else None
                ivf = data["ivf"] if "ivf" in data.files else None
        except (OSError, ValueError, KeyError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"cannot read the index file {path}: {err}") from err
        index = cls(emb, labels=labels, ids=ids, model_id=meta.get("model_id"))
        if ivf is not None and faiss_available():
            index._ivf = _ivf_from_array(ivf)
            index.build_ivf(nprobe=int(meta.get("nprobe") or 0) or None)
        return index
