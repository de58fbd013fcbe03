"""Retrieval speed: `EmbeddingIndex` vs scikit-learn's brute-force NearestNeighbors, same data, same run.

Measures (a) single-query latency (median over many queries) and (b) all-pairs leave-one-out top-10
over N x D random L2-normalised float32 embeddings (seeded). All-pairs search costs N^2 x D
multiply-adds (10 TFLOP at 100k x 512: minutes on a laptop), so by default both sides answer a
subset of the N leave-one-out queries against the full gallery and the time is extrapolated
linearly to all N (queries are independent chunks; the output says so). `--full` runs ours on
all N queries.

    python benchmarks/retrieval.py                 # 100k x 512, as in docs/robustness.md
    python benchmarks/retrieval.py --full          # ours on all 100k queries (several minutes)
    python benchmarks/retrieval.py --n 20000       # quicker
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from sklearn.neighbors import NearestNeighbors
import torch

from napari_clipmed.retrieval import EmbeddingIndex


def _median_latency(fn, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="gallery size (all-pairs: also the query count)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--single", type=int, default=100, help="queries for our single-query latency")
    ap.add_argument("--sklearn-single", type=int, default=30, help="queries for sklearn's single-query latency")
    ap.add_argument("--sklearn-subset", type=int, default=2000, help="queries timed for sklearn's all-pairs")
    ap.add_argument("--ours-subset", type=int, default=8192, help="queries timed for our all-pairs")
    ap.add_argument("--torch-subset", type=int, default=2048, help="queries timed for our torch backend (0: skip)")
    ap.add_argument("--full", action="store_true", help="run our all-pairs on all N queries")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    queries = x[rng.choice(args.n, args.single, replace=False)]
    print(f"{args.n} x {args.dim} float32, k={args.k}; torch threads {torch.get_num_threads()}, "
          f"cpus {os.cpu_count()}, {platform.processor() or platform.machine()}")

    t0 = time.perf_counter()
    index = EmbeddingIndex(x)
    index.search(queries[:2], args.k)  # warm-up
    index.search(x[:128], args.k, backend="auto")  # builds the faiss index when "auto" picks it for batches
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    nn = NearestNeighbors(n_neighbors=args.k, algorithm="brute", metric="cosine").fit(x)
    t_fit = time.perf_counter() - t0
    print(f"build + warm-up: ours {t_build:.3f} s (incl. the faiss index), sklearn fit {t_fit:.3f} s")

    ours_1 = _median_latency(lambda q: index.search(q, args.k), queries)
    sk_1 = _median_latency(lambda q: nn.kneighbors(q, args.k), queries[: args.sklearn_single])
    print(f"(a) single query (our backend: {'faiss' if index._use_faiss('auto', 1) else 'torch'}): median ours "
          f"{ours_1 * 1e3:.1f} ms over {args.single}, sklearn {sk_1 * 1e3:.1f} ms over {args.sklearn_single} "
          f"-> sklearn/ours = {sk_1 / ours_1:.1f}x")

    m = min(args.sklearn_subset, args.n)
    t0 = time.perf_counter()
    _, sk_idx = nn.kneighbors(x[:m], args.k + 1)  # +1: the query itself comes back first
    sk_sub = time.perf_counter() - t0
    sk_all = sk_sub * args.n / m
    mo = args.n if args.full else min(args.ours_subset, args.n)
    t0 = time.perf_counter()
    hits = index.search(x[:mo], args.k, query_rows=np.arange(mo))
    ours_sub = time.perf_counter() - t0
    ours_all = ours_sub * args.n / mo
    sk_loo = np.array([row[row != i][: args.k] for i, row in enumerate(sk_idx)])
    agree = np.mean(np.all(sk_loo == hits.indices[:m], axis=1))
    ours_txt = f"{ours_sub:.1f} s for {mo} queries" + ("" if mo == args.n else f" -> {ours_all:.1f} s extrapolated")
    backend = "faiss" if index._use_faiss("auto", mo) else "torch"
    print(f"(b) all-pairs leave-one-out top-{args.k} over {args.n} (our backend: {backend}): ours {ours_txt}; sklearn "
          f"{sk_sub:.1f} s for {m} queries -> {sk_all:.1f} s extrapolated "
          f"-> sklearn/ours = {sk_all / ours_all:.1f}x")
    print(f"    identical top-{args.k} lists on the {m} queries both ran: {agree:.1%}")
    mt = min(args.torch_subset, args.n)
    if mt and backend == "faiss":
        t0 = time.perf_counter()
        torch_hits = index.search(x[:mt], args.k, query_rows=np.arange(mt), backend="torch")
        torch_all = (time.perf_counter() - t0) * args.n / mt
        same = np.array_equal(torch_hits.indices, hits.indices[:mt])
        print(f"    our torch backend: {torch_all:.1f} s extrapolated from {mt} queries -> torch/faiss = "
              f"{torch_all / ours_all:.1f}x; hits identical to faiss: {same}")


if __name__ == "__main__":
    main()
