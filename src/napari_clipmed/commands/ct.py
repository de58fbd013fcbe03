"""`clipmed ct-montage` and `clipmed ct-eval`: the CT ILD montage pipeline from the shell.

Thin wrappers over `napari_clipmed.ct.pipeline` and `napari_clipmed.ct.cohort`; heavy imports
happen only when a command runs, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from napari_clipmed.commands._checks import preflight
from napari_clipmed.commands._progress import CliProgress
from napari_clipmed.errors import InputError
from napari_clipmed.io.runfolder import RunFolder

DEFAULT_MODEL = "openai-vit-b-16"


def config_from_args(args: argparse.Namespace):  # -> CTMontageConfig
    """The run config: a saved config.json (--config) with any options given on the command line on top."""
    from napari_clipmed.ct.pipeline import CTMontageConfig
    from napari_clipmed.ops.ct_montage import check_config, ct_prompts

    cfg = CTMontageConfig()
    if args.config:
        if not Path(args.config).is_file():
            raise InputError(f"config file not found: {args.config}")
        try:
            data = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{args.config} is not a JSON config ({err})") from None
        if not isinstance(data, dict):
            raise InputError(f"{args.config} must hold a JSON object of settings, not a {type(data).__name__}")
        data.pop("model", None)
        data.pop("precision", None)  # recorded, not replayed: --precision decides
        cfg = CTMontageConfig.from_dict(data)
    patch = {k: v for k, v in {
        "size_mm": args.size_mm, "stride_mm": args.stride_mm, "slice_stride_mm": args.slice_stride_mm,
        "min_lung_fraction": args.min_lung_fraction,
        "axes": tuple(a.strip() for a in args.axes.split(",")) if args.axes else None,
        "window": tuple(args.window) if args.window else None,
    }.items() if v is not None}
    if args.rgb:
        from napari_clipmed.ct.patches import RGB_WINDOWS

        patch["windows"] = RGB_WINDOWS
    top = {k: v for k, v in {
        "k": args.k, "min_distance_mm": args.min_distance_mm, "cell_size": args.cell_size, "batch_size": args.batch_size,
        "class_prompts": ct_prompts(args.classes) if args.classes else None,
        "patch_prompts": ct_prompts(args.patch_prompts) if args.patch_prompts else None,
    }.items() if v is not None}
    search = {k: v for k, v in {
        "mode": args.search, "budget": args.budget, "max_rounds": args.max_rounds, "scout": args.scout,
        "stable_changes": args.stable_changes,
    }.items() if v is not None}
    if args.scout and "mode" not in search:
        search["mode"] = "coarse-to-fine"  # a scout only makes sense there
    try:
        cfg = replace(cfg, patch=replace(cfg.patch, **patch), search=replace(cfg.search, **search), **top)
    except TypeError as err:
        raise InputError(f"CT montage settings of the wrong type ({err})") from None
    check_config(cfg)
    return cfg


def _add_pipeline_options(p: argparse.ArgumentParser) -> None:
    from napari_clipmed.commands.models import add_model_arguments

    add_model_arguments(p, default=DEFAULT_MODEL)
    g = p.add_argument_group("patches and montage")
    g.add_argument("--config", help="config.json of an earlier run (options below override it)")
    g.add_argument("--size-mm", type=float, help="patch side in mm (default 32)")
    g.add_argument("--stride-mm", type=float, help="distance between patch positions in mm (default 16)")
    g.add_argument("--slice-stride-mm", type=float, help="distance between the slices used (default: the stride)")
    g.add_argument("--axes", help="comma-separated: axial, coronal, sagittal (default axial)")
    g.add_argument("--min-lung-fraction", type=float, help="keep patches at least this much lung (default 0.5)")
    g.add_argument("--window", type=float, nargs=2, metavar=("WIDTH", "LEVEL"), help="HU window (default 1500 -600)")
    g.add_argument("--rgb", action="store_true", help="three-window RGB: lung, mediastinal, parenchymal")
    g.add_argument("--k", type=int, help="patches in the montage (default 16)")
    g.add_argument("--min-distance-mm", type=float, help="no two montage patches closer than this (default: patch size)")
    g.add_argument("--cell-size", type=int, help="montage cell side in pixels (default 128)")
    g.add_argument("--classes", help="montage classes: preset (ild, uip), YAML/JSON file or inline JSON (default ild)")
    g.add_argument("--patch-prompts", help="patch finding prompts: YAML/JSON file or inline JSON (default: ILD findings)")
    g.add_argument("--batch-size", type=int, help="patches per model batch (default 64)")
    g = p.add_argument_group("patch search")
    g.add_argument("--search", choices=("exhaustive", "coarse-to-fine"),
                   help="score every patch (default), or a coarse grid refined around the best until the top k is stable")
    g.add_argument("--budget", type=float, help="coarse-to-fine: most patches scored, as a fraction of the grid (default 0.3)")
    g.add_argument("--max-rounds", type=int, help="coarse-to-fine: rounds including the coarse one (default 4)")
    g.add_argument("--stable-changes", type=int,
                   help="coarse-to-fine: stop when a round changes at most this many chosen patches (default 0)")
    g.add_argument("--scout", metavar="MODEL",
                   help="coarse-to-fine: a smaller registry model that scores the coarse round (e.g. openai-vit-b-32)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _ct_montage(args: argparse.Namespace) -> int:
    from napari_clipmed.commands.models import model_from_args
    from napari_clipmed.ct.io import read_ct
    from napari_clipmed.ops import ct_montage as op
    from napari_clipmed.progress import run_generator

    preflight(args, out_dir=args.out)
    volume = read_ct(args.volume, series_id=args.series)  # bad input fails here, before the model loads
    request = op.CTMontageRequest(volume, config_from_args(args))
    model = model_from_args(args)
    scout = None
    if request.config.search.scout:
        from napari_clipmed.models.loader import load_model

        scout = load_model(request.config.search.scout, weights_dir=args.weights_dir, device=args.device)
    printer = CliProgress(args.quiet)
    try:  # the rounds' partial results go by: only the final result is written
        result = run_generator(op.iter_run(request, model, scout_model=scout), printer)
    finally:
        printer.close()
    files = result.save(args.out)
    probs = ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())
    scored = "" if result.patches_scored == len(result.patches) else (
        f" ({result.patches_scored} scored in {result.search_round} rounds"
        + (f", coarse round by scout {result.scout_model}" if result.scout_model else "") + ")")
    print(f"{len(result.patches)} lung patches{scored}, montage of {len(result.chosen)}: {probs}")
    print(f"wrote {', '.join(p.name for p in files.values())} to {args.out}")
    return 0


def _ct_eval(args: argparse.Namespace) -> int:
    from napari_clipmed.commands._cluster import check_cluster
    from napari_clipmed.commands.models import model_from_args
    from napari_clipmed.ct.cohort import iter_evaluate_cohort, read_cohort
    from napari_clipmed.progress import run_generator

    preflight(args, out_dir=args.out)
    cfg = config_from_args(args)
    if args.positive is not None and args.positive not in cfg.class_prompts:
        raise InputError(f"--positive {args.positive!r} is not one of the classes: {', '.join(cfg.class_prompts)}")
    if args.bootstrap < 1:
        raise InputError(f"--bootstrap needs at least 1 resample, got {args.bootstrap}")
    positive = args.positive or next(iter(cfg.class_prompts))
    read_cohort(args.cohort, [positive, *[c for c in cfg.class_prompts if c != positive]])  # check before loading
    check_cluster(args)  # a bad spec or a missing Dask fails before anything starts (or is written)
    with RunFolder(args.out, command="ct-eval"):
        if args.cluster:
            result = _ct_eval_distributed(args, cfg, positive)
        else:
            model = model_from_args(args)
            printer = CliProgress(args.quiet)
            case_dir = Path(args.out) / "cases" if args.save_montages else None
            try:
                result = run_generator(iter_evaluate_cohort(args.cohort, model, cfg, positive, args.bootstrap,
                                                            args.seed, case_dir=case_dir), printer)
            finally:
                printer.close()
        files = result.save(args.out)
    m = result.metrics()
    print(f"{m['n_scored']} of {m['n_cases']} cases scored ({m['n_positive']} {positive}); "
          f"AUROC {result.auroc:.3f} (95% CI {result.ci_low:.3f}-{result.ci_high:.3f}, {args.bootstrap} bootstrap resamples)")
    for row in result.cases:
        if row["error"]:
            print(f"  failed {row['case']}: {row['error']}", file=sys.stderr)
    print(f"wrote {', '.join(p.name for p in files.values())} to {args.out}")
    return 0


def _ct_eval_distributed(args: argparse.Namespace, cfg, positive: str):  # -> CohortResult
    """One Dask task per case; per-case outputs in OUT/items/<case>/ (montages there with --save-montages)."""
    from napari_clipmed.commands._cluster import ItemBar, model_ref_from_args
    from napari_clipmed.ct.cohort import iter_evaluate_cohort
    from napari_clipmed.distributed import cluster_client
    from napari_clipmed.progress import run_generator

    ref = model_ref_from_args(args)
    with cluster_client(args.cluster, torch_threads=args.torch_threads) as client:
        bar = ItemBar(args.quiet, unit="case")
        try:
            return run_generator(iter_evaluate_cohort(args.cohort, ref, cfg, positive, args.bootstrap, args.seed,
                                                      case_dir=Path(args.out) if args.save_montages else None,
                                                      client=client, work_dir=Path(args.out)), bar)
        finally:
            bar.close()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ct-montage", help="CT volume -> CLIP-selected lung patch montage -> zero-shot ILD probabilities",
        description="Lung mask, physical-size patches, CLIP scores against ILD prompts, top-k with 3-D NMS, "
        "montage, zero-shot classification. Writes montage.png, montage.csv, patches.csv, scores.json, config.json.",
    )
    p.add_argument("volume", help="DICOM series folder, NIfTI, NRRD or MHA file")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--series", help="DICOM series UID, for a folder that holds several series (the error lists them)")
    _add_pipeline_options(p)
    p.set_defaults(func=_ct_montage)

    p = subparsers.add_parser(
        "ct-eval", help="AUROC of the CT montage pipeline on a cohort CSV (path,label)",
        description="Runs ct-montage on every case of COHORT.csv (columns path, label; paths relative to the CSV) and "
        "writes cases.csv, metrics.json (AUROC with a bootstrap CI), roc.png and config.json.",
    )
    p.add_argument("cohort", help="CSV with columns path and label")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--positive", help="the class whose probability is the score (default: the first class)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CI (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--save-montages", action="store_true", help="also save each case's montage outputs under OUT/cases/")
    _add_pipeline_options(p)
    from napari_clipmed.commands._cluster import add_cluster_arguments

    add_cluster_arguments(p)
    p.set_defaults(func=_ct_eval)
