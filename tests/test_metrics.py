"""Our numpy metrics against scikit-learn (the independent reference) on random inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from napari_clipmed import metrics as m
from napari_clipmed.errors import InputError

SEEDS = range(8)


def _labels(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    return rng.integers(0, c, n)


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_metrics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(5, 300)), int(rng.integers(2, 7))
    y, p = _labels(rng, n, c), _labels(rng, n, c + 1)  # predictions may hold a class absent from y
    assert m.accuracy(y, p) == pytest.approx(skm.accuracy_score(y, p))
    with warnings.catch_warnings():  # sklearn warns when predictions hold a class absent from y
        warnings.simplefilter("ignore")
        ref = skm.balanced_accuracy_score(y, p)
    assert m.balanced_accuracy(y, p) == pytest.approx(ref)
    assert m.f1(y, p, "macro") == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0))
    assert m.f1(y, p, "weighted") == pytest.approx(skm.f1_score(y, p, average="weighted", zero_division=0))


def test_string_labels_work() -> None:
    y = np.array(["tumour", "stroma", "tumour", "normal"])
    p = np.array(["tumour", "tumour", "tumour", "normal"])
    assert m.accuracy(y, p) == 0.75
    assert m.balanced_accuracy(y, p) == pytest.approx(skm.balanced_accuracy_score(y, p))
    assert m.f1(y, p, "weighted") == pytest.approx(skm.f1_score(y, p, average="weighted"))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("tied", [False, True])
def test_binary_ap_and_auroc_equal_sklearn(seed: int, tied: bool) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 400))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + 0.7 * y
    if tied:  # few distinct values: many tied scores across both classes
        s = np.round(s * 2) / 2
    assert m.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert m.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_multiclass_ovr_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(30, 300)), int(rng.integers(3, 6))
    y = np.r_[np.arange(c), _labels(rng, n - c, c)]
    logits = np.round(rng.normal(size=(n, c)), 1)  # rounded: ties
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert m.roc_auc(y, probs) == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    onehot = (y[:, None] == np.arange(c)).astype(int)
    assert m.average_precision(y, probs) == pytest.approx(skm.average_precision_score(onehot, probs, average="macro"))
    untied = rng.normal(size=(n, c))  # sklearn and we order tied scores differently
    for k in (1, 2):
        ref = skm.top_k_accuracy_score(y, untied, k=k, labels=np.arange(c))
        assert m.top_k_accuracy_from_scores(y, untied, k) == pytest.approx(ref)


def test_undefined_metrics_raise() -> None:
    with pytest.raises(InputError, match="only one class"):
        m.roc_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="positive"):
        m.average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(InputError, match="equal length"):
        m.accuracy([1, 2], [1])


def test_bootstrap_ci_matches_manual_percentile_bootstrap() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    ci = m.bootstrap_ci(m.roc_auc, y, s, n=200, seed=7)
    # independent reference: the same resampling done by hand with sklearn's AUROC
    gen = np.random.default_rng(7)
    vals = []
    for _ in range(200):
        idx = gen.integers(0, 200, 200)
        if len(np.unique(y[idx])) == 2:
            vals.append(skm.roc_auc_score(y[idx], s[idx]))
    assert ci.estimate == pytest.approx(skm.roc_auc_score(y, s))
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(vals, [0.025, 0.975])))
    assert ci.low < ci.estimate < ci.high
    assert ci.n_resamples == len(vals)


def test_bootstrap_skips_undefined_resamples() -> None:
    y = np.array([0] * 19 + [1])
    s = np.linspace(0, 1, 20)
    ci = m.bootstrap_ci(m.roc_auc, y, s, n=100, seed=0)
    assert 0 < ci.n_resamples < 100  # about a third of resamples miss the single positive


# ----------------------------------------------------------------------------- retrieval metrics
def test_retrieval_metrics_by_hand() -> None:
    q = np.array([0, 1])
    nb = np.array([[1, 0, 0, 2], [2, 2, 0, 0]])
    assert m.top_k_accuracy(q, nb, 1) == 0.0
    assert m.top_k_accuracy(q, nb, 2) == 0.5
    assert m.top_k_accuracy(q, nb, 4) == 0.5
    assert m.precision_at_k(q, nb, 4) == pytest.approx((2 / 4 + 0) / 2)
    # query 0: hits at ranks 2, 3 -> (1/2 + 2/3) / 2 ; query 1: none -> 0
    assert m.map_at_k(q, nb, 4) == pytest.approx(((1 / 2 + 2 / 3) / 2 + 0) / 2)
    # normalised by min(k, n_relevant): query 0 has 5 relevant items in the gallery
    assert m.map_at_k(q, nb, 4, n_relevant=[5, 3]) == pytest.approx(((1 / 2 + 2 / 3) / 4) / 2)


def test_majority_vote_tie_goes_to_best_ranked_label() -> None:
    nb = np.array([[3, 1, 1, 3], [1, 3, 3, 1], [2, 2, 1, 1], [5, 4, 4, 4]])
    np.testing.assert_array_equal(m.majority_vote_predict(nb, 4), [3, 1, 2, 4])
    np.testing.assert_array_equal(m.majority_vote_predict(nb, 1), [3, 1, 2, 5])
    assert m.majority_vote_accuracy_at_k([3, 3, 2, 4], nb, 4) == 0.75


@pytest.mark.parametrize("seed", range(4))
def test_map_with_full_ranking_equals_sklearn_ap(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g, c, nq = 60, 4, 10
    gallery = rng.integers(0, c, g)
    q = rng.integers(0, c, nq)
    ranking = np.stack([rng.permutation(g) for _ in range(nq)])
    nb = gallery[ranking]
    n_rel = (gallery[None, :] == q[:, None]).sum(1)
    refs = []
    for i in range(nq):
        rel = (nb[i] == q[i]).astype(int)
        refs.append(skm.average_precision_score(rel, -np.arange(g)))  # strictly decreasing scores
    assert m.map_at_k(q, nb, g, n_relevant=n_rel) == pytest.approx(np.mean(refs))
    assert m.map_at_k(q, nb, g) == pytest.approx(np.mean(refs))  # all relevant items are within k = g


def test_retrieval_metrics_reject_k_beyond_neighbours() -> None:
    with pytest.raises(InputError, match="only 2 neighbours"):
        m.precision_at_k([0], [[0, 1]], 3)
    out = m.retrieval_metrics([0], [[0, 1, 0]], [1, 3])
    assert out["top@1"] == 1.0 and out["precision@3"] == pytest.approx(2 / 3) and out["majority@3"] == 1.0
    assert set(out) == {f"{name}@{k}" for name in ("top", "majority", "precision", "map") for k in (1, 3)}


@pytest.mark.parametrize("seed", [0, 1])
def test_roc_curve_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # ties between scores
    fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    ours_fpr, ours_tpr = m.roc_curve(y, s)
    np.testing.assert_allclose(ours_fpr, fpr)
    np.testing.assert_allclose(ours_tpr, tpr)


def test_expected_calibration_error_matches_sklearn_calibration_curve() -> None:
    from sklearn.calibration import calibration_curve

    from napari_clipmed.metrics import expected_calibration_error

    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.full(4, 0.6), size=800)
    labels = rng.integers(0, 4, size=800)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    for n_bins in (5, 15):
        frac_true, mean_conf = calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
        counts, _ = np.histogram(conf, bins=np.linspace(0, 1, n_bins + 1))
        counts = counts[counts > 0]
        reference = float(np.sum(counts / len(conf) * np.abs(frac_true - mean_conf)))
        assert expected_calibration_error(labels, probs, n_bins) == pytest.approx(reference, abs=1e-12)
    perfect = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error([0, 1, 2, 1], perfect) == 0.0
