"""Gate and selective-accuracy metrics of the robustness runner, against plain numpy."""

from __future__ import annotations

import numpy as np

from napari_clipmed.bench.trust import COVERAGES, trust_metric_names, trust_metrics


def test_trust_metrics_match_a_plain_computation() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=50)
    y = rng.integers(0, 3, size=50)
    passed = rng.random(50) > 0.3
    values = trust_metrics(y, probs, passed)
    assert list(values) == trust_metric_names()
    correct = probs.argmax(axis=1) == y
    assert values["gate_flagged"] == 1 - passed.mean()
    assert values["zeroshot_accuracy_gate_passed"] == correct[passed].mean()
    order = np.argsort(-probs.max(axis=1))
    for c in COVERAGES:
        n = round(c / 100 * 50)
        assert values[f"selective_accuracy@cov{c}"] == correct[order[:n]].mean()
    assert values["selective_accuracy@cov100"] == correct.mean()


def test_no_tile_passing_gives_an_undefined_gated_accuracy() -> None:
    values = trust_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([False, False]))
    assert values["gate_flagged"] == 1.0 and np.isnan(values["zeroshot_accuracy_gate_passed"])
