"""Encode a stream of image batches with several batches in flight on a CPU ("lanes").

One encoder running on all of torch's threads synchronises them at every op; when a slide's tile
readers take a core, one of those threads stalls and every op waits for it, so reading adds to the
model's time instead of hiding behind it. Encoding `lanes` batches at once, each on
threads // lanes torch threads, keeps every core busy with useful work and lets reading run beside it
(docs/performance.md, Slides: the tiny model's slide streaming on 2 cores went from 511 to about
690 tiles/s).

On a GPU, or with a single torch thread (a cluster worker's share), batches run one after the other
in the calling thread, exactly as before.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

MAX_LANES = 4
_THREADS_LOCK = threading.Lock()


def cpu_lanes(model: Any, threads: int | None = None) -> int:
    """Batches in flight for `model`: 1 off the CPU, else min(MAX_LANES, torch threads)."""
    device = getattr(model, "device", None)
    if device is None or torch.device(device).type != "cpu":
        return 1
    return max(1, min(MAX_LANES, threads or torch.get_num_threads()))


def balanced_batch_size(count: int, batch_size: int, lanes: int) -> int:
    """At most `batch_size`, so that `count` items make a whole multiple of `lanes` batches of nearly
    equal size: the last batches then finish together instead of one running alone on its lane's
    share of the threads (576 tiles in batches of 64 on 2 lanes left a core idle for 1/9 of the run)."""
    if count < 1 or lanes <= 1:
        return batch_size
    batches = -(-count // batch_size)
    batches = -(-batches // lanes) * lanes
    return max(1, -(-count // batches))


def iter_encode_batches(
    model: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]], lanes: int | None = None
) -> Generator[tuple[np.ndarray, np.ndarray], None, None]:
    """(indices, embeddings) for each (indices, images) batch, in order, with up to `lanes` encoding at once.

    Torch's thread count is threads // lanes while the lanes run and is restored after (lane threads
    take it when they start). Closing the generator (a cancelled run) drops the batches not yet
    started; a batch already encoding finishes in its thread, which then ends.
    """
    lanes = cpu_lanes(model) if lanes is None else max(1, lanes)
    if lanes == 1:
        for indices, images in batches:
            yield indices, model.encode_images(images, batch_size=len(images))
        return
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(max(1, previous // lanes))
    pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="clipmed-encode")
    pending: deque[tuple[np.ndarray, Future[np.ndarray]]] = deque()
    try:
        for indices, images in batches:
            pending.append((indices, pool.submit(model.encode_images, images, batch_size=len(images))))
            if len(pending) >= lanes:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        with _THREADS_LOCK:
            torch.set_num_threads(previous)
