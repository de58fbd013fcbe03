"""Confidence, temperature fitting, coverage thresholds and abstention, against plain references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax as scipy_softmax
from scipy.stats import entropy as scipy_entropy

from napari_clipmed import calibration as cal
from napari_clipmed.errors import InputError


def test_confidence_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=50)
    c = cal.confidence(probs)
    ordered = np.sort(probs, axis=1)
    np.testing.assert_allclose(c.probability, ordered[:, -1])
    np.testing.assert_allclose(c.margin, ordered[:, -1] - ordered[:, -2])
    np.testing.assert_allclose(c.entropy, scipy_entropy(probs, axis=1))
    np.testing.assert_allclose(cal.softmax(np.log(probs), 0.5), scipy_softmax(np.log(probs) / 0.5, axis=1))


def test_fit_temperature_recovers_the_temperature_that_made_the_labels() -> None:
    """Labels drawn from softmax(z / 2.5) are best explained by T = 2.5."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 4, size=(6000, 4))
    labels = np.array([rng.choice(4, p=p) for p in scipy_softmax(logits / 2.5, axis=1)])
    assert cal.fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.08)


def test_threshold_for_coverage_keeps_the_share_asked_for() -> None:
    p = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4, 0.35])
    for coverage, kept in [(1.0, 10), (0.5, 5), (0.3, 3), (0.25, 1), (0.05, 0)]:  # 0.25: a tie at 0.8
        if coverage * len(p) < 1:
            continue
        t = cal.threshold_for_coverage(p, coverage)
        assert int(np.sum(p >= t)) == kept
    with pytest.raises(InputError, match="coverage"):
        cal.threshold_for_coverage(p, 0.0)


def test_abstain_says_why() -> None:
    labels, why = cal.abstain(["a", "b", "a"], np.array([0.9, 0.4, 0.95]), 0.5, np.array([True, True, False]))
    assert labels == ["a", cal.UNCERTAIN, cal.UNCERTAIN]
    assert why[0] == "" and "0.4000 < 0.5000" in why[1] and "quality gate" in why[2]


def test_calibration_refuses_one_class_and_too_few_tiles_per_class() -> None:
    with pytest.raises(InputError, match="at least two classes"):
        cal.check_labelled(np.zeros(30, int), ["tumour", "stroma"])
    labels = np.r_[np.zeros(30, int), np.ones(4, int)]
    with pytest.raises(InputError, match=f"at least {cal.MIN_PER_CLASS} labelled tiles per class.*stroma \\(4\\)"):
        cal.check_labelled(labels, ["tumour", "stroma"])


def test_selective_curve_is_accuracy_of_the_most_confident() -> None:
    correct = np.array([1, 1, 0, 1, 0, 0, 1, 0])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    curve = dict(cal.selective_curve(correct, score, points=4))
    assert curve[0.25] == 1.0 and curve[0.5] == 0.75 and curve[1.0] == 0.5
