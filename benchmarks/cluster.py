"""Cohort scaling on Dask: the same items in-process vs on `local:N` worker processes, one run.

Each item encodes `--images` seeded random 224 x 224 tiles with a randomly initialised ViT-B/16 (open_clip's
architecture, no weights needed), sized so that one item takes 10 s or more on this machine. Reports:

- in-process wall time with all cores (the default) and with one worker's share (cores // N threads);
- `local:N` wall time (workers started and the model loaded on each before timing, as in a long run);
- speed-up and scaling efficiency = (in-process time at one worker's threads / cluster time) / N;
- per-task overhead = 1 - (sum of task compute times) / (N x cluster wall time): scheduling, result transfer
  and idle time, as a share of task time.

    python benchmarks/cluster.py                  # 4 items of ~10+ s on local:2 (a few minutes)
    python benchmarks/cluster.py --quick          # smoke test: tiny model, small items
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_clipmed.distributed import (
    Item,
    ModelRef,
    cluster_client,
    default_torch_threads,
    run_items,
    worker_model,
)
from napari_clipmed.models.registry import ModelSpec
from napari_clipmed.models.cpuinfo import isa_summary

VIT_B16 = ModelSpec(name="vit-b-16-random", arch="ViT-B-16", description="random ViT-B/16 for benchmarks",
                    needs_weights=False, weights_format="none")




def encode_item(payload: tuple[int, int, int], model) -> dict[str, object]:
    """One item: `n` seeded random tiles of side `size`, encoded; the embeddings are the output."""
    seed, n, size = payload
    images = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return {"embeddings": model.encode_images(list(images), batch_size=32)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--images", type=int, default=96, help="tiles per item (raise until one item takes >= 10 s)")
    ap.add_argument("--quick", action="store_true", help="tiny model and small items: a smoke test")
    args = ap.parse_args()
    spec, size = (VIT_B16, 224) if not args.quick else ("tiny-random", 64)
    if args.quick:
        args.items, args.images = 2 * args.workers, 16
    ref = ModelRef(spec, device="cpu")
    items = [Item(f"item{i:03d}", (i, args.images, size)) for i in range(args.items)]
    cores = os.cpu_count() or 1
    share = default_torch_threads(args.workers, cores)
    print(f"{args.items} items x {args.images} tiles ({getattr(spec, 'name', spec)}), local:{args.workers}; "
          f"cpus {cores}, torch threads per worker {share}; ISA: {isa_summary()}")
    fn = encode_item
    root = Path(tempfile.mkdtemp(prefix="clipmed-cluster-bench-"))
    try:
        model = worker_model(ref)
        encode_item((999, 2, size), model)  # warm-up
        times = {}
        for label, threads in (("all cores", cores), ("one worker's share", share)):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            local = run_items(fn, items, root / f"local-{threads}", model=model)
            times[label] = time.perf_counter() - t0
        torch.set_num_threads(cores)
        per_item = times["one worker's share"] / args.items
        with cluster_client(f"local:{args.workers}") as client:
            client.run(lambda: worker_model(ref) and None)  # load the model on every worker before timing
            t0 = time.perf_counter()
            remote = run_items(fn, items, root / "cluster", model=ref, client=client)
            t_cluster = time.perf_counter() - t0
        same = all(np.array_equal(a, b) for a, b in zip(local.read_arrays("embeddings"), remote.read_arrays("embeddings")))
        busy = sum(remote.task_seconds.values())
        speedup = times["one worker's share"] / t_cluster
        print(f"in-process: {times['all cores']:.1f} s with {cores} threads, {per_item * args.items:.1f} s "
              f"with {share} ({per_item:.1f} s per item)")
        print(f"local:{args.workers}: {t_cluster:.1f} s -> speed-up {speedup:.2f}x vs one worker's share "
              f"(efficiency {speedup / args.workers:.2f} per worker, target >= 0.8), "
              f"{times['all cores'] / t_cluster:.2f}x vs in-process on all cores")
        print(f"task compute on the cluster {busy / args.items:.1f} s per item vs {per_item:.1f} s in-process at "
              f"{share} thread(s): {busy / args.items / per_item:.2f}x (both workers busy at once)")
        print(f"per-task overhead (scheduling, transfer, idle): {1 - busy / (args.workers * t_cluster):.1%} of "
              f"{args.workers} x wall (target < 5% for tasks >= 10 s); outputs identical to in-process: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
