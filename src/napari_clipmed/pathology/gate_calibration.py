"""Calibrate the gate's focus and resolution bounds on clean tiles with our own corruption engine.

The clean tiles are corrupted with blur and resolution at severities 1..4 (`corrupt`, seeded).
Each corruption is assigned the directed bound (focus or resolution, min or max) that separates
its severity >= 2 tiles from the clean ones best (AUROC). Thresholds are then searched jointly:
the bounds may flag at most `max_false_flag` of the clean tiles; among those settings, the one
that reaches the stated `sensitivity` on severity >= 2 for every corruption with the fewest clean
tiles flagged wins, or, when none reaches it, the one with the highest worst-case sensitivity.
Each threshold sits halfway (geometrically) between the clean value it must keep and the nearest
value on the other side, for a margin on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_clipmed import __version__
from napari_clipmed.errors import InputError
from napari_clipmed.metrics import roc_auc
from napari_clipmed.pathology.gate import FIXED_BOUNDS, Bound, Gate
from napari_clipmed.pathology.quality import QualityMeasures, iter_measure
from napari_clipmed.progress import Progress, ProgressGenerator, forward, run_generator

CALIBRATED: tuple[str, ...] = ("focus", "resolution")  # measures whose bounds are calibrated
DETECTED: tuple[str, ...] = ("blur", "resolution")  # corruptions the calibrated bounds must catch
SEVERITIES = (1, 2, 3, 4)
MIN_SEVERITY = 2  # sensitivity is stated for severity >= this
MIN_TILES = 20  # fewer clean tiles cannot support a 5 % false-flag rate


@dataclass(frozen=True)
class GateCalibration:
    """The calibrated gate and what it achieves on the calibration tiles."""

    gate: Gate
    detection: dict[str, dict[int, float]]  # corruption -> severity -> share of tiles flagged
    false_flag: float  # share of clean tiles flagged by the calibrated bounds
    auroc: dict[str, float]  # corruption -> AUROC (severity >= 2 vs clean) of its assigned bound
    clean: QualityMeasures

    @property
    def sensitivity(self) -> dict[str, float]:
        """Per corruption, the share of its severity >= `MIN_SEVERITY` tiles flagged."""
        return {c: float(np.mean([v for s, v in d.items() if s >= MIN_SEVERITY])) for c, d in self.detection.items()}

    def to_frame(self):  # -> pandas.DataFrame
        """One row per corruption and severity (0 = clean): share flagged."""
        import pandas as pd

        rows = [{"corruption": "clean", "severity": 0, "flagged": self.false_flag}]
        rows += [{"corruption": c, "severity": s, "flagged": v} for c, d in self.detection.items() for s, v in d.items()]
        return pd.DataFrame(rows)


def _directed(values: np.ndarray, side: str) -> np.ndarray:
    """Scores where larger means worse: -value for a lower bound, value for an upper one."""
    return -values if side == "min" else values


def _candidates(clean: np.ndarray, positives: np.ndarray, side: str, budget: int) -> list[tuple[float, np.ndarray]]:
    """Thresholds flagging 0..budget clean tiles, each with the (N,) clean-flag mask it gives.

    Works on directed scores (flag when score > t); returns thresholds in value space.
    """
    c, p = _directed(clean, side), _directed(positives, side)
    order = np.sort(c)[::-1]  # worst clean first
    out = []
    for j in range(min(budget, len(order) - 1) + 1):
        keep = order[j]  # the worst clean score that must stay unflagged
        above = order[j - 1] if j else np.inf  # flagged clean scores are >= this
        beyond = p[(p > keep) & (p < above)]
        other = min(above, beyond.min()) if beyond.size else above
        if not np.isfinite(other):
            t = keep
        else:
            t = _midpoint(keep, other, side)
        out.append((_undirect(t, side), c > t))
    return out


def _midpoint(a: float, b: float, side: str) -> float:
    """Between two directed scores: geometric mean of the values when they are positive, else arithmetic."""
    va, vb = _undirect(a, side), _undirect(b, side)
    if va > 0 and vb > 0:
        return float(_directed(np.sqrt(va * vb), side))
    return (a + b) / 2.0


def _undirect(t: float, side: str) -> float:
    return float(-t if side == "min" else t)


def _flags(values: np.ndarray, side: str, threshold: float) -> np.ndarray:
    return values < threshold if side == "min" else values > threshold


def iter_calibrate_gate(
    images: object,
    *,
    sensitivity: float = 0.95,
    max_false_flag: float = 0.05,
    seed: int = 0,
    base: Gate | None = None,
    source: str = "",
    batch_size: int = 64,
    device: str | None = None,
) -> ProgressGenerator[GateCalibration]:
    """Calibrate focus/resolution bounds on clean `images` (see the module docstring)."""
    from napari_clipmed.bench.robustness import corrupt_tiles
    from napari_clipmed.models.images import as_image_list

    if not 0.0 < sensitivity <= 1.0:
        raise InputError(f"sensitivity is a fraction in (0, 1]; got {sensitivity!r}")
    if not 0.0 <= max_false_flag < 1.0:
        raise InputError(f"the false-flag rate is a fraction in [0, 1); got {max_false_flag!r}")
    tiles = as_image_list(images)  # type: ignore[arg-type]
    if len(tiles) < MIN_TILES:
        raise InputError(f"calibrating a gate needs at least {MIN_TILES} clean tiles; got {len(tiles)}")
    total = 1 + len(DETECTED) * len(SEVERITIES)
    clean: QualityMeasures = yield from forward(iter_measure(tiles, batch_size=batch_size, device=device), 0, total,
                                                "measuring clean tiles")
    if clean.notes:
        raise InputError("calibrate on 8-bit RGB tiles, as scanned: " + "; ".join(clean.notes))
    measured: dict[str, dict[int, QualityMeasures]] = {}
    step = 1
    for c_i, corruption in enumerate(DETECTED):
        for severity in SEVERITIES:
            bad = corrupt_tiles(tiles, corruption, severity, int(np.random.SeedSequence([seed, c_i, severity])
                                                                  .generate_state(1)[0]))
            measured.setdefault(corruption, {})[severity] = yield from forward(
                iter_measure(bad, batch_size=batch_size, device=device), step, total,
                f"measuring {corruption} severity {severity}")
            step += 1
            yield Progress(step, total, f"measured {corruption} severity {severity}")

    # each corruption's best directed bound
    n = len(clean)
    assigned: dict[str, tuple[str, str]] = {}
    auroc: dict[str, float] = {}
    for corruption in DETECTED:
        pos = {m: np.concatenate([measured[corruption][s][m] for s in SEVERITIES if s >= MIN_SEVERITY])
               for m in CALIBRATED}
        y = np.r_[np.zeros(n), np.ones(len(pos[CALIBRATED[0]]))]
        scores = {(m, side): roc_auc(y, _directed(np.r_[clean[m], pos[m]], side))
                  for m in CALIBRATED for side in ("min", "max")}
        best = max(scores, key=lambda k: scores[k])
        assigned[corruption], auroc[corruption] = best, float(scores[best])

    bounds_used = list(dict.fromkeys(assigned.values()))
    budget = int(np.floor(max_false_flag * n + 1e-9))
    options = []
    for m, side in bounds_used:
        positives = np.concatenate([measured[c][s][m] for c in DETECTED for s in SEVERITIES
                                    if s >= MIN_SEVERITY and assigned[c] == (m, side)])
        options.append(_candidates(clean[m], positives, side, budget))

    best_key, best_choice = None, None
    for choice in np.ndindex(*[len(o) for o in options]):
        flagged = np.zeros(n, dtype=bool)
        for o, j in zip(options, choice):
            flagged |= o[j][1]
        if flagged.sum() > budget:
            continue
        sens = []
        for corruption in DETECTED:
            hit = np.zeros(sum(len(measured[corruption][s]) for s in SEVERITIES if s >= MIN_SEVERITY), dtype=bool)
            for (m, side), o, j in zip(bounds_used, options, choice):
                values = np.concatenate([measured[corruption][s][m] for s in SEVERITIES if s >= MIN_SEVERITY])
                hit |= _flags(values, side, o[j][0])
            sens.append(hit.mean())
        worst = min(sens)
        reached = worst >= sensitivity - 1e-12
        key = (reached, -int(flagged.sum()) if reached else worst, worst if reached else -int(flagged.sum()))
        if best_key is None or key > best_key:
            best_key, best_choice = key, choice
    assert best_choice is not None  # flagging no clean tile is always allowed

    new_bounds = {m: Bound() for m in CALIBRATED}
    for (m, side), o, j in zip(bounds_used, options, best_choice):
        b = new_bounds[m]
        new_bounds[m] = Bound(o[j][0], b.max) if side == "min" else Bound(b.min, o[j][0])

    def flagged_by_bounds(q: QualityMeasures) -> np.ndarray:
        out = np.zeros(len(q), dtype=bool)
        for m in CALIBRATED:
            b = new_bounds[m]
            out |= (q[m] < b.min) if b.min is not None else False
            out |= (q[m] > b.max) if b.max is not None else False
        return out

    detection = {c: {s: float(flagged_by_bounds(measured[c][s]).mean()) for s in SEVERITIES} for c in DETECTED}
    false_flag = float(flagged_by_bounds(clean).mean())
    sizes = sorted({f"{t.shape[0]}x{t.shape[1]}" for t in tiles})
    achieved = {c: float(np.mean([detection[c][s] for s in SEVERITIES if s >= MIN_SEVERITY])) for c in DETECTED}
    info = {
        "calibrated_on": source or f"{n} tiles",
        "tiles": n,
        "tile_sizes": sizes,
        "sensitivity_target": sensitivity,
        "max_false_flag": max_false_flag,
        "min_severity": MIN_SEVERITY,
        "assigned_bounds": {c: f"{m} {side}" for c, (m, side) in assigned.items()},
        "sensitivity_achieved": achieved,
        "false_flag_clean": false_flag,
        "detection": {c: {str(s): v for s, v in d.items()} for c, d in detection.items()},
        "auroc": auroc,
        "seed": seed,
        "napari_clipmed": __version__,
        "fixed_bounds": "ink, exposure, saturation and tissue bounds are fixed (docs/quality.md)",
    }
    gate = (base or Gate({**FIXED_BOUNDS, **{m: Bound() for m in CALIBRATED}})).with_bounds(new_bounds, info)
    yield Progress(total, total, "calibrated")
    return GateCalibration(gate, detection, false_flag, auroc, clean)


def calibrate_gate(images: Sequence[np.ndarray] | np.ndarray, **kwargs: object) -> GateCalibration:
    """Plain-call form of `iter_calibrate_gate`."""
    return run_generator(iter_calibrate_gate(images, **kwargs))  # type: ignore[arg-type]
