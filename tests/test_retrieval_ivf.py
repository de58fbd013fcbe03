"""Approximate (FAISS IVF) search in `EmbeddingIndex` against the exact search on clustered embeddings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK  # noqa: F401 - loaded in CT sessions; its SWIG types once broke faiss.serialize_index

from napari_clipmed import retrieval
from napari_clipmed.errors import InputError
from napari_clipmed.retrieval import EmbeddingIndex


def clustered(n: int, dim: int, centres: int, seed: int = 0) -> np.ndarray:
    """Unit vectors around `centres` random directions (spread 0.3 per coordinate): clustered like real embeddings."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(12_000, 32, 60)


def test_ivf_visiting_every_cell_equals_exact_search(data: np.ndarray) -> None:
    index = EmbeddingIndex(data, ids=np.arange(len(data)))
    exact = index.search(data[:200], 10, backend="torch")
    index.build_ivf(nlist=32, nprobe=32)
    approx = index.search(data[:200], 10, backend="ivf")
    assert exact.method == "exact (torch)" and approx.method.startswith("approximate (faiss IVF, nlist=32, nprobe=32")
    np.testing.assert_array_equal(approx.indices, exact.indices)
    np.testing.assert_array_equal(approx.similarities, exact.similarities)


def test_ivf_recall_and_leave_one_out(data: np.ndarray) -> None:
    index = EmbeddingIndex(data)
    index.build_ivf(nlist=100, nprobe=8)
    queries = data[:300]
    exact = index.search(queries, 10, query_rows=np.arange(300), backend="torch")
    approx = index.search(queries, 10, query_rows=np.arange(300), backend="ivf")
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx.indices, exact.indices)])
    assert recall >= 0.95
    assert not np.any(approx.indices == np.arange(300)[:, None])  # never the query's own row
    assert np.all(np.diff(approx.similarities, axis=1) <= 0)


def test_auto_is_exact_below_the_threshold_and_ivf_above(data: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    assert EmbeddingIndex(data).search(data[:3], 5).method.startswith("exact")
    monkeypatch.setattr(retrieval, "APPROX_MIN_GALLERY", 10_000)
    hits = EmbeddingIndex(data).search(data[:3], 5)
    assert hits.method.startswith("approximate") and hits.indices.shape == (3, 5)


def test_the_ivf_index_is_saved_with_the_index(data: np.ndarray, tmp_path: Path) -> None:
    index = EmbeddingIndex(data, labels=np.arange(len(data)) % 3, model_id="tiny-random:0123456789abcdef")
    index.build_ivf(nlist=50, nprobe=5)
    before = index.search(data[:50], 10, backend="ivf")
    loaded = EmbeddingIndex.load(index.save(tmp_path / "index.npz"))
    assert loaded.model_id == index.model_id and loaded.nprobe == 5
    after = loaded.search(data[:50], 10)  # "auto": the saved IVF index is used, not retrained
    assert after.method == before.method
    np.testing.assert_array_equal(after.indices, before.indices)
    np.testing.assert_array_equal(after.labels, before.labels)


def test_bad_ivf_settings_are_refused(data: np.ndarray) -> None:
    with pytest.raises(InputError, match="nlist"):
        EmbeddingIndex(data[:100]).build_ivf(nlist=500)
