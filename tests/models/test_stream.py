"""Encoding lanes (`models.stream`): same embeddings as one batch at a time, order kept, torch threads restored."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_clipmed.models.stream import MAX_LANES, balanced_batch_size, cpu_lanes, iter_encode_batches


def _batches(count: int, size: int = 5, seed: int = 0, taken: list[int] | None = None):
    rng = np.random.default_rng(seed)
    for b in range(count):
        if taken is not None:
            taken.append(b)
        yield np.arange(b * size, (b + 1) * size), rng.integers(0, 256, (size, 40, 48, 3), dtype=np.uint8)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_lanes_give_the_embeddings_of_one_batch_at_a_time_in_order(tiny, two_threads) -> None:
    want = [(i, tiny.encode_images(images, batch_size=len(images))) for i, images in _batches(7)]
    got = list(iter_encode_batches(tiny, _batches(7), lanes=2))
    assert [i.tolist() for i, _ in got] == [i.tolist() for i, _ in want]
    for (_, a), (_, b) in zip(got, want):
        np.testing.assert_allclose(a, b, atol=1e-5)  # one thread per lane vs two: float rounding only
    assert torch.get_num_threads() == 2  # restored


def test_lanes_run_on_their_own_threads_with_a_share_of_torchs(tiny, two_threads) -> None:
    seen: list[tuple[str, int]] = []

    class Recording:
        device = tiny.device

        def encode_images(self, images, batch_size):
            seen.append((threading.current_thread().name, torch.get_num_threads()))
            return tiny.encode_images(images, batch_size=batch_size)

    list(iter_encode_batches(Recording(), _batches(4), lanes=2))
    assert all(name.startswith("clipmed-encode") and threads == 1 for name, threads in seen)
    list(iter_encode_batches(Recording(), _batches(2), lanes=1))  # one lane: in the calling thread, as before
    assert seen[-1] == (threading.current_thread().name, 2)


def test_closing_the_stream_stops_pulling_batches_and_restores_threads(tiny, two_threads) -> None:
    taken: list[int] = []
    stream = iter_encode_batches(tiny, _batches(50, taken=taken), lanes=2)
    next(stream)
    stream.close()
    assert len(taken) <= 3  # two in flight and one just submitted, not the 50
    assert torch.get_num_threads() == 2


def test_a_failing_batch_raises_and_restores_threads(tiny, two_threads) -> None:
    class Failing:
        device = tiny.device

        def encode_images(self, images, batch_size):
            raise ValueError("broken batch")

    with pytest.raises(ValueError, match="broken batch"):
        list(iter_encode_batches(Failing(), _batches(3), lanes=2))
    assert torch.get_num_threads() == 2


def test_lanes_follow_the_device_and_the_thread_budget(tiny) -> None:
    assert cpu_lanes(tiny, threads=1) == 1  # a cluster worker's one-thread share: one batch at a time
    assert cpu_lanes(tiny, threads=2) == 2
    assert cpu_lanes(tiny, threads=64) == MAX_LANES
    assert cpu_lanes(SimpleNamespace(device=torch.device("cuda")), threads=8) == 1
    assert cpu_lanes(SimpleNamespace(), threads=8) == 1  # no device: a wrapper we know nothing of


@pytest.mark.parametrize(("count", "lanes"), [(576, 2), (144, 2), (11_880, 2), (100, 3), (1, 2), (7, 4), (64, 2), (65, 2)])
def test_balanced_batches_are_a_whole_multiple_of_the_lanes_and_near_equal(count, lanes) -> None:
    size = balanced_batch_size(count, 64, lanes)
    assert 1 <= size <= 64
    sizes = [min(size, count - s) for s in range(0, count, size)]
    assert len(sizes) % lanes == 0 or len(sizes) < lanes  # no batch left to run alone (fewer items than lanes: one each)
    assert sizes[-1] > size - len(sizes)  # the smallest batch is short by less than one item per batch
    assert -(-count // 64) <= len(sizes) <= -(-count // 64) + lanes  # at most lanes - 1 batches more than before


def test_one_lane_keeps_the_batch_size() -> None:
    assert balanced_batch_size(576, 64, 1) == 64
    assert balanced_batch_size(576, 64, 2) == 58  # 10 batches: 9 of 58 and one of 54, five per lane
