"""Classification and retrieval metrics in plain numpy (no scikit-learn needed at runtime).

Classification metrics follow scikit-learn's definitions exactly (the tests compare them):
accuracy, balanced accuracy (mean recall over the classes present in `y_true`), F1 (macro or
support-weighted over the union of true and predicted labels), average precision (step-wise
area under the precision-recall curve, tied scores form one threshold) and AUROC (binary, or
one-vs-rest macro for a score matrix; tied scores count one half). `bootstrap_ci` gives a
percentile confidence interval for any of them.

Retrieval metrics take, per query, its label and the labels of its ranked neighbours
(`neighbour_labels`, shape (Q, K), best first, as returned by `retrieval.EmbeddingIndex.search`).
A neighbour is *relevant* when its label equals the query's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal
import warnings

import numpy as np

from napari_clipmed.errors import ClipmedWarning, InputError

ArrayLike = np.ndarray | Sequence


# --------------------------------------------------------------------------- helpers
def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if t.ndim != 1 or p.shape != t.shape:
        raise InputError(f"labels and predictions must be 1-D of equal length, got shapes {t.shape} and {p.shape}")
    if t.size == 0:
        raise InputError("cannot compute a metric on zero samples")
    return t, p


def _confusion(t: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Classes (sorted union of true and predicted labels) and the confusion matrix [true, pred]."""
    classes, inv = np.unique(np.concatenate([t, p]), return_inverse=True)
    ti, pi = inv[: t.size], inv[t.size :]
    cm = np.zeros((classes.size, classes.size), dtype=np.int64)
    np.add.at(cm, (ti, pi), 1)
    return classes, cm


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties get the mean of the ranks they span (like scipy's rankdata)."""
    _, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    starts = ends - counts + 1
    return ((starts + ends) / 2.0)[inv]


def _binary_target(y_true: ArrayLike, scores: ArrayLike, pos_label: object = 1) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if t.ndim != 1 or s.shape != t.shape:
        raise InputError(f"binary labels and scores must be 1-D of equal length, got {t.shape} and {s.shape}")
    if not np.all(np.isfinite(s)):
        raise InputError("scores contain NaN or infinite values")
    if t.dtype == bool:
        return t, s
    return t == pos_label, s


# --------------------------------------------------------------------------- classification
def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of samples whose predicted label equals the true label."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(t == p))


def balanced_accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean per-class recall over the classes present in `y_true` (robust to class imbalance)."""
    t, p = _pair(y_true, y_pred)
    classes, cm = _confusion(t, p)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def f1(y_true: ArrayLike, y_pred: ArrayLike, average: Literal["macro", "weighted"] = "macro") -> float:
    """F1 per class (over true and predicted labels), averaged plainly (`macro`) or by true support (`weighted`)."""
    t, p = _pair(y_true, y_pred)
    _, cm = _confusion(t, p)
    tp = np.diag(cm).astype(np.float64)
    denom = 2 * tp + (cm.sum(axis=0) - tp) + (cm.sum(axis=1) - tp)
    per_class = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    if average == "macro":
        return float(per_class.mean())
    if average == "weighted":
        support = cm.sum(axis=1)
        return float(np.sum(per_class * support) / support.sum())
    raise InputError(f"average must be 'macro' or 'weighted', got {average!r}")


def _binary_ap(pos: np.ndarray, s: np.ndarray) -> float:
    if not pos.any():
        raise InputError("average precision is undefined without any positive sample")
    order = np.argsort(-s, kind="stable")
    s_sorted, pos_sorted = s[order], pos[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(pos_sorted)[last_of_tie]
    precision = tps / (last_of_tie + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _binary_auc(pos: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise InputError("AUROC is undefined when only one class is present in the labels")
    ranks = _average_ranks(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _one_vs_rest(
    fn: Callable[[np.ndarray, np.ndarray], float], y_true: ArrayLike, scores: ArrayLike, labels: Sequence | None
) -> float:
    t = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    if t.ndim != 1 or s.ndim != 2 or s.shape[0] != t.size:
        raise InputError(f"need labels (N,) and a score matrix (N, C); got {t.shape} and {s.shape}")
    cols = np.unique(t) if labels is None else np.asarray(labels)
    if cols.size != s.shape[1]:
        raise InputError(f"the score matrix has {s.shape[1]} columns but there are {cols.size} classes; pass `labels`")
    present = [c for c in range(cols.size) if np.any(t == cols[c])]
    if len(present) < cols.size:
        missing = [str(cols[c]) for c in range(cols.size) if c not in present]
        warnings.warn(f"classes without samples left out of the average: {', '.join(missing)}", ClipmedWarning, stacklevel=3)
    return float(np.mean([fn(t == cols[c], s[:, c]) for c in present]))


def average_precision(y_true: ArrayLike, scores: ArrayLike, pos_label: object = 1, labels: Sequence | None = None) -> float:
    """Area under the precision-recall curve as sklearn's `average_precision_score`.

    Binary: `y_true` (N,) with `scores` (N,). Multiclass: `scores` (N, C), one column per class in
    `labels` (default: the sorted unique `y_true`); the result is the one-vs-rest macro average.
    """
    if np.ndim(scores) == 2:
        return _one_vs_rest(_binary_ap, y_true, scores, labels)
    pos, s = _binary_target(y_true, scores, pos_label)
    return _binary_ap(pos, s)


def roc_auc(y_true: ArrayLike, scores: ArrayLike, pos_label: object = 1, labels: Sequence | None = None) -> float:
    """Area under the ROC curve (Mann-Whitney; tied scores count 1/2), as sklearn's `roc_auc_score`.

    Binary: `scores` (N,). Multiclass: `scores` (N, C) with columns in `labels` order (default:
    sorted unique `y_true`); the result is the one-vs-rest macro average (`multi_class='ovr'`).
    """
    if np.ndim(scores) == 2:
        return _one_vs_rest(_binary_auc, y_true, scores, labels)
    pos, s = _binary_target(y_true, scores, pos_label)
    return _binary_auc(pos, s)


@dataclass(frozen=True)
class ConfidenceInterval:
    """A metric's value on all samples and its percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    level: float
    n_resamples: int  # resamples on which the metric was defined


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float],
    y: ArrayLike,
    s: ArrayLike,
    n: int = 1000,
    seed: int | None = 0,
    level: float = 0.95,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of `metric(y, s)`, resampling samples (rows) with replacement.

    Resamples where the metric is undefined (e.g. one class only for AUROC) are skipped and
    the count of the used ones is reported.
    """
    yt, sc = np.asarray(y), np.asarray(s)
    if yt.shape[0] != sc.shape[0]:
        raise InputError(f"labels and scores differ in length: {yt.shape[0]} vs {sc.shape[0]}")
    if not 0 < level < 1 or n < 1:
        raise InputError("need 0 < level < 1 and n >= 1 resamples")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = rng.integers(0, yt.shape[0], yt.shape[0])
        try:
            values.append(metric(yt[idx], sc[idx]))
        except InputError:
            continue
    if not values:
        raise InputError("the metric was undefined on every bootstrap resample")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return ConfidenceInterval(float(metric(yt, sc)), float(low), float(high), level, len(values))


def top_k_accuracy_from_scores(y_true: ArrayLike, scores: ArrayLike, k: int, labels: Sequence | None = None) -> float:
    """Classification top-k accuracy: the true class is among the `k` highest-scoring columns."""
    t = np.asarray(y_true)
    s = np.asarray(scores, dtype=np.float64)
    cols = np.unique(t) if labels is None else np.asarray(labels)
    if s.ndim != 2 or s.shape != (t.size, cols.size):
        raise InputError(f"need scores of shape ({t.size}, {cols.size}), got {s.shape}")
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(cols[top] == t[:, None], axis=1)))


# --------------------------------------------------------------------------- retrieval
def _relevance(query_labels: ArrayLike, neighbour_labels: ArrayLike, k: int) -> np.ndarray:
    q = np.asarray(query_labels)
    nb = np.asarray(neighbour_labels)
    if q.ndim != 1 or nb.ndim != 2 or nb.shape[0] != q.size:
        raise InputError(f"need query labels (Q,) and neighbour labels (Q, K); got {q.shape} and {nb.shape}")
    if q.size == 0:
        raise InputError("no queries")
    if not 1 <= k <= nb.shape[1]:
        raise InputError(f"k={k} but only {nb.shape[1]} neighbours were retrieved per query")
    return nb[:, :k] == q[:, None]


def top_k_accuracy(query_labels: ArrayLike, neighbour_labels: ArrayLike, k: int) -> float:
    """Fraction of queries with at least one same-label item among their top `k` neighbours."""
    return float(np.mean(_relevance(query_labels, neighbour_labels, k).any(axis=1)))


def precision_at_k(query_labels: ArrayLike, neighbour_labels: ArrayLike, k: int) -> float:
    """Mean over queries of the fraction of the top `k` neighbours that share the query's label."""
    return float(np.mean(_relevance(query_labels, neighbour_labels, k).mean(axis=1)))


def majority_vote_predict(neighbour_labels: ArrayLike, k: int) -> np.ndarray:
    """Most frequent label among each row's top `k` neighbours.

    Ties are broken deterministically by rank: among the tied labels, the one whose best-ranked
    neighbour comes first (the most similar item) wins.
    """
    nb = np.asarray(neighbour_labels)
    if nb.ndim != 2 or not 1 <= k <= nb.shape[1]:
        raise InputError(f"k={k} but neighbour labels have shape {nb.shape}")
    top = nb[:, :k]
    _, codes = np.unique(top, return_inverse=True)
    codes = codes.reshape(top.shape)
    # votes[i, j]: how many of row i's top k share item j's label; the first maximum is the best-ranked one
    votes = (codes[:, :, None] == codes[:, None, :]).sum(axis=2)
    winner = np.argmax(votes, axis=1)
    return top[np.arange(top.shape[0]), winner]


def majority_vote_accuracy_at_k(query_labels: ArrayLike, neighbour_labels: ArrayLike, k: int) -> float:
    """Accuracy of predicting each query's label by majority vote of its top `k` neighbours.

    Ties between labels are broken by the rank of their best neighbour (see `majority_vote_predict`).
    """
    q = np.asarray(query_labels)
    _relevance(q, neighbour_labels, k)  # validates shapes
    return float(np.mean(majority_vote_predict(neighbour_labels, k) == q))


def map_at_k(
    query_labels: ArrayLike, neighbour_labels: ArrayLike, k: int, n_relevant: ArrayLike | None = None
) -> float:
    """Mean average precision at `k`.

    For one query with relevance r_1..r_k over its ranked top k and precision P(i) = (r_1+..+r_i)/i:

        AP@k = sum_i P(i) r_i / N

    By default N is the number of relevant items retrieved within the top k (the convention of
    most image-retrieval benchmarks; a query with no relevant item in its top k scores 0).
    When `n_relevant` (per query: how many gallery items share its label) is given, N is
    min(k, n_relevant) instead, which also penalises relevant items missing from the top k.
    """
    rel = _relevance(query_labels, neighbour_labels, k).astype(np.float64)
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, k + 1)
    num = np.sum(prec * rel, axis=1)
    if n_relevant is None:
        denom = hits[:, -1]
    else:
        nrel = np.asarray(n_relevant, dtype=np.float64)
        if nrel.shape != (rel.shape[0],):
            raise InputError(f"n_relevant must have one entry per query ({rel.shape[0]}), got {nrel.shape}")
        denom = np.minimum(k, nrel)
    ap = np.divide(num, denom, out=np.zeros_like(num), where=denom > 0)
    return float(ap.mean())


def retrieval_metrics(query_labels: ArrayLike, neighbour_labels: ArrayLike, ks: Sequence[int]) -> dict[str, float]:
    """All retrieval metrics for each k: keys ``top@k`` (top-k accuracy), ``majority@k`` (majority-vote
    accuracy), ``precision@k`` and ``map@k``."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"top@{k}"] = top_k_accuracy(query_labels, neighbour_labels, k)
        out[f"majority@{k}"] = majority_vote_accuracy_at_k(query_labels, neighbour_labels, k)
        out[f"precision@{k}"] = precision_at_k(query_labels, neighbour_labels, k)
        out[f"map@{k}"] = map_at_k(query_labels, neighbour_labels, k)
    return out


def roc_curve(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score threshold (high to low), starting at (0, 0)."""
    y = np.asarray(y).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return np.r_[0.0, fps / max(1, (~y).sum())], np.r_[0.0, tps / max(1, y.sum())]


# --------------------------------------------------------------------------- calibration
def expected_calibration_error(y_true: ArrayLike, probabilities: ArrayLike, n_bins: int = 15) -> float:
    """Top-label expected calibration error: sum over equal-width confidence bins of |accuracy - confidence|,
    weighted by the share of samples in the bin (Guo et al., 2017).

    `y_true` holds column indices of `probabilities` (N, C). A confidence of exactly 1 falls in
    the last bin; bins are (lo, hi], as sklearn's `calibration_curve(strategy="uniform")` has them.
    """
    t = np.asarray(y_true)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or t.shape != (p.shape[0],):
        raise InputError(f"need labels (N,) and probabilities (N, C); got {t.shape} and {p.shape}")
    if t.size == 0:
        raise InputError("cannot compute a metric on zero samples")
    if n_bins < 1:
        raise InputError(f"n_bins must be at least 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == t).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        sel = bins == b
        total += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(total)
