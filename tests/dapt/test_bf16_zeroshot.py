"""bf16 zero-shot on real CT patches agrees with fp32, for a model trained in the test.

A random model's predictions are near-uniform, so agreement would say little; this one is trained
(DAPT on the real chest CT's patches, as in test_train) until its held-out zero-shot accuracy is
high, then its predictions on held-out slices are compared between precisions. Class prototypes
and the softmax stay fp32, so only the image embeddings differ.
"""

from __future__ import annotations

import numpy as np

from napari_clipmed.dapt.config import DaptConfig
from napari_clipmed.dapt.train import train
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.precision import MIN_COSINE
from napari_clipmed.zeroshot import ZeroShotClassifier


def test_bf16_zero_shot_predictions_agree_with_fp32_on_held_out_ct_patches(kit, ct_patches, ct_manifest, tmp_path):
    held_out = ct_patches[1]
    config = DaptConfig(epochs=5, batch_size=32, lr=1e-3, warmup_steps=5, templates=(kit.template,))
    checkpoint = train("tiny-random", ct_manifest, config, tmp_path / "run").checkpoint
    fp32 = load_model("local", weights=checkpoint, device="cpu", precision="fp32")
    bf16 = load_model("local", weights=checkpoint, device="cpu", precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")

    classes, templates = list(kit.classes), [kit.template]
    reference = ZeroShotClassifier.from_prompts(fp32, classes, templates)
    candidate = ZeroShotClassifier.from_prompts(bf16, classes, templates)
    np.testing.assert_array_equal(candidate.class_embeddings, reference.class_embeddings)  # text stays fp32
    assert candidate.logit_scale == reference.logit_scale

    emb32, emb16 = fp32.encode_images(held_out.images), bf16.encode_images(held_out.images)
    assert np.sum(emb32 * emb16, axis=1).min() >= MIN_COSINE
    p32, p16 = reference.predict_proba(emb32), candidate.predict_proba(emb16)
    truth = np.array(held_out.labels)
    accuracy = float(np.mean(np.array(classes)[p32.argmax(axis=1)] == truth))
    assert accuracy >= 0.9, f"the trained model is the point of this test (accuracy {accuracy:.3f})"
    assert np.array_equal(p16.argmax(axis=1), p32.argmax(axis=1))  # every held-out prediction agrees
    assert np.abs(p16 - p32).max() < 0.01  # and so do the probabilities (measured: 0.003; min cosine 0.99998)
