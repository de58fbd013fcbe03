"""`clipmed qc` and `clipmed qc-calibrate`: the image-quality gate from the command line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.commands._progress import CliProgress
from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    from napari_clipmed.models.cache import EmbeddingCache
    from napari_clipmed.models.model import ClipModel
    from napari_clipmed.pathology.gate import Gate
    from napari_clipmed.zeroshot import PromptSet


def _qc(args: argparse.Namespace) -> int:
    from napari_clipmed.ops.qc import QcRequest, iter_read_source, iter_run
    from napari_clipmed.pathology.gate import load_gate
    from napari_clipmed.progress import run_generator

    gate = load_gate(args.gate)  # a bad gate file fails before any reading
    printer = CliProgress(args.quiet)
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

    printer = CliProgress(args.quiet)
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
    if skipped:
        print(f"skipped {len(skipped)} unreadable images")
    print(result.to_frame().to_string(index=False))
    achieved = ", ".join(f"{k} {v:.3f}" for k, v in result.sensitivity.items())
    print(f"sensitivity at severity >= 2: {achieved} (target {args.sensitivity}); clean tiles flagged: "
          f"{result.false_flag:.3f} (at most {args.max_false_flag})")
    if min(result.sensitivity.values()) < args.sensitivity:
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


# --------------------------------------------------------------------------- clipmed zeroshot: calibration, abstention


def add_zeroshot_options(p: argparse.ArgumentParser) -> None:
    """`clipmed zeroshot` options for temperature scaling and abstaining (wired in commands/pathology_eval.py)."""
    g = p.add_argument_group("calibration and abstention")
    g.add_argument("--calibrate", type=Path, metavar="LABELLED_DIR",
                   help="fit the softmax temperature on this labelled tile set (ImageFolder or manifest; one half "
                        "fits it, the other reports ECE before/after) and save it with the prompts")
    g.add_argument("--save-prompts", type=Path, help="prompt file written with the temperature "
                   "(default: OUT with suffix .prompts.yaml); pass it back with --preset")
    g.add_argument("--coverage", type=float, help="label 'uncertain' all but this share of tiles, the most confident "
                   "kept (threshold from the calibration hold-out with --calibrate, else from these tiles)")
    g.add_argument("--abstain-below", type=float, help="label 'uncertain' where the top probability is under this")
    g.add_argument("--gate", help="label 'uncertain' the tiles failing this quality gate JSON ('default': the shipped one)")
    g.add_argument("--calibration-seed", type=int, default=0, help="seed of the fit/held-out split (default 0)")


@dataclass(frozen=True)
class ZeroShotTrust:
    """The temperature and abstention rules of one `clipmed zeroshot` run."""

    temperature: float = 1.0
    threshold: float | None = None
    coverage: float | None = None  # choose the threshold on the classified tiles themselves
    gate: Gate | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, model: ClipModel, prompts: PromptSet,
                  printer: CliProgress, cache: EmbeddingCache | None = None) -> ZeroShotTrust:
        from napari_clipmed.calibration import (
            iter_calibrate_prompts,
            read_prompt_calibration,
            write_calibrated_prompts,
        )
        from napari_clipmed.pathology.gate import load_gate
        from napari_clipmed.progress import run_generator

        if args.coverage is not None and args.abstain_below is not None:
            raise InputError("give either --coverage or --abstain-below, not both")
        if args.coverage is not None and not 0.0 < args.coverage <= 1.0:
            raise InputError(f"--coverage is the share of tiles to keep, in (0, 1]; got {args.coverage}")
        gate = load_gate(args.gate) if args.gate else None
        block = read_prompt_calibration(args.preset, model.identity) if args.preset else None
        temperature = float(block["temperature"]) if block else 1.0
        threshold = block.get("abstain_below") if block else None
        if block:
            print(f"using the temperature {temperature:.4g} saved with {args.preset}")
        if args.calibrate is not None:
            result, held_threshold = run_generator(iter_calibrate_prompts(
                model, prompts, args.calibrate, seed=args.calibration_seed, coverage=args.coverage,
                batch_size=args.batch_size, cache=cache), printer)
            temperature, threshold = result.temperature, held_threshold
            saved = write_calibrated_prompts(args.save_prompts or args.out.with_suffix(".prompts.yaml"), prompts,
                                             model.identity, result, threshold, args.coverage)
            print(f"temperature {result.temperature:.4g} fitted on {result.n_fit} tiles; ECE on {result.n_held_out} "
                  f"held-out tiles: {result.ece_before:.4f} before, {result.ece_after:.4f} after")
            print(f"saved the prompts with the temperature to {saved}")
        if args.abstain_below is not None:
            threshold = args.abstain_below
        coverage = args.coverage if args.coverage is not None and args.calibrate is None else None
        return cls(temperature, None if coverage is not None else threshold, coverage, gate)

    def columns(self, probabilities: np.ndarray, classes: list[str], images: list[np.ndarray],
                printer: CliProgress) -> dict[str, object]:
        """`decision` (the class, or "uncertain") and `abstain_reason`; empty when no abstention was asked for."""
        from napari_clipmed.calibration import (
            abstain,
            confidence,
            threshold_for_coverage,
        )
        from napari_clipmed.ops.qc import QcRequest, iter_run
        from napari_clipmed.progress import run_generator

        if self.threshold is None and self.coverage is None and self.gate is None:
            return {}
        top = confidence(probabilities).probability
        threshold = self.threshold if self.threshold is not None else 0.0
        if self.coverage is not None:
            threshold = threshold_for_coverage(top, self.coverage)
        out: dict[str, object] = {}
        passed = None
        if self.gate is not None:
            verdict = run_generator(iter_run(QcRequest(tuple(images), self.gate)), printer).verdict
            passed = verdict.passed
            for note in verdict.measures.notes:
                print(f"note: {note}")
            out = {"quality_passed": passed, "quality_reasons": list(verdict.reasons)}
        predicted = [classes[i] for i in np.argmax(probabilities, axis=1)]
        decision, why = abstain(predicted, top, threshold, passed)
        uncertain = sum(d == "uncertain" for d in decision)
        print(f"abstained on {uncertain} of {len(decision)} tiles (top probability < {threshold:.4g}"
              + (", or failed the quality gate)" if passed is not None else ")"))
        return {"decision": decision, "abstain_reason": why, **out}
