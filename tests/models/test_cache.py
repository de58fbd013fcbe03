"""The embedding cache: no model work on a second run, keys that separate models, safe writes."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3

import numpy as np
import pytest

from napari_clipmed.errors import InputError
from napari_clipmed.models.cache import EmbeddingCache, image_key
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.registry import get_spec

RNG = np.random.default_rng(3)


class CountingEncoder:
    """Counts images through the patch embedding, which every image forward (stock or fast) runs."""

    def __init__(self, module) -> None:
        self.images = 0
        self.hook = module.visual.conv1.register_forward_hook(self)

    def __call__(self, layer, inputs, output) -> None:
        self.images += inputs[0].shape[0]


def test_second_run_does_no_model_work(tiny, tmp_path) -> None:
    cache = EmbeddingCache(tmp_path)
    counter = CountingEncoder(tiny.module)
    try:
        images = RNG.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8)
        first = tiny.encode_images(images, cache=cache, batch_size=5)
        assert counter.images == 12
        second = tiny.encode_images(images, cache=cache)
        assert counter.images == 12
        np.testing.assert_array_equal(first, second)
        # Partly new input: only the new images run.
        more = np.concatenate([images[:4], RNG.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)])
        third = tiny.encode_images(more, cache=cache)
        assert counter.images == 15
        np.testing.assert_array_equal(third[:4], first[:4])
    finally:
        counter.hook.remove()  # the model is shared by the module's tests


def test_keys_separate_models_and_content(tiny, tmp_path) -> None:
    image = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    other = load_model(get_spec("tiny-random").with_changes(seed=2), device="cpu")
    assert tiny.signature != other.signature
    cache = EmbeddingCache(tmp_path)
    a = tiny.encode_images([image], cache=cache)
    b = other.encode_images([image], cache=cache)
    assert not np.allclose(a, b)
    assert image_key("s", image) != image_key("s", image.astype(np.uint16))
    flipped = image[::-1]
    assert image_key("s", image) != image_key("s", flipped)
    assert image_key("s", flipped) == image_key("s", np.ascontiguousarray(flipped))


def test_bad_batch_writes_nothing(tiny, tmp_path) -> None:
    cache = EmbeddingCache(tmp_path)
    good = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    bad = np.full((64, 64, 3), np.nan, np.float32)
    with pytest.raises(InputError):
        tiny.encode_images([good, bad], cache=cache)
    assert len(cache.for_signature(tiny.signature)) == 0


def test_interrupted_write_leaves_no_partial_batch(tmp_path) -> None:
    cache = EmbeddingCache(tmp_path, "sig")
    cache.put_many(["a"], np.ones((1, 4), np.float32))

    vectors = np.ones((3, 4), np.float32)
    keys = ["b", "c", "d"]

    def rows():
        yield ("b", vectors[0].tobytes())
        raise KeyboardInterrupt

    conn = cache._connect()
    with pytest.raises(KeyboardInterrupt):
        with conn:
            conn.executemany("INSERT OR REPLACE INTO embeddings (key, data) VALUES (?, ?)", rows())
    assert set(cache.get_many(["a", *keys])) == {"a"}


def _writer(folder: str, worker: int) -> None:
    cache = EmbeddingCache(folder, "shared")
    rng = np.random.default_rng(worker)
    for i in range(20):
        keys = [f"{worker}-{i}-{j}" for j in range(10)]
        cache.put_many(keys, rng.random((10, 8), dtype=np.float32))


def test_concurrent_processes_can_share_a_cache(tmp_path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    cache = EmbeddingCache(tmp_path, "shared")
    assert len(cache) == 3 * 20 * 10
    conn = sqlite3.connect(cache.path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
