"""The quality gate: bounds per measure, pass or fail per tile with reasons, saved as versioned JSON.

A tile fails when any measure lies outside its bounds; each violated bound is one reason
("focus 0.91 < 1.20"). The bounds of focus and resolution are calibrated on the user's clean
tiles with our own corruption engine (`gate_calibration.py`); the others (ink, exposure, saturation,
tissue) are fixed fractions with a plain meaning, editable in the JSON file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.pathology.quality import MEASURES, QualityMeasures

if TYPE_CHECKING:
    import pandas as pd

GATE_FORMAT = "napari-clipmed-quality-gate"
GATE_VERSION = 1
DEFAULT_GATE = "quality_gate.json"  # in napari_clipmed/data/


@dataclass(frozen=True)
class Bound:
    """Allowed range of one measure; None = unbounded on that side."""

    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        for side in ("min", "max"):
            v = getattr(self, side)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise InputError(f"a gate bound's {side} must be a finite number or null; got {v!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise InputError(f"a gate bound has min {self.min} above max {self.max}")

    def to_dict(self) -> dict[str, float | None]:
        return {"min": self.min, "max": self.max}


# The fixed bounds: fractions of the tile (0..1) and mean saturation.
FIXED_BOUNDS: dict[str, Bound] = {
    "ink": Bound(max=0.01),  # 1 % of the tile in marker ink (ink-free H&E: below 0.7 %, see docs/quality.md)
    "over_exposed": Bound(max=0.25),
    "under_exposed": Bound(max=0.25),
    "saturation": Bound(min=0.08),  # washed out or grey (clean H&E: 0.23 and up)
    "tissue": Bound(min=0.25),  # mostly glass: a label would describe nothing
}


@dataclass(frozen=True)
class GateResult:
    """Per tile: passed or not, and why not (one string per tile, "" when it passed)."""

    measures: QualityMeasures
    passed: np.ndarray  # (N,) bool
    reasons: tuple[str, ...]
    failed_measures: tuple[tuple[str, ...], ...]  # per tile, the measures out of bounds

    def __len__(self) -> int:
        return len(self.passed)

    @property
    def pass_rate(self) -> float:
        return float(np.mean(self.passed)) if len(self.passed) else 1.0

    def failed_by(self, name: str) -> np.ndarray:
        """(N,) bool: tiles failing `name`'s bounds."""
        return np.array([name in f for f in self.failed_measures], dtype=bool)

    def to_frame(self) -> pd.DataFrame:
        """The measures table plus `passed` and `reasons`."""
        frame = self.measures.to_frame()
        frame["passed"] = self.passed
        frame["reasons"] = list(self.reasons)
        return frame


@dataclass(frozen=True)
class Gate:
    """Bounds for every measure in `MEASURES`, and how they were chosen (`info`)."""

    bounds: Mapping[str, Bound]
    info: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [m for m in MEASURES if m not in self.bounds]
        if missing:
            raise InputError(f"a quality gate needs bounds for every measure; missing: {', '.join(missing)}")
        unknown = [m for m in self.bounds if m not in MEASURES]
        if unknown:
            raise InputError(f"unknown quality measure(s) {', '.join(unknown)}; known: {', '.join(MEASURES)}")

    def with_bounds(self, bounds: Mapping[str, Bound], info: Mapping[str, object] | None = None) -> Gate:
        """A copy with some bounds replaced (and new info, when given)."""
        return Gate({**self.bounds, **bounds}, dict(self.info if info is None else info))

    def check(self, measures: QualityMeasures) -> GateResult:
        """Pass/fail of every tile, with one reason per violated bound."""
        n = len(measures)
        failed: list[list[str]] = [[] for _ in range(n)]
        reasons: list[list[str]] = [[] for _ in range(n)]
        for name in MEASURES:
            bound, values = self.bounds[name], np.asarray(measures[name])
            for side, bad in (("min", values < bound.min if bound.min is not None else None),
                              ("max", values > bound.max if bound.max is not None else None)):
                if bad is None:
                    continue
                limit, sign = (bound.min, "<") if side == "min" else (bound.max, ">")
                for i in np.flatnonzero(bad):
                    failed[i].append(name)
                    reasons[i].append(f"{name} {values[i]:.4g} {sign} {limit:.4g}")
        passed = np.array([not f for f in failed], dtype=bool)
        return GateResult(measures, passed, tuple("; ".join(r) for r in reasons), tuple(tuple(f) for f in failed))

    # ----------------------------------------------------------------------- files
    def to_dict(self) -> dict[str, object]:
        return {
            "format": GATE_FORMAT,
            "version": GATE_VERSION,
            "measures": {name: self.bounds[name].to_dict() for name in MEASURES},
            "calibration": dict(self.info),
        }

    def save(self, path: str | Path) -> Path:
        """Write the gate as JSON, atomically."""
        from napari_clipmed.io.atomic import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: object, source: str = "the gate") -> Gate:
        """A gate from its JSON form; any other format, version or missing measure is one clear error."""
        if not isinstance(data, Mapping) or data.get("format") != GATE_FORMAT:
            raise InputError(f"{source} is not a napari-clipmed quality gate (no \"format\": \"{GATE_FORMAT}\")")
        version = data.get("version")
        if version != GATE_VERSION:
            raise InputError(f"{source} is a quality gate of version {version!r}; this napari-clipmed reads version "
                             f"{GATE_VERSION}. Recalibrate it with `clipmed qc-calibrate TILES --out gate.json`")
        table = data.get("measures")
        if not isinstance(table, Mapping):
            raise InputError(f"{source} has no \"measures\" table")
        missing = [m for m in MEASURES if m not in table]
        if missing:
            raise InputError(f"{source} lacks bounds for: {', '.join(missing)} (a gate bounds every measure: "
                             f"{', '.join(MEASURES)})")
        bounds = {}
        for name, entry in table.items():
            if not isinstance(entry, Mapping) or set(entry) - {"min", "max"}:
                raise InputError(f"{source}: measure {name!r} must be {{\"min\": number|null, \"max\": number|null}}")
            try:
                bounds[str(name)] = Bound(entry.get("min"), entry.get("max"))
            except InputError as err:
                raise InputError(f"{source}: measure {name!r}: {err}") from None
        info = data.get("calibration") or {}
        try:
            return cls(bounds, dict(info) if isinstance(info, Mapping) else {})
        except InputError as err:
            raise InputError(f"{source}: {err}") from None

    @classmethod
    def load(cls, path: str | Path) -> Gate:
        """Read a gate JSON file."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"no such gate file: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise InputError(f"cannot read the gate file {path}: {err}") from None
        return cls.from_dict(data, f"gate file {path}")

    @classmethod
    def default(cls) -> Gate:
        """The shipped gate, calibrated on the real H&E samples (see its `info` and docs/quality.md)."""
        path = Path(str(resources.files("napari_clipmed") / "data" / DEFAULT_GATE))
        return cls.load(path)


def load_gate(source: str | Path | Gate | None) -> Gate:
    """A gate from a file path, an existing Gate, or None for the shipped default."""
    if source is None or source == "default":
        return Gate.default()
    if isinstance(source, Gate):
        return source
    return Gate.load(source)
