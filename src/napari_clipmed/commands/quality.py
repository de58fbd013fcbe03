"""`clipmed qc` and `clipmed qc-calibrate`: the image-quality gate from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_clipmed.commands._progress import StderrProgress


def _qc(args: argparse.Namespace) -> int:
    from napari_clipmed.ops.qc import QcRequest, iter_read_source, iter_run
    from napari_clipmed.pathology.gate import load_gate
    from napari_clipmed.progress import run_generator

    gate = load_gate(args.gate)  # a bad gate file fails before any reading
    printer = StderrProgress(args.quiet)
    try:
        images, ids, coords, skipped = run_generator(
            iter_read_source(args.source, tile_size=args.tile_size, level=args.level, min_tissue=args.min_tissue),
            printer)
        request = QcRequest(tuple(images), gate, tuple(ids), coords, args.tile_size if coords is not None else None,
                            batch_size=args.batch_size, device=args.device, skipped=tuple(skipped))
        result = run_generator(iter_run(request), printer)
    finally:
        printer.close()
    files = result.save(args.out)
    for note in result.notes:
        print(f"note: {note}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable images (listed in {files['summary']})")
    summary = result.summary()
    failed = ", ".join(f"{k} {v}" for k, v in summary["failed_by"].items()) or "none"
    print(f"{summary['passed']} of {summary['tiles']} tiles passed the gate (failed by measure: {failed})")
    print(f"wrote {files['table']} and {files['summary']}")
    return 0


def _qc_calibrate(args: argparse.Namespace) -> int:
    from napari_clipmed.ops.qc import iter_read_source
    from napari_clipmed.pathology.gate_calibration import iter_calibrate_gate
    from napari_clipmed.progress import run_generator

    printer = StderrProgress(args.quiet)
    try:
        images, _, _, skipped = run_generator(
            iter_read_source(args.source, tile_size=args.tile_size, level=args.level, min_tissue=args.min_tissue),
            printer)
        source = args.describe or f"{len(images)} tiles from {Path(args.source).name}"
        result = run_generator(iter_calibrate_gate(images, sensitivity=args.sensitivity,
                                                   max_false_flag=args.max_false_flag, seed=args.seed,
                                                   source=source, batch_size=args.batch_size, device=args.device),
                               printer)
    finally:
        printer.close()
    result.gate.save(args.out)
    info = result.gate.info
    if skipped:
        print(f"skipped {len(skipped)} unreadable images")
    print(result.to_frame().to_string(index=False))
    achieved = ", ".join(f"{k} {v:.3f}" for k, v in info["sensitivity_achieved"].items())
    print(f"sensitivity at severity >= 2: {achieved} (target {args.sensitivity}); clean tiles flagged: "
          f"{result.false_flag:.3f} (at most {args.max_false_flag})")
    if min(info["sensitivity_achieved"].values()) < args.sensitivity:
        print("warning: the target sensitivity is not reached within the false-flag budget on these tiles")
    print(f"wrote {args.out}")
    return 0


def _source_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="folder of tiles (or ImageFolder / CSV manifest), or a slide/large image")
    p.add_argument("--tile-size", type=int, default=224, help="tile side when cutting a slide (default 224)")
    p.add_argument("--level", type=int, default=0, help="pyramid level of a slide (default 0)")
    p.add_argument("--min-tissue", type=float, default=0.5, help="slide tiles kept from this tissue fraction (0.5)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", help="cpu, cuda, mps (default: best available)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("qc", help="image-quality gate: measures and pass/fail per tile",
                              description="Focus, resolution, ink, exposure, saturation and tissue per tile, and "
                              "the gate's verdict with reasons. Writes DIR/qc.csv and DIR/qc.json.")
    _source_options(p)
    p.add_argument("--gate", default=None, help="gate JSON (default: the shipped gate, calibrated on real H&E)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.set_defaults(func=_qc)

    p = subparsers.add_parser("qc-calibrate", help="calibrate a quality gate on clean tiles",
                              description="Corrupts the clean tiles with blur and resolution at severities 1-4 and "
                              "sets the focus/resolution bounds to flag severity >= 2 at the stated sensitivity "
                              "while flagging at most the stated share of the clean tiles.")
    _source_options(p)
    p.add_argument("--sensitivity", type=float, default=0.95, help="share of severity >= 2 tiles to flag (0.95)")
    p.add_argument("--max-false-flag", type=float, default=0.05, help="most clean tiles flagged (0.05)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--describe", help="what the tiles are, stored in the gate file")
    p.add_argument("--out", required=True, type=Path, help="gate JSON to write")
    p.set_defaults(func=_qc_calibrate)
