"""The CPU fast forward equals open_clip's own image tower, and steps aside where it does not apply."""

from __future__ import annotations

import platform
from dataclasses import replace

import numpy as np
import open_clip
import pytest
import torch

from napari_clipmed.models.cpu_fastpath import supports_fast_forward, vision_forward
from napari_clipmed.models.encode import cpu_micro_batch
from napari_clipmed.models.model import ClipModel
from napari_clipmed.models.registry import TINY_ARCH_CONFIG, get_spec

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in {"x86_64", "amd64"}, reason="the oneDNN fast path is for x86 CPUs"
)

VISION = {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16}


def _visual(seed: int = 0, quick_gelu: bool = False, **vision_changes: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=32,
        quick_gelu=quick_gelu,
        vision_cfg=VISION | vision_changes,
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
    ).eval()
    with torch.no_grad():  # non-trivial norms, biases and layer scales
        for param in model.visual.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.visual


def _tiny_model() -> ClipModel:
    module = open_clip.CLIP(**TINY_ARCH_CONFIG).eval()
    return ClipModel(get_spec("tiny-random"), module, None, torch.device("cpu"), "fp32")


VARIANTS = {
    "quick-gelu (OpenAI, PathCLIP)": dict(quick_gelu=True),
    "exact gelu, fused into the GEMM": dict(),
    "layer scale": dict(ls_init_value=0.1),
    "final norm after pooling": dict(final_ln_after_pool=True),
    "average pooling": dict(pool_type="avg"),
    "attentional pooler": dict(attentional_pool=True, attn_pooler_queries=1),
    "no projection": dict(),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_equals_open_clip_image_tower(variant: str) -> None:
    visual = _visual(**VARIANTS[variant])
    if variant == "no projection":
        visual.proj = None
    assert supports_fast_forward(visual)
    pixels = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        expected = visual(pixels)
        got = vision_forward(visual, pixels)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_follows_weights_changed_in_place() -> None:
    """Nothing is copied: after a training step the fast forward still equals the stock one."""
    visual = _visual()
    pixels = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        before = vision_forward(visual, pixels)
    optimizer = torch.optim.SGD(visual.parameters(), lr=0.5)
    visual(pixels).square().sum().backward()
    optimizer.step()
    with torch.inference_mode():
        after, expected = vision_forward(visual, pixels), visual(pixels)
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, expected, atol=1e-5, rtol=1e-5)


def test_steps_aside_where_it_does_not_apply() -> None:
    assert not supports_fast_forward(_visual(qk_norm=True))  # open_clip's custom block
    assert not supports_fast_forward(_visual().double())
    tokens = _visual()
    tokens.output_tokens = True
    assert not supports_fast_forward(tokens)
    assert not supports_fast_forward(torch.nn.Linear(3, 3))


def test_encoder_uses_it_and_gets_the_same_embeddings() -> None:
    """`encode_images` with and without the fast path, against open_clip's encode_image."""
    torch.manual_seed(1)
    fast = _tiny_model()
    stock = replace(fast, cpu_fastpath=False, text_memo={})
    module = fast.module
    assert supports_fast_forward(module.visual)
    images = np.random.default_rng(0).integers(0, 256, (9, 64, 64, 3), dtype=np.uint8)
    a, b = fast.encode_images(images, batch_size=4), stock.encode_images(images, batch_size=4)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_cpu_micro_batch_keeps_about_1024_tokens_per_forward() -> None:
    assert cpu_micro_batch(_visual()) == 1024 // 17  # 4 x 4 patches + class token
    assert cpu_micro_batch(_visual(image_size=224)) == 1024 // 197  # a ViT-B/16 image: 5 per forward
    assert cpu_micro_batch(_visual(image_size=512, patch_size=8)) == 1  # never zero


def test_encoder_falls_back_when_the_oneDNN_op_fails(monkeypatch) -> None:
    """A torch build whose private op behaves differently costs speed, not a crash."""
    import napari_clipmed.models.encode as encode

    def broken(visual, pixels):
        raise RuntimeError("mkldnn::_linear_pointwise: unsupported")

    model = _tiny_model()
    images = np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    expected = replace(model, cpu_fastpath=False, text_memo={}).encode_images(images)
    monkeypatch.setattr(encode, "vision_forward", broken)
    np.testing.assert_allclose(model.encode_images(images), expected, atol=1e-6)
    assert model.cpu_fastpath is False

