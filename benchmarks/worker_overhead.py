"""Is a model run inside a napari worker as fast as the same call made directly?

micro-sam turned its workers off after a large slowdown with napari >= 0.5 (its issue #740). This
script times `model.iter_encode_images` (a few hundred tiles with the tiny random CLIP, or a model
of your choice) called directly and inside `napari.qt.threading.create_worker`, from start to
`returned`, with a progress bar updated on every yield (as the widgets do). Repeats alternate the
two, and the medians' ratio is printed (target: <= 1.2x).

Run: `xvfb-run -a .venv/bin/python benchmarks/worker_overhead.py [--tiles 512] [--repeats 5]`
(without a display it falls back to Qt's offscreen platform).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def time_direct(job: Callable[[], Any]) -> float:
    from napari_clipmed.progress import run_generator

    start = time.perf_counter()
    run_generator(job())
    return time.perf_counter() - start


def time_worker(job: Callable[[], Any], app: Any, bar: Any) -> tuple[float, int]:
    """Seconds from `worker.start()` to `returned` on the GUI thread, and the number of yields seen."""
    from napari.qt.threading import create_worker
    from qtpy.QtCore import QEventLoop

    loop = QEventLoop()
    out: dict[str, float] = {}
    steps = [0]
    def drive() -> Any:  # a generator function, so napari makes a GeneratorWorker
        return (yield from job())

    worker = create_worker(drive, _start_thread=False)

    def on_yield(step: Any) -> None:
        steps[0] += 1
        bar.setRange(0, max(step.total, 1))
        bar.setValue(step.done)

    def on_returned(_: Any) -> None:
        out["t"] = time.perf_counter()

    worker.yielded.connect(on_yield)
    worker.returned.connect(on_returned)
    worker.finished.connect(loop.quit)
    start = time.perf_counter()
    worker.start()
    loop.exec()
    return out["t"] - start, steps[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--tiles", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="tile side in pixels")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if not os.environ.get("DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"

    import torch
    from napari._qt.qt_event_loop import get_qapp
    from qtpy.QtWidgets import QProgressBar

    from napari_clipmed.models.loader import load_model

    app = get_qapp()
    bar = QProgressBar()
    model = load_model(args.model, device="cpu")
    tiles = np.random.default_rng(0).integers(0, 256, (args.tiles, args.size, args.size, 3), dtype=np.uint8)

    def job() -> Any:
        return model.iter_encode_images(tiles, batch_size=args.batch_size)

    time_direct(job)  # warm-up: first calls allocate and tune kernels
    time_worker(job, app, bar)
    direct, worker, yields = [], [], 0
    for _ in range(args.repeats):
        direct.append(time_direct(job))
        seconds, yields = time_worker(job, app, bar)
        worker.append(seconds)
    d, w = statistics.median(direct), statistics.median(worker)
    print(f"model {args.model}, {args.tiles} tiles of {args.size} px, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, {args.repeats} repeats, {yields} progress signals per run")
    print(f"direct call : median {d:.3f} s  (runs: {', '.join(f'{x:.3f}' for x in direct)})")
    print(f"napari worker: median {w:.3f} s  (runs: {', '.join(f'{x:.3f}' for x in worker)})")
    print(f"worker / direct = {w / d:.2f}x  (target <= 1.2x)")


if __name__ == "__main__":
    main()
