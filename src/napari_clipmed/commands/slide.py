"""`clipmed slide-zeroshot` and `clipmed slide-index`: whole slides at the models' magnification.

Every slide is checked (readable, RGB, pixel size known or given) before the model loads, so a bad
file is one message and nothing is written. Each slide's outputs go to `OUT/<slide>/`, built in a
temporary folder and renamed into place; a rerun after an interruption skips the finished slides.
With `--cluster`, each slide is one Dask task and its outputs go to `OUT/items/<slide>/slide/`; the summary
(`OUT/slide_scores.csv`, `OUT/run_config.json`) is written in both cases.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

from napari_clipmed.commands._progress import CliProgress
from napari_clipmed.commands.models import add_model_arguments, model_from_args
from napari_clipmed.errors import InputError


def _tiling(args: argparse.Namespace) -> Any:
    from napari_clipmed.ops.slide_common import SlideTiling

    return SlideTiling(args.mpp, args.tile, args.min_tissue, args.slide_mpp, batch_size=args.batch_size)


def _check_slides(paths: list[str], slide_mpp: float | None) -> None:
    """Open every slide once (cheap: headers only) so that a bad one stops the run before any work."""
    from napari_clipmed.io.slide import SlideWarning, open_slide, slide_stem

    stems = [slide_stem(p) for p in paths]
    twins = sorted({s for s in stems if stems.count(s) > 1})
    if twins:
        raise InputError(f"slides must have distinct names (their output folders): {', '.join(twins)}")
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SlideWarning)
            slide = open_slide(path, mpp=slide_mpp)
        slide.close()
        if slide.mpp is None:
            raise InputError(f"{Path(path).name} does not say its pixel size; give it with --slide-mpp (µm per pixel)")


def _slide_zeroshot(args: argparse.Namespace) -> int:
    from napari_clipmed.io.atomic import write_frame, write_json
    from napari_clipmed.io.slide import slide_stem
    from napari_clipmed.ops.slide_zeroshot import SlideZeroShotRequest, iter_run
    from napari_clipmed.progress import run_generator

    if args.preset is None and args.classes is None:
        raise InputError("give the classes: --preset NAME (or YAML file) or --classes a,b,c")
    from napari_clipmed.zeroshot import PromptSet

    prompts = PromptSet.parse(args.preset if args.preset is not None else args.classes, args.templates)
    out = Path(args.out)
    tiling = _tiling(args)
    requests = [
        SlideZeroShotRequest(s, prompts, tiling, args.top_j, args.top_k, str(out / slide_stem(s)), args.table, args.heatmap)
        for s in args.slides
    ]
    _check_slides(list(args.slides), args.slide_mpp)
    if args.cluster:
        return _slide_zeroshot_on_cluster(args, requests)
    todo = [r for r in requests if not (Path(r.out) / "scores.json").is_file()]  # type: ignore[arg-type]
    for r in requests:
        if r not in todo:
            print(f"{slide_stem(r.slide)}: already done, skipped")
    if todo:
        model = model_from_args(args)
        printer = CliProgress(args.quiet)
        try:
            for r in todo:
                result = run_generator(iter_run(r, model), printer)
                scores = result.slide_scores()
                print(f"{result.name}: {scores['tiles']:,} tiles, slide class {scores['predicted']} -> {r.out}")
        finally:
            printer.close()
        config = {**requests[0].config(), "slides": list(args.slides), "model": model.identity}
        config.pop("slide")
        write_json(out / "run_config.json", config)
    _write_summary(out, requests, write_frame)
    return 0


def _slide_zeroshot_on_cluster(args: argparse.Namespace, requests: list[Any]) -> int:
    """One item per slide on Dask (`distributed.iter_run_items`): outputs in OUT/items/<slide>/slide/, resumable."""
    import json
    from dataclasses import replace

    from napari_clipmed.commands._cluster import ItemBar, check_cluster, model_ref_from_args
    from napari_clipmed.distributed import Item, cluster_client, iter_run_items
    from napari_clipmed.io.slide import slide_stem
    from napari_clipmed.ops.slide_zeroshot import item_outputs
    from napari_clipmed.progress import run_generator

    check_cluster(args)  # a bad spec or a missing Dask fails before any work
    ref = model_ref_from_args(args)
    items = [Item(slide_stem(r.slide), replace(r, out=None)) for r in requests]
    config = {k: v for k, v in requests[0].config().items() if k != "slide"}
    fingerprint = json.dumps({**config, "model": [str(ref.name), ref.weights]}, sort_keys=True, default=str)
    with cluster_client(args.cluster, torch_threads=args.torch_threads) as client:
        bar = ItemBar(args.quiet, unit="slide")
        try:
            run = run_generator(iter_run_items(item_outputs, items, args.out, model=ref, client=client,
                                               message="slides", fingerprint=fingerprint), bar)
        finally:
            bar.close()
    _report_slides(run, Path(args.out))
    from napari_clipmed.io.atomic import write_frame, write_json

    # the same summary as in-process: slide_scores.csv (finished slides) and run_config.json
    finished = [replace(r, out=str(run.item_dir(i.key) / "slide")) for r, i in zip(requests, items)]
    _write_summary(Path(args.out), finished, write_frame)
    write_json(Path(args.out) / "run_config.json",
               {**config, "slides": [r.slide for r in requests], "model": str(ref.name), "cluster": args.cluster})
    return 1 if run.failed else 0


def _report_slides(run: Any, out: Path) -> None:
    """How a cluster run's slides went (computed, reused, failed, with each failure's error)."""
    from napari_clipmed.commands._cluster import print_failures

    print(f"{len(run.keys)} slides ({len(run.computed)} done now, {len(run.reused)} already done, "
          f"{len(run.failed)} failed) in {out / 'items'}")
    print_failures(run)


def _write_summary(out: Path, requests: list[Any], write_frame: Any) -> None:
    """slide_scores.csv: one row per finished slide (probability per class, predicted class)."""
    import json

    import pandas as pd

    rows = []
    for r in requests:
        path = Path(r.out) / "scores.json"
        if path.is_file():
            scores = json.loads(path.read_text())
            rows.append({"slide": scores["slide"], "tiles": scores["tiles"], "predicted": scores["predicted"],
                         **{f"p({k})": v for k, v in scores["probability"].items()}})
    if rows:
        write_frame(out / "slide_scores.csv", pd.DataFrame(rows))


def _slide_index(args: argparse.Namespace) -> int:
    from napari_clipmed.ops.slide_index import SlideIndexRequest, iter_run
    from napari_clipmed.progress import run_generator

    request = SlideIndexRequest(tuple(args.slides), _tiling(args), str(args.out))
    query = _parse_query(args.query) if args.query else None
    _check_slides(list(args.slides), args.slide_mpp)
    if args.cluster:
        return _slide_index_on_cluster(args, request, query)
    model = model_from_args(args)
    printer = CliProgress(args.quiet)
    try:
        result = run_generator(iter_run(request, model), printer)
    finally:
        printer.close()
    print(f"indexed {len(result.to_frame()):,} tiles of {len(result.entries)} slide(s) in {args.out}")
    if query is not None:
        from napari_clipmed.io.atomic import write_frame

        slide, box = query
        hits = result.query(model, slide, box, k=args.k)
        write_frame(Path(args.out) / "hits.csv", hits.to_frame())
        print(f"wrote {len(hits.frame)} hits to {Path(args.out) / 'hits.csv'}")
    return 0


def _slide_index_on_cluster(args: argparse.Namespace, request: Any, query: Any) -> int:
    """One item per slide on Dask: embeddings in OUT/items/<slide>/slide/ (resumable), the gallery in OUT/index.npz."""
    from napari_clipmed.commands._cluster import ItemBar, check_cluster, model_ref_from_args
    from napari_clipmed.distributed import cluster_client
    from napari_clipmed.ops.slide_index import iter_run_on_cluster
    from napari_clipmed.progress import run_generator

    check_cluster(args)  # a bad spec or a missing Dask fails before any work
    ref = model_ref_from_args(args)
    with cluster_client(args.cluster, torch_threads=args.torch_threads) as client:
        bar = ItemBar(args.quiet, unit="slide")
        try:
            result = run_generator(iter_run_on_cluster(request, ref, client), bar)
        finally:
            bar.close()
    run = result.run
    assert run is not None  # a cluster run says which slides were computed, reused or failed
    out = Path(args.out)
    _report_slides(run, out)
    if result.entries:
        index_path = result.index().save(out / "index.npz")
        print(f"indexed {len(result.to_frame()):,} tiles of {len(result.entries)} slide(s); gallery: {index_path}")
    if query is not None and result.entries:
        from napari_clipmed.io.atomic import write_frame

        slide, box = query
        hits = result.query(model_from_args(args), slide, box, k=args.k)
        write_frame(out / "hits.csv", hits.to_frame())
        print(f"wrote {len(hits.frame)} hits to {out / 'hits.csv'}")
    return 1 if run.failed else 0


def _parse_query(text: str) -> tuple[str, tuple[float, float, float, float]]:
    slide, _, box = text.rpartition(":")
    try:
        values = tuple(float(v) for v in box.split(","))
    except ValueError:
        values = ()
    if not slide or len(values) != 4:
        raise InputError(f"--query is SLIDE:y0,x0,y1,x1 (level-0 pixels); got {text!r}")
    return slide, values  # type: ignore[return-value]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (SVS, TIFF, NDPI, MRXS, DICOM folder, ...)")
    add_model_arguments(p, default=None)
    p.add_argument("--mpp", type=float, default=0.5, help="target magnification, µm per tile pixel (default 0.5 = 20x)")
    p.add_argument("--tile", type=int, default=224, help="tile side in pixels (default 224)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="smallest tissue fraction of a kept tile (default 0.5)")
    p.add_argument("--slide-mpp", type=float, help="the slides' own µm per pixel, when a file does not say")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, type=Path, help="output folder (one subfolder per slide)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "slide-zeroshot",
        help="zero-shot classes over whole slides: tile table, heat maps, top tiles, slide scores",
        description=(
            "Classify every tissue tile of each slide at the target magnification; write per slide a tile "
            "table, a heat map per class, top-tile PNGs, the MI-Zero slide score and the run's config."
        ),
    )
    _common(p)
    p.add_argument("--preset", help="prompt preset name or YAML/JSON file")
    p.add_argument("--classes", help="comma-separated class names (instead of --preset)")
    p.add_argument("--templates", help="prompt templates separated by ';', each with {}")
    p.add_argument("--top-j", type=int, default=10, help="tiles pooled per class for the slide score (MI-Zero, default 10)")
    p.add_argument("--top-k", type=int, default=5, help="top tiles saved per class (default 5)")
    p.add_argument("--table", choices=("csv", "parquet"), default="csv", help="tile table format (default csv)")
    p.add_argument("--heatmap", choices=("tiff", "zarr"), default="tiff", help="heat map format (default pyramidal TIFF)")
    from napari_clipmed.commands._cluster import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=_slide_zeroshot)

    p = subparsers.add_parser(
        "slide-index",
        help="embed the tissue tiles of whole slides for retrieval (resumable), optionally query a rectangle",
        description="Index slides' tissue tiles at the target magnification; --query SLIDE:y0,x0,y1,x1 writes hits.csv.",
    )
    _common(p)
    p.add_argument("--query", help="query rectangle SLIDE:y0,x0,y1,x1 in level-0 pixels")
    p.add_argument("--k", type=int, default=12, help="hits per query (default 12)")
    add_cluster_arguments(p)
    p.set_defaults(func=_slide_index)
