"""Calibrated, abstaining zero-shot: confidence per tile, temperature scaling, abstention.

- `confidence`: per tile, the top probability, the margin between the top two classes and the
  entropy of the class distribution (nats).
- `fit_temperature`: the temperature T that minimises the negative log-likelihood of the true
  classes under softmax(logits / T) on a labelled set (Guo et al., 2017). T > 1 softens an
  over-confident model, T < 1 sharpens an under-confident one; the ranking of classes, hence
  the accuracy, is unchanged.
- `calibrate_temperature`: splits a labelled set (stratified, seeded) into a part to fit T and a
  held-out part on which the expected calibration error is reported before and after.
- `abstain`: "uncertain" where the top probability is under a threshold or the tile failed the
  quality gate; `threshold_for_coverage` picks the threshold that keeps a target share of tiles.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.metrics import expected_calibration_error
from napari_clipmed.progress import ProgressGenerator

if TYPE_CHECKING:
    from napari_clipmed.models.cache import EmbeddingCache
    from napari_clipmed.models.model import ClipModel
    from napari_clipmed.zeroshot import PromptSet

UNCERTAIN = "uncertain"
MIN_PER_CLASS = 10  # fewer labelled tiles per class give a temperature no better than a guess
T_RANGE = (0.01, 100.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature, in float64."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Confidence:
    """Per tile: top probability, top-1 minus top-2 probability, entropy (nats)."""

    probability: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray


def confidence(probabilities: np.ndarray) -> Confidence:
    """Top probability, margin and entropy of each row of an (N, C) probability matrix."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise InputError(f"need an (N, C) probability matrix with at least two classes; got shape {p.shape}")
    top2 = -np.partition(-p, 1, axis=1)[:, :2]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return Confidence(top2[:, 0], top2[:, 0] - top2[:, 1], entropy)


def confidence_columns(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """The table columns every zero-shot result carries: probability, margin, entropy."""
    c = confidence(probabilities)
    return {"probability": c.probability, "margin": c.margin, "entropy": c.entropy}


def _nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """The temperature minimising the mean negative log-likelihood (bounded search on log T)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if z.ndim != 2 or y.shape != (z.shape[0],):
        raise InputError(f"need logits (N, C) and labels (N,); got {z.shape} and {y.shape}")
    lo, hi = (math.log(t) for t in T_RANGE)
    best = minimize_scalar(lambda s: _nll(z, y, math.exp(s)), bounds=(lo, hi), method="bounded",
                           options={"xatol": 1e-4})
    return float(math.exp(best.x))


def check_labelled(labels: Sequence[int] | np.ndarray, class_names: Sequence[str], min_per_class: int = MIN_PER_CLASS) -> None:
    """One clear error for a labelled set that cannot calibrate: one class only, or too few tiles per class."""
    y = np.asarray(labels)
    counts = {name: int(np.sum(y == i)) for i, name in enumerate(class_names)}
    present = [n for n, c in counts.items() if c > 0]
    if len(present) < 2:
        raise InputError(f"calibration needs labelled tiles of at least two classes; got only {present or 'none'}")
    few = {n: c for n, c in counts.items() if 0 < c < min_per_class}
    if few:
        listed = ", ".join(f"{n} ({c})" for n, c in few.items())
        raise InputError(f"calibration needs at least {min_per_class} labelled tiles per class "
                         f"(half fit the temperature, half measure it); too few: {listed}")


def stratified_halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a fitting half and a held-out half, each class split evenly (seeded)."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = len(idx) // 2
        fit.append(idx[:cut])
        held.append(idx[cut:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


@dataclass(frozen=True)
class TemperatureCalibration:
    """A fitted temperature and the held-out expected calibration error before and after it."""

    temperature: float
    ece_before: float
    ece_after: float
    n_fit: int
    n_held_out: int
    accuracy_held_out: float
    n_bins: int = 15

    def to_dict(self) -> dict[str, float | int]:
        return {"temperature": self.temperature, "ece_before": self.ece_before, "ece_after": self.ece_after,
                "n_fit": self.n_fit, "n_held_out": self.n_held_out, "accuracy_held_out": self.accuracy_held_out,
                "ece_bins": self.n_bins}


def calibrate_temperature(
    logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, seed: int = 0,
    min_per_class: int = MIN_PER_CLASS, n_bins: int = 15,
) -> TemperatureCalibration:
    """Fit T on one stratified half of a labelled set; report ECE before/after on the other half.

    `labels` index the columns of `logits` (the prompt classes, `class_names`).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    check_labelled(y, class_names, min_per_class)
    fit, held = stratified_halves(y, seed)
    t = fit_temperature(z[fit], y[fit])
    before = expected_calibration_error(y[held], softmax(z[held]), n_bins)
    after = expected_calibration_error(y[held], softmax(z[held], t), n_bins)
    accuracy = float(np.mean(np.argmax(z[held], axis=1) == y[held]))
    return TemperatureCalibration(t, before, after, len(fit), len(held), accuracy, n_bins)


def threshold_for_coverage(top_probability: np.ndarray, coverage: float) -> float:
    """The smallest top-probability threshold that keeps at most `coverage` of the tiles (ties kept together)."""
    p = np.sort(np.asarray(top_probability, dtype=np.float64))[::-1]
    if not 0.0 < coverage <= 1.0:
        raise InputError(f"coverage is the share of tiles to keep, in (0, 1]; got {coverage!r}")
    if p.size == 0:
        raise InputError("no tiles to choose a threshold on")
    keep = max(1, math.floor(coverage * p.size + 1e-9))
    if keep >= p.size:
        return float(p[-1])
    # keep tiles with p >= threshold: halfway between the first tile left out and the next higher value
    higher = p[:keep][p[:keep] > p[keep]]
    if higher.size == 0:  # all tied with the first left out: none can be kept without keeping more
        return float(np.nextafter(p[keep], np.inf))
    return float((higher[-1] + p[keep]) / 2.0)


def abstain(
    predicted: Sequence[str], top_probability: np.ndarray, threshold: float = 0.0,
    gate_passed: np.ndarray | None = None,
) -> tuple[list[str], list[str]]:
    """Labels with "uncertain" where the tile is not trusted, and why ("" where it is)."""
    p = np.asarray(top_probability, dtype=np.float64)
    labels, why = [], []
    for i, label in enumerate(predicted):
        reasons = []
        if gate_passed is not None and not bool(gate_passed[i]):
            reasons.append("failed the quality gate")
        if p[i] < threshold:
            reasons.append(f"top probability {p[i]:.4f} < {threshold:.4f}")
        labels.append(UNCERTAIN if reasons else str(label))
        why.append("; ".join(reasons))
    return labels, why


def selective_accuracy(correct: np.ndarray, score: np.ndarray, coverage: float) -> float:
    """Accuracy on the `coverage` share of tiles (at least one) with the highest score (stable order on ties)."""
    ok = np.asarray(correct, dtype=np.float64)
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    n = max(1, round(coverage * len(ok)))
    return float(ok[order[:n]].mean())


def selective_curve(correct: np.ndarray, score: np.ndarray, points: int = 20) -> list[tuple[float, float]]:
    """(coverage, accuracy) keeping the highest-scoring share of tiles, at `points` coverages up to 1."""
    n = len(correct)
    return [(max(1, round(k / points * n)) / n, selective_accuracy(correct, score, k / points))
            for k in range(1, points + 1)]


# --------------------------------------------------------------------------- prompts files with a temperature


def write_calibrated_prompts(path: str | os.PathLike[str], prompts: PromptSet, model_identity: str,
                             result: TemperatureCalibration, threshold: float | None = None,
                             coverage: float | None = None) -> Path:
    """The prompts as a YAML prompt file (readable by `PromptSet.parse`) with a `calibration:` block."""
    import yaml

    from napari_clipmed.io.atomic import atomic_write

    block: dict[str, object] = {"model": model_identity, **result.to_dict()}
    if threshold is not None:
        block |= {"abstain_below": float(threshold), "coverage": coverage}
    doc = {"name": prompts.name, "description": prompts.description,
           "classes": {k: list(v) for k, v in prompts.classes.items()}, "templates": list(prompts.templates),
           "calibration": block}
    return atomic_write(path, yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def read_prompt_calibration(source: object, model_identity: str | None = None) -> dict[str, Any] | None:
    """The `calibration:` block of a prompt file (None for anything else); refuses another model's block."""
    import yaml

    text = os.fspath(source) if isinstance(source, (str, os.PathLike)) else ""
    path = Path(text)
    if not text or path.suffix.lower() not in (".yaml", ".yml", ".json") or not path.is_file():
        return None
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    block = data.get("calibration") if isinstance(data, dict) else None
    if not isinstance(block, dict):
        return None
    t = block.get("temperature")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not T_RANGE[0] <= t <= T_RANGE[1]:
        raise InputError(f"{path}: calibration temperature must be a number in {T_RANGE}; got {t!r}")
    if model_identity is not None and block.get("model") not in (None, model_identity):
        raise InputError(f"{path} was calibrated for model {block.get('model')}, not {model_identity}: "
                         "recalibrate with `clipmed zeroshot --calibrate LABELLED_DIR`")
    return block


def iter_calibrate_prompts(
    model: ClipModel, prompts: PromptSet, labelled: object, *, seed: int = 0, coverage: float | None = None,
    batch_size: int = 64, cache: EmbeddingCache | None = None, min_per_class: int = MIN_PER_CLASS,
) -> ProgressGenerator[tuple[TemperatureCalibration, float | None]]:
    """Fit the temperature of `prompts` with `model` on a labelled tile folder or manifest.

    Returns the calibration and, for a target `coverage`, the top-probability threshold that keeps
    that share of the held-out half (after temperature scaling).
    """
    from napari_clipmed.bench.tasks import iter_load_tiles, prompt_columns
    from napari_clipmed.datasets import load_images
    from napari_clipmed.zeroshot import ZeroShotClassifier

    tileset, is_labelled = load_images(labelled)  # type: ignore[arg-type]
    if not is_labelled:
        raise InputError(f"{labelled} carries no labels: calibrate on an ImageFolder (one folder per class) or a "
                         "CSV manifest with a label column")
    columns = prompt_columns(tileset.class_names, prompts)
    check_labelled(tileset.labels, tileset.class_names, min_per_class)
    tiles = yield from iter_load_tiles(tileset)
    labels = columns[tiles.tileset.labels]
    check_labelled(labels, prompts.class_names, min_per_class)
    classifier = ZeroShotClassifier.from_prompts(model, prompts)
    if getattr(classifier, "scoring", "softmax") != "softmax":
        raise InputError(f"temperature scaling is fitted on a softmax over the classes; {model.identity} scores each "
                         "class with its own sigmoid, so it cannot be calibrated this way")
    emb = yield from model.iter_encode_images(tiles.images, batch_size=batch_size, cache=cache)
    logits = classifier.logits(emb)
    result = calibrate_temperature(logits, labels, prompts.class_names, seed=seed, min_per_class=min_per_class)
    threshold = None
    if coverage is not None:
        _, held = stratified_halves(labels, seed)
        threshold = threshold_for_coverage(confidence(softmax(logits[held], result.temperature)).probability, coverage)
    return result, threshold
