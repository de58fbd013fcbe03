"""`clipmed embed`: a tile folder or CSV manifest into the shared embedding store, in-process or on a Dask cluster."""

from __future__ import annotations

import argparse
from pathlib import Path


def _embed(args: argparse.Namespace) -> int:
    from napari_clipmed.commands._checks import preflight
    from napari_clipmed.commands._cluster import ItemBar, check_cluster, print_failures
    from napari_clipmed.commands.models import model_from_args
    from napari_clipmed.distributed import cluster_client
    from napari_clipmed.ops.embed import EmbedRequest, iter_run
    from napari_clipmed.progress import run_generator

    preflight(args, out_dir=args.store)  # device and store folder, before anything is read or loaded
    request = EmbedRequest(args.source, args.store, chunk_size=args.chunk_size, batch_size=args.batch_size,
                           split=args.split, ct=args.ct, patch=_patch_config(args) if args.ct else None)
    check_cluster(args)  # a bad spec or a missing Dask fails before the model loads
    model = model_from_args(args)  # here too: its signature names the store folder, a missing checkpoint fails now
    with cluster_client(args.cluster, torch_threads=args.torch_threads) as client:
        bar = ItemBar(args.quiet, unit="chunk")
        try:
            result = run_generator(iter_run(request, model, client, device=args.device), bar)
        finally:
            bar.close()
    run = result.run
    print(f"{result.n_images} images in {len(run.keys)} chunks ({len(run.computed)} embedded now, "
          f"{len(run.reused)} already in the store, {len(run.failed)} failed); {len(result.skipped)} unreadable")
    print_failures(run)
    if result.index_path:
        print(f"index: {result.index_path} (clipmed retrieve --gallery {result.index_path}, or the Retrieval widget)")
    if args.report:
        result.save(args.report)
    return 1 if run.failed else 0


def _patch_config(args: argparse.Namespace):  # -> PatchConfig
    from dataclasses import replace

    from napari_clipmed.ct.patches import PatchConfig

    changes = {k: v for k, v in {"size_mm": args.size_mm, "stride_mm": args.stride_mm}.items() if v is not None}
    return replace(PatchConfig(), **changes)


def register(subparsers: argparse._SubParsersAction) -> None:
    from napari_clipmed.commands._cluster import add_cluster_arguments
    from napari_clipmed.commands.models import add_model_arguments

    p = subparsers.add_parser(
        "embed", help="embed tiles into a shared embedding store (resumable; --cluster for Dask)",
        description="Embeds a tile folder, ImageFolder or CSV manifest in chunks into STORE/<model signature>/ "
        "(one shard per chunk, written as it finishes; a rerun skips finished chunks) and saves index.npz there.",
    )
    p.add_argument("source", type=Path, help="tile folder, ImageFolder or CSV manifest (path,label[,split])")
    p.add_argument("--store", required=True, type=Path, help="embedding store folder (shared by workers and machines)")
    p.add_argument("--chunk-size", type=int, default=256, help="tiles per task (default 256)")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per model batch (default 64)")
    p.add_argument("--split", help="only tiles of this manifest split")
    p.add_argument("--ct", action="store_true",
                   help="SOURCE is a CT volume or a CSV (path[,label]) of volumes: embed their lung patches, one task each")
    p.add_argument("--size-mm", type=float, help="--ct: patch side in mm (default 32)")
    p.add_argument("--stride-mm", type=float, help="--ct: distance between patch positions in mm (default 16)")
    p.add_argument("--report", type=Path, help="also write chunks.csv and skipped.csv to this folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(p)
    add_cluster_arguments(p)
    p.set_defaults(func=_embed)
