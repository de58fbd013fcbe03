"""The contrastive loss against open_clip and a numpy reference; accumulation against the large batch."""

from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from napari_clipmed.dapt.step import accumulate_gradients, contrastive_loss, positive_mask
from napari_clipmed.models.loader import load_model


def _features(n: int, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1), F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_loss_equals_open_clip_clip_loss_when_all_pairs_differ():
    a, b = _features(10)
    scale = torch.tensor(14.3)
    expected = open_clip.ClipLoss()(a, b, scale)
    torch.testing.assert_close(contrastive_loss(a, b, scale), expected)
    assert positive_mask(["x", "y", "z"], 3, torch.device("cpu")) is None


def test_loss_with_shared_captions_spreads_the_target_over_all_positives():
    a, b = _features(6, seed=1)
    keys = ["lung", "bone", "lung", "soft", "bone", "lung"]
    mask = positive_mask(keys, 6, torch.device("cpu"))
    got = float(contrastive_loss(a, b, 10.0, mask))
    # numpy reference: cross-entropy against the uniform distribution over same-key columns
    logits = 10.0 * a.double().numpy() @ b.double().numpy().T
    same = np.equal.outer(keys, keys).astype(float)
    target = same / same.sum(axis=1, keepdims=True)

    def ce(z: np.ndarray) -> float:
        log_p = z - z.max(axis=1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
        return float(-(target * log_p).sum(axis=1).mean())

    np.testing.assert_allclose(got, (ce(logits) + ce(logits.T)) / 2, rtol=1e-5)


def _grads(chunks: int, positives: torch.Tensor | None) -> dict[str, torch.Tensor]:
    model = load_model("tiny-random")
    module = model.module.train()
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(16, 3, 64, 64, generator=g)
    tokens = model.tokenizer([f"a CT patch number {i}" for i in range(16)])
    pieces = list(zip(pixels.chunk(chunks), tokens.chunk(chunks)))

    def encode(chunk):
        return module.encode_image(chunk[0], normalize=True), module.encode_text(chunk[1], normalize=True)

    accumulate_gradients(encode, pieces, lambda: module.logit_scale.exp(), positives)
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_accumulated_gradients_equal_the_full_batch_gradients():
    mask = positive_mask([i % 5 for i in range(16)], 16, torch.device("cpu"))
    for positives in (None, mask):
        full, accumulated = _grads(1, positives), _grads(4, positives)
        assert set(full) == set(accumulated) and "logit_scale" in full
        assert float(full["logit_scale"].abs()) > 0
        for name, grad in full.items():
            scale = float(grad.abs().max()) + 1e-12
            torch.testing.assert_close(accumulated[name] / scale, grad / scale, rtol=0, atol=1e-4, msg=name)
