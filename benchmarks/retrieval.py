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

Archive scale (`--approximate`): N x D embeddings with cluster structure (unit vectors around `--centres`
random directions, like tiles of many slides of a few tissue types; not uniform noise), approximate (FAISS IVF)
vs exact search in the same run: build time, median single-query latency, recall@10 against the exact top 10.

    python benchmarks/retrieval.py --approximate                      # 1,000,000 x 512 (about 5 GB of memory)
    python benchmarks/retrieval.py --approximate --n 50000 --quick    # smoke test
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
from napari_clipmed.models.cpuinfo import isa_summary


def _median_latency(fn, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        fn(q[None])
        times.append(time.perf_counter() - t0)
    return statistics.median(times)




def clustered(n: int, dim: int, centres: int, spread: float, seed: int) -> np.ndarray:
    """Unit vectors around `centres` random directions; `spread` is the per-coordinate noise (float32, in blocks)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        block = c[rng.integers(0, centres, m)] + (spread / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        x[s : s + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x


def approximate(args: argparse.Namespace) -> None:
    x = clustered(args.n, args.dim, args.centres, args.spread, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    rows = rng.choice(args.n, args.queries, replace=False)
    print(f"{args.n} x {args.dim} float32 around {args.centres} centres (spread {args.spread}), k={args.k}, "
          f"{args.queries} leave-one-out queries; cpus {os.cpu_count()}, torch threads {torch.get_num_threads()}; "
          f"ISA: {isa_summary()}")
    index = EmbeddingIndex(x)
    t0 = time.perf_counter()
    exact = index.search(x[rows], args.k, query_rows=rows, backend="faiss" if not args.torch_exact else "torch")
    t_exact_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    index.build_ivf(nlist=args.nlist, nprobe=args.nprobe)
    t_build = time.perf_counter() - t0
    approx = index.search(x[rows], args.k, query_rows=rows, backend="ivf")
    recall = np.mean([len(set(a) & set(e)) / args.k for a, e in zip(approx.indices, exact.indices)])
    single = rows[: args.single]
    lat_ivf = _median_latency(lambda q: index.search(q, args.k, backend="ivf"), x[single])
    lat_exact = _median_latency(lambda q: index.search(q, args.k, backend="torch"), x[single[: args.exact_single]])
    print(f"build: IVF {t_build:.1f} s ({approx.method}); exact needs none "
          f"(a batch of {args.queries} exact queries took {t_exact_batch:.1f} s)")
    print(f"recall@{args.k} of the approximate search vs exact: {recall:.4f} (target >= 0.99)")
    print(f"median single-query latency: approximate {lat_ivf * 1e3:.2f} ms over {len(single)}, exact (torch) "
          f"{lat_exact * 1e3:.1f} ms over {min(len(single), args.exact_single)} -> exact/approximate = "
          f"{lat_exact / lat_ivf:.1f}x (target < 5 ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None,
                    help="gallery size (all-pairs: also the query count); default 100,000, --approximate 1,000,000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--single", type=int, default=100, help="queries for our single-query latency")
    ap.add_argument("--sklearn-single", type=int, default=30, help="queries for sklearn's single-query latency")
    ap.add_argument("--sklearn-subset", type=int, default=2000, help="queries timed for sklearn's all-pairs")
    ap.add_argument("--ours-subset", type=int, default=8192, help="queries timed for our all-pairs")
    ap.add_argument("--torch-subset", type=int, default=2048, help="queries timed for our torch backend (0: skip)")
    ap.add_argument("--full", action="store_true", help="run our all-pairs on all N queries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--approximate", action="store_true", help="archive scale: IVF vs exact on clustered data")
    ap.add_argument("--centres", type=int, default=None, help="--approximate: cluster centres (default N // 200)")
    ap.add_argument("--spread", type=float, default=0.6, help="--approximate: noise norm relative to a centre")
    ap.add_argument("--queries", type=int, default=1000, help="--approximate: queries for recall")
    ap.add_argument("--exact-single", type=int, default=20, help="--approximate: single queries timed exactly")
    ap.add_argument("--nlist", type=int, default=None, help="--approximate: IVF cells (default ~sqrt(N))")
    ap.add_argument("--nprobe", type=int, default=None, help="--approximate: cells visited per query")
    ap.add_argument("--torch-exact", action="store_true", help="--approximate: exact ground truth with torch")
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    args = ap.parse_args()
    if args.n is None:
        args.n = 1_000_000 if args.approximate else 100_000
    if args.approximate:
        if args.quick:
            args.n, args.queries, args.single = min(args.n, 50_000), 200, 50
        args.centres = args.centres or max(1, args.n // 200)
        approximate(args)
        return

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
