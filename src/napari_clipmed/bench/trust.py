"""Robustness metrics that ask whether a label can be trusted: the quality gate and selective accuracy.

Per model x corruption x severity (rows of the tidy results table):
- ``gate_flagged``: share of the tiles the quality gate fails (for a corruption: its detection rate);
- ``zeroshot_accuracy_gate_passed``: zero-shot accuracy on the tiles the gate passes (NaN if none);
  compare with ``zeroshot_accuracy`` on all tiles;
- ``selective_accuracy@cov<P>``: accuracy on the P % of tiles with the highest top probability;
  the points together are the accuracy-vs-coverage curve of abstaining by confidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.calibration import confidence, selective_accuracy

if TYPE_CHECKING:
    from napari_clipmed.pathology.gate import Gate

COVERAGES: tuple[int, ...] = (20, 40, 60, 80, 100)  # percent of tiles kept


def trust_metric_names() -> list[str]:
    return ["gate_flagged", "zeroshot_accuracy_gate_passed", *[f"selective_accuracy@cov{c}" for c in COVERAGES]]


def trust_metrics(y_true: np.ndarray, probabilities: np.ndarray, gate_passed: np.ndarray) -> dict[str, float]:
    """The metrics above for one condition; `y_true` are prompt-class columns."""
    correct = np.argmax(probabilities, axis=1) == np.asarray(y_true)
    passed = np.asarray(gate_passed, dtype=bool)
    values = {"gate_flagged": float(1.0 - passed.mean()),
              "zeroshot_accuracy_gate_passed": float(correct[passed].mean()) if passed.any() else float("nan")}
    top = confidence(probabilities).probability
    for c in COVERAGES:
        values[f"selective_accuracy@cov{c}"] = selective_accuracy(correct, top, c / 100)
    return values


def gate_verdict(images: list[np.ndarray], gate: Gate | str | Path | None) -> np.ndarray:
    """(N,) bool: tiles passing `gate` (a Gate, a JSON path, or None for the shipped gate)."""
    from napari_clipmed.ops.qc import gate_images

    return gate_images(images, gate).passed
