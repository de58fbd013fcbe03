"""Temperature scaling and abstention with a tiny CLIP that has learnt CT tissue classes (trained here)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_clipmed.calibration import (
    calibrate_temperature,
    confidence,
    softmax,
    threshold_for_coverage,
)
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
    return model, classifier, logits, labels, result.checkpoint


def test_temperature_scaling_lowers_ece_on_held_out_tiles(kit, trained) -> None:
    _, classifier, logits, labels, _ = trained
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
    _, _, logits, labels, _ = trained
    probs = softmax(logits)
    correct = np.argmax(probs, axis=1) == labels
    top = confidence(probs).probability
    threshold = threshold_for_coverage(top, 0.7)
    kept = top >= threshold
    assert 0.6 <= kept.mean() <= 0.7
    assert correct[kept].mean() > correct.mean()


def _image_folder(root, patches, classes=None):
    from PIL import Image

    for i, (image, label) in enumerate(zip(patches.images, patches.labels)):
        if classes is None or label in classes:
            (root / label).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / label / f"p{i:03d}.png")
    return root


def test_zeroshot_command_calibrates_saves_the_temperature_and_abstains(kit, ct_patches, trained, tmp_path, capsys):
    import pandas as pd
    import yaml

    from napari_clipmed.cli import main

    checkpoint = trained[4]
    folder = _image_folder(tmp_path / "held", ct_patches[1])
    common = ["--model", "local", "--weights", str(checkpoint), "--templates", kit.template, "--no-cache", "--quiet"]
    classes = ",".join(kit.classes)
    out = tmp_path / "preds.csv"
    assert main(["zeroshot", "--data", str(folder), "--classes", classes, "--calibrate", str(folder),
                 "--coverage", "0.8", "--out", str(out), *common]) == 0
    printed = capsys.readouterr().out
    assert "held-out tiles:" in printed and "abstained on" in printed
    saved = yaml.safe_load(out.with_suffix(".prompts.yaml").read_text())
    block = saved["calibration"]
    assert block["ece_after"] < block["ece_before"] and block["model"].startswith("local:")
    frame = pd.read_csv(out, keep_default_na=False)
    assert {"probability", "margin", "entropy", "decision", "abstain_reason"} <= set(frame.columns)
    kept = frame[frame["decision"] != "uncertain"]
    assert 0.6 <= len(kept) / len(frame) <= 0.95
    assert (kept["predicted"] == kept["label"]).mean() >= (frame["predicted"] == frame["label"]).mean()
    assert (frame.loc[frame["decision"] == "uncertain", "abstain_reason"].str.contains("top probability")).all()

    # the saved file carries the temperature into the next run
    again = tmp_path / "again.csv"
    assert main(["zeroshot", "--data", str(folder), "--preset", str(out.with_suffix(".prompts.yaml")),
                 "--out", str(again), *common]) == 0
    assert f"using the temperature {block['temperature']:.4g}" in capsys.readouterr().out
    np.testing.assert_allclose(pd.read_csv(again)["probability"], frame["probability"], rtol=1e-4)


def test_calibrating_on_one_class_is_one_clear_error(kit, ct_patches, trained, tmp_path, capsys):
    from napari_clipmed.cli import main

    one = _image_folder(tmp_path / "one", ct_patches[1], classes={"bone"})
    code = main(["zeroshot", "--data", str(one), "--classes", ",".join(kit.classes), "--calibrate", str(one),
                 "--model", "local", "--weights", str(trained[4]), "--templates", kit.template,
                 "--out", str(tmp_path / "p.csv"), "--quiet", "--no-cache"])
    assert code == 2
    assert "at least two classes" in capsys.readouterr().err
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "p.prompts.yaml").exists()
