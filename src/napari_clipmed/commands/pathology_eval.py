"""`clipmed robustness`, `clipmed zeroshot` and `clipmed retrieve`: pathology evaluation from the shell.

Thin wrappers over `napari_clipmed.bench` (importable for scripts); heavy imports happen only
when a command runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_clipmed.commands._checks import preflight
from napari_clipmed.commands._progress import CliProgress
from napari_clipmed.errors import InputError


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _templates(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from napari_clipmed.zeroshot import check_templates

    return list(check_templates([t.strip() for t in text.split(";") if t.strip()], source="--templates"))


def _tuple_or_none(items: list[str] | None) -> tuple[str, ...] | None:
    return tuple(items) if items is not None else None


def _common(p: argparse.ArgumentParser, single: bool = True) -> None:
    from napari_clipmed.commands.models import add_model_arguments

    add_model_arguments(p, default=None, single=single)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir", type=Path, help="embedding cache folder (default: the user cache)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write cached embeddings")
    p.add_argument("--store", type=Path, help="a shared embedding store (`clipmed embed`) instead of the local cache")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "robustness", help="models x corruptions x severities on a labelled tile set",
        description="Zero-shot and retrieval metrics under image corruptions. Resumes an interrupted run "
        "in the same --out folder. Writes results.csv, summary.md and plots/*.png.",
    )
    p.add_argument("--data", required=True, type=Path, help="ImageFolder (one folder per class) or CSV manifest")
    p.add_argument("--models", required=True, type=_csv_list,
                   help="comma-separated model names; NAME=CHECKPOINT loads that file: a registry model's "
                        "weights, or under any other label a local checkpoint such as a DAPT result")
    p.add_argument("--corruptions", default="all", type=_csv_list, help="comma-separated, or 'all'")
    p.add_argument("--severities", default="0,1,2,3,4", type=_int_list, help="0 = clean, up to 4")
    p.add_argument("--k", default="1,5,10", type=_int_list, help="retrieval cut-offs")
    p.add_argument("--preset", help="prompt preset (e.g. osteosarcoma, wsss4luad) or YAML file")
    p.add_argument("--templates", help="prompt templates separated by ';', each with {}")
    p.add_argument("--split", help="only tiles of this manifest split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gate", type=Path, help="quality gate JSON for the gate metrics (default: the shipped gate)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    _common(p, single=False)
    from napari_clipmed.commands._cluster import add_cluster_arguments

    add_cluster_arguments(p)
    p.add_argument("--chunk-size", type=int, default=256,
                   help="--cluster: tiles per task, each task encodes them under every condition (default 256)")
    p.set_defaults(func=_run_robustness)

    p = subparsers.add_parser("zeroshot", help="zero-shot classification of tiles or images",
                              description="Classify images by text prompts; with a labelled tile set also score it.")
    p.add_argument("--data", required=True, type=Path, help="ImageFolder, CSV manifest, folder of images or one image")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--classes", help="classes: comma-separated names, 'name: synonym; synonym' allowed "
                       "(default: the tile-set classes)")
    group.add_argument("--preset", help="prompt preset name or YAML/JSON file")
    p.add_argument("--templates", help="prompt templates separated by ';', each with {}")
    p.add_argument("--out", required=True, type=Path, help="predictions CSV")
    from napari_clipmed.commands.quality import add_zeroshot_options

    add_zeroshot_options(p)
    _common(p)
    p.set_defaults(func=_run_zeroshot)

    p = subparsers.add_parser("retrieve", help="nearest gallery tiles for query images",
                              description="Top-k most similar gallery images (cosine similarity of embeddings).")
    p.add_argument("--gallery", required=True, type=Path, help="image folder, ImageFolder, manifest or saved index.npz")
    p.add_argument("--query", required=True, type=Path, help="image, folder or manifest")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", required=True, type=Path, help="hits CSV")
    p.add_argument("--save-index", type=Path, help="also save the gallery index (.npz) for reuse")
    _common(p)
    p.set_defaults(func=_run_retrieve)


def _cache(args: argparse.Namespace):
    from napari_clipmed.models.cache import EmbeddingCache
    from napari_clipmed.models.store import EmbeddingStore

    if args.store:
        return EmbeddingStore(args.store)
    return None if args.no_cache else EmbeddingCache(args.cache_dir)


def _run_robustness(args: argparse.Namespace) -> int:
    from napari_clipmed.bench.robustness import RobustnessConfig, iter_run_robustness
    from napari_clipmed.datasets import load_tileset
    from napari_clipmed.commands._cluster import check_cluster
    from napari_clipmed.distributed import cluster_client
    from napari_clipmed.progress import run_generator

    preflight(args, out_dir=args.out)
    check_cluster(args)  # a bad spec, a missing Dask or a bad chunk size fails before any work
    if args.cluster and args.chunk_size < 1:
        raise InputError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    tileset = load_tileset(args.data)
    if args.split:
        tileset = tileset.select_split(args.split)
    config = RobustnessConfig(
        models=tuple(args.models), corruptions=tuple(args.corruptions), severities=tuple(args.severities),
        ks=tuple(args.k), preset=args.preset, templates=_tuple_or_none(_templates(args.templates)), seed=args.seed,
        batch_size=args.batch_size, out_dir=args.out, cache_dir=args.cache_dir,
        weights_dir=Path(args.weights_dir) if args.weights_dir else None,
        use_cache=not args.no_cache, device=args.device, store_dir=args.store, gate=args.gate,
        precision=getattr(args, "precision", "auto"),
    )
    with cluster_client(args.cluster, torch_threads=args.torch_threads) as client:
        printer = CliProgress(args.quiet)
        try:
            result = run_generator(iter_run_robustness(tileset, config, client=client, chunk_size=args.chunk_size),
                                   printer)
        finally:
            printer.close()
    if result.reused:
        print(f"resumed: {len(result.reused)} conditions reused, {len(result.computed)} computed")
    if result.skipped_images:
        print(f"skipped {len(result.skipped_images)} unreadable images (listed in {args.out / 'skipped_images.csv'})")
    print(f"wrote {result.files['results']} ({len(result.frame)} rows), {result.files['summary']}, "
          f"{sum(k.startswith('plot:') for k in result.files)} plots in {args.out / 'plots'}")
    return 0


def _run_zeroshot(args: argparse.Namespace) -> int:
    from napari_clipmed.bench import report
    from napari_clipmed.bench.tasks import iter_load_tiles, iter_zeroshot_tiles, prompt_columns, tileset_prompts
    from napari_clipmed.datasets import load_images
    from napari_clipmed.commands.models import model_from_args
    from napari_clipmed.progress import run_generator
    from napari_clipmed.zeroshot import PromptSet

    preflight(args, out_files=[(args.out, None)])
    tileset, labelled = load_images(args.data)
    templates = _templates(args.templates)
    columns = None
    if args.preset or args.classes is not None:
        prompts = PromptSet.parse(args.preset or args.classes, templates)
        if labelled:
            try:
                columns = prompt_columns(tileset.class_names, prompts)
            except InputError as err:
                print(f"note: predictions are not scored: {err}", file=sys.stderr)
    elif labelled:
        tileset.require_classes(2, "zero-shot classification")
        prompts, columns = tileset_prompts(tileset.class_names, None, templates)
    else:
        raise InputError("these images carry no labels: name the classes with --classes a,b or --preset NAME")
    model = model_from_args(args)
    from napari_clipmed.commands.quality import ZeroShotTrust

    printer = CliProgress(args.quiet)
    try:
        trust = ZeroShotTrust.from_args(args, model, prompts, printer, _cache(args))
        tiles = run_generator(iter_load_tiles(tileset), printer)
        result = run_generator(iter_zeroshot_tiles(model, tiles, prompts, columns, batch_size=args.batch_size,
                                                   cache=_cache(args), temperature=trust.temperature), printer)
        frame_extra = trust.columns(result.probabilities, result.classes, tiles.images, printer)
    finally:
        printer.close()
    if labelled and result.true is None:
        result.true = list(tiles.tileset.label_names)
    frame = result.to_frame()
    for name, values in frame_extra.items():
        frame.insert(frame.columns.get_loc("predicted") + 1 + list(frame_extra).index(name), name, values)
    report.write_csv(frame, args.out)
    for name, value in result.scores.items():
        print(f"{name}: {value:.4f}")
    print(f"wrote {args.out} ({len(frame)} images, classes: {', '.join(result.classes)})")
    return 0


def _run_retrieve(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_clipmed import metrics
    from napari_clipmed.bench import report
    from napari_clipmed.datasets import iter_read_images
    from napari_clipmed.commands.models import model_from_args
    from napari_clipmed.ops import retrieval as op
    from napari_clipmed.ops.geometry import SourceImage
    from napari_clipmed.progress import run_generator

    preflight(args, out_files=[(args.out, None), (args.save_index, (".npz",))])
    if args.gallery.suffix.lower() == ".npz":
        op.load_index(args.gallery)  # a bad index fails before the model loads
    model = model_from_args(args)
    printer = CliProgress(args.quiet)
    rows = None
    try:
        if args.gallery.suffix.lower() == ".npz":
            index = op.load_index(args.gallery)
        else:
            request = op.IndexRequest(args.gallery, batch_size=args.batch_size)
            index = run_generator(op.iter_build_index(request, model, _cache(args)), printer).index
        paths, labels = op.list_gallery(args.query)
        read = run_generator(iter_read_images(paths), printer)
        if not read.images:
            raise InputError(f"none of the {len(paths)} query images could be read (first: {read.failed[0][1]})")
        queries = tuple(SourceImage.of_array(image, str(paths[i])) for image, i in zip(read.images, read.indices))
        query_labels = None if labels is None else tuple(labels[i] for i in read.indices)
        if args.gallery.suffix.lower() != ".npz" and args.query.resolve() == args.gallery.resolve():
            ids: list[str] = [] if index.ids is None else [str(i) for i in index.ids]
            position = {p: i for i, p in enumerate(ids)}  # the queries are the gallery: leave each one out
            rows = tuple(position[q.name] for q in queries)
        query = op.QueryRequest(index, queries, args.k, query_rows=rows, query_labels=query_labels,
                                batch_size=args.batch_size)
        result = run_generator(op.iter_query(query, model, _cache(args)), printer)
    finally:
        printer.close()
    if args.save_index:
        print(f"saved the gallery index to {index.save(args.save_index)}")
    if rows is not None:
        print("queries are the gallery: each query is left out of its own search")
    report.write_csv(result.to_frame(), args.out)
    if query_labels is not None and result.hits.labels is not None:
        for name, value in metrics.retrieval_metrics(np.asarray(query_labels), result.hits.labels, [1, args.k]).items():
            print(f"{name}: {value:.4f}")
    print(f"wrote {args.out} ({len(queries)} queries x {args.k} hits from a gallery of {len(index)})")
    return 0
