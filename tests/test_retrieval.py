"""EmbeddingIndex against FAISS IndexFlatIP (independent reference) and a float64 brute force."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest

from napari_clipmed import retrieval
from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, run_generator
from napari_clipmed.retrieval import EmbeddingIndex


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute(gallery: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """Reference ranking: float64 similarities, ties by ascending index."""
    sims = queries.astype(np.float64) @ gallery.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return np.stack([np.lexsort((np.arange(len(gallery)), -row))[:k] for row in sims])


@pytest.mark.parametrize("backend", ["torch", "faiss"])
@pytest.mark.parametrize("seed", range(3))
def test_topk_equals_faiss_indexflatip(backend: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gallery, queries = _unit(rng, 700, 48), _unit(rng, 60, 48)
    ref = faiss.IndexFlatIP(48)
    ref.add(gallery)
    ref_sim, ref_idx = ref.search(queries, 10)
    hits = EmbeddingIndex(gallery).search(queries, 10, backend=backend)
    np.testing.assert_array_equal(hits.indices, ref_idx)
    np.testing.assert_allclose(hits.similarities, ref_sim, atol=1e-6)
    assert hits.similarities.dtype == np.float32 and hits.indices.dtype == np.int64


def test_backends_agree_on_ties_order_by_index() -> None:
    rng = np.random.default_rng(5)
    base = _unit(rng, 40, 16)
    # 30 copies of row 0 (more than k + margin: forces the exact full-gallery re-scan), a few of row 1
    gallery = np.concatenate([base, np.repeat(base[:1], 30, axis=0), np.repeat(base[1:2], 3, axis=0)])
    gallery = gallery[rng.permutation(len(gallery))]
    queries = np.concatenate([base[:2], _unit(rng, 5, 16)])
    index = EmbeddingIndex(gallery)
    a = index.search(queries, 20, backend="torch")
    b = index.search(queries, 20, backend="faiss")
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.similarities, b.similarities)
    np.testing.assert_array_equal(a.indices, _brute(gallery, queries, 20))
    dup_rows = np.flatnonzero(np.all(gallery == base[0], axis=1))
    np.testing.assert_array_equal(a.indices[0], dup_rows[:20])  # equal similarity -> ascending index


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_leave_one_out_never_returns_the_query(backend: str) -> None:
    rng = np.random.default_rng(1)
    gallery = _unit(rng, 120, 24)
    gallery[7] = gallery[3]  # a duplicate: it is another item and may be retrieved
    hits = EmbeddingIndex(gallery, labels=np.arange(120) % 4).search_gallery(5, backend=backend)
    assert not np.any(hits.indices == np.arange(120)[:, None])
    np.testing.assert_array_equal(hits.indices, _brute(gallery, gallery, 5, exclude_self=True))
    assert hits.indices[3, 0] == 7 and hits.indices[7, 0] == 3
    np.testing.assert_array_equal(hits.labels, hits.indices % 4)


def test_leave_one_out_for_a_subset_and_for_perturbed_queries() -> None:
    rng = np.random.default_rng(9)
    gallery = _unit(rng, 80, 12)
    index = EmbeddingIndex(gallery)
    full = index.search_gallery(4)
    rows = np.array([5, 0, 79, 5])
    sub = index.search(gallery[rows], 4, query_rows=rows)
    np.testing.assert_array_equal(sub.indices, full.indices[rows])
    # corrupted copies of the gallery items: each query still skips its own (clean) item
    noisy = gallery + 0.05 * rng.normal(size=gallery.shape).astype(np.float32)
    hits = index.search(noisy, 3, exclude_self=True)
    assert not np.any(hits.indices == np.arange(80)[:, None])
    ref = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    np.testing.assert_array_equal(hits.indices, _brute(gallery, ref, 3, exclude_self=True))
    with pytest.raises(InputError, match="one gallery row"):
        index.search(gallery[:2], 1, query_rows=[0, 80])


def test_leave_one_out_with_k_equal_gallery_minus_one() -> None:
    rng = np.random.default_rng(2)
    gallery = _unit(rng, 6, 4)
    hits = EmbeddingIndex(gallery).search(gallery, 5, exclude_self=True)
    assert sorted(hits.indices[2].tolist()) == [0, 1, 3, 4, 5]
    with pytest.raises(InputError, match="it has 6 items, so at most 5"):
        EmbeddingIndex(gallery).search(gallery, 6, exclude_self=True)


def test_chunked_search_matches_and_reports_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    gallery, queries = _unit(rng, 300, 8), _unit(rng, 50, 8)
    whole = EmbeddingIndex(gallery).search(queries, 7)
    monkeypatch.setattr(retrieval, "_CHUNK_ELEMENTS", 300 * 16)  # 16 queries per chunk (torch path)
    gen = EmbeddingIndex(gallery).iter_search(queries, 7)
    steps = []
    chunked = run_generator(gen, steps.append)
    assert steps[-1] == Progress(4, 4, "searching 50 queries") and len(steps) == 4
    np.testing.assert_array_equal(chunked.indices, whole.indices)
    monkeypatch.setattr(retrieval, "_FAISS_QUERY_CHUNK", 16)
    steps = []
    faiss_hits = run_generator(EmbeddingIndex(gallery).iter_search(queries, 7, backend="faiss"), steps.append)
    assert len(steps) == 4
    np.testing.assert_array_equal(faiss_hits.indices, whole.indices)


def test_auto_backend_switches_to_faiss_for_large_galleries(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    index = EmbeddingIndex(_unit(rng, 100, 8))
    assert not index._use_faiss("auto", 1000)
    monkeypatch.setattr(retrieval, "FAISS_MIN_GALLERY", 100)
    assert index._use_faiss("auto", 1000) and not index._use_faiss("auto", 3)
    assert index._use_faiss("faiss", 3) and not index._use_faiss("torch", 1000)
    monkeypatch.setattr(EmbeddingIndex, "_torch_topk", lambda *a: pytest.fail("torch path used"))
    assert index.search(_unit(rng, 64, 8), 2).indices.shape == (64, 2)


def test_inputs_are_normalised_without_modifying_them() -> None:
    rng = np.random.default_rng(6)
    raw = rng.normal(size=(30, 5)).astype(np.float64) * 7
    before = raw.copy()
    index = EmbeddingIndex(raw)
    np.testing.assert_array_equal(raw, before)
    np.testing.assert_allclose(np.linalg.norm(index.embeddings, axis=1), 1, atol=1e-6)
    hits = index.search(raw[:4] * 3, 1)
    np.testing.assert_array_equal(hits.indices[:, 0], [0, 1, 2, 3])
    np.testing.assert_allclose(hits.similarities[:, 0], 1, atol=1e-6)


def test_bad_inputs_raise_clear_errors() -> None:
    rng = np.random.default_rng(7)
    index = EmbeddingIndex(_unit(rng, 10, 8), labels=list("ab" * 5), model_id="plip")
    with pytest.raises(InputError, match="k=11 is larger than the gallery: it has 10 items"):
        index.search(_unit(rng, 2, 8), 11)
    with pytest.raises(InputError, match="4 dimensions but the index has 8"):
        index.search(_unit(rng, 2, 4), 1)
    with pytest.raises(InputError, match="model 'pathclip'.*model 'plip'"):
        index.add(_unit(rng, 2, 8), labels=["a", "b"], model_id="pathclip")
    with pytest.raises(InputError, match="model 'pathclip'"):
        index.search(_unit(rng, 2, 8), 1, model_id="pathclip")
    with pytest.raises(InputError, match="has labels"):
        index.add(_unit(rng, 2, 8), model_id="plip")
    with pytest.raises(InputError, match="all-zero"):
        EmbeddingIndex(np.zeros((3, 4)))
    with pytest.raises(InputError, match="NaN"):
        EmbeddingIndex(np.full((3, 4), np.nan))
    with pytest.raises(InputError, match="one entry per embedding"):
        EmbeddingIndex(_unit(rng, 3, 4), labels=[1, 2])
    index.add(_unit(rng, 2, 8), labels=["c", "c"], model_id="plip")
    assert len(index) == 12 and index.labels[-1] == "c"


def test_save_load_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    gallery = _unit(rng, 50, 12)
    labels = np.array(["tumour", "stroma"] * 25)
    ids = np.array([f"tile_{i:03d}.png" for i in range(50)])
    index = EmbeddingIndex(gallery, labels=labels, ids=ids, model_id="tiny-random")
    path = index.save(tmp_path / "sub" / "gallery")
    assert path.name == "gallery.npz" and [p.name for p in path.parent.iterdir()] == ["gallery.npz"]
    loaded = EmbeddingIndex.load(path)
    assert loaded.model_id == "tiny-random" and len(loaded) == 50
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    a, b = index.search(gallery[:5], 3), loaded.search(gallery[:5], 3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(b.labels, labels[b.indices])
    frame = b.to_frame()
    assert list(frame.columns) == ["query", "rank", "index", "similarity", "label", "id"]
    assert len(frame) == 15 and frame["id"].iloc[0] == ids[b.indices[0, 0]]


def test_load_rejects_other_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    with pytest.raises(InputError, match="cannot read the index"):
        EmbeddingIndex.load(tmp_path / "other.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        EmbeddingIndex.load(tmp_path / "broken.npz")
    with pytest.raises(InputError, match="no index file"):
        EmbeddingIndex.load(tmp_path / "missing.npz")
