"""Temperature scaling and abstention with a tiny CLIP that has learnt CT tissue classes (trained here)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clipmed.calibration import calibrate_temperature, confidence, softmax, threshold_for_coverage
from napari_clipmed.dapt.config import DaptConfig
from napari_clipmed.dapt.train import train
from napari_clipmed.metrics import expected_calibration_error
from napari_clipmed.models.loader import load_model
from napari_clipmed.zeroshot import ZeroShotClassifier


@pytest.fixture(scope="module")
def trained(kit, ct_patches, ct_manifest, tmp_path_factory):
    """A tiny CLIP after two DAPT epochs (seed 0), its classifier, and held-out logits and labels."""
    config = DaptConfig(epochs=2, batch_size=32, lr=1e-3, warmup_steps=5, templates=(kit.template,), seed=0)
    result = train("tiny-random", ct_manifest, config, tmp_path_factory.mktemp("calib-run"))
    model = load_model("local", weights=result.checkpoint)
    classifier = ZeroShotClassifier.from_prompts(model, list(kit.classes), [kit.template])
    held_out = ct_patches[1]
    logits = classifier.logits(model.encode_images(held_out.images))
    labels = np.array([kit.classes.index(label) for label in held_out.labels])
    return model, classifier, logits, labels


def test_temperature_scaling_lowers_ece_on_held_out_tiles(kit, trained) -> None:
    _, classifier, logits, labels = trained
    assert np.mean(np.argmax(logits, axis=1) == labels) > 0.6  # the model has learnt something
    result = calibrate_temperature(logits, labels, list(kit.classes), seed=0)
    assert result.n_fit + result.n_held_out == len(labels)
    assert result.ece_after < result.ece_before
    # the reported ECE is the metric on the held-out half under the two temperatures
    assert result.temperature != pytest.approx(1.0)
    # the classifier applies the temperature; the predicted classes do not change
    tempered = ZeroShotClassifier(classifier.prompts, classifier.class_embeddings, classifier.logit_scale,
                                  temperature=result.temperature)
    emb_probs = softmax(logits, result.temperature)
    np.testing.assert_array_equal(np.argmax(emb_probs, axis=1), np.argmax(logits, axis=1))
    assert tempered.temperature == result.temperature
    assert expected_calibration_error(labels, emb_probs) < expected_calibration_error(labels, softmax(logits))


def test_abstaining_raises_accuracy_on_the_kept_tiles(trained) -> None:
    _, _, logits, labels = trained
    probs = softmax(logits)
    correct = np.argmax(probs, axis=1) == labels
    top = confidence(probs).probability
    threshold = threshold_for_coverage(top, 0.7)
    kept = top >= threshold
    assert 0.6 <= kept.mean() <= 0.7
    assert correct[kept].mean() > correct.mean()
