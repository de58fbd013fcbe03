"""The Hugging Face CLIPModel -> open_clip converter, checked against transformers itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_clipmed.errors import CheckpointMismatchError
from napari_clipmed.models.loader import load_model

@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory, small_hf_clip):
    model = small_hf_clip(0)
    folder = tmp_path_factory.mktemp("hf") / "plip"
    model.save_pretrained(folder)  # config.json + model.safetensors
    return model, folder


def _hf_features(model, pixels: torch.Tensor, tokens: torch.Tensor):
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=tokens)
    image = getattr(image, "pooler_output", image)
    text = getattr(text, "pooler_output", text)
    return image, text


def test_converted_model_matches_transformers(hf_checkpoint) -> None:
    hf_model, folder = hf_checkpoint
    ours = load_model("plip", weights=folder, device="cpu")
    assert ours.spec.image_size == 64 and ours.embed_dim == 32

    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    texts = ["an H&E image of tumor.", "necrosis", "a histopathology image of normal tissue."]
    tokens = ours.tokenizer(texts)
    hf_image, hf_text = _hf_features(hf_model, pixels, tokens)
    with torch.no_grad():
        oc_image = ours.module.encode_image(pixels)
        oc_text = ours.module.encode_text(tokens)
    assert torch.allclose(oc_image, hf_image, atol=1e-4), (oc_image - hf_image).abs().max()
    assert torch.allclose(oc_text, hf_text, atol=1e-4), (oc_text - hf_text).abs().max()
    assert abs(ours.logit_scale - float(hf_model.logit_scale.detach().exp())) < 1e-4

    # The public encoders agree too (they L2-normalise).
    text_emb = ours.encode_texts(texts)
    ref = torch.nn.functional.normalize(hf_text, dim=-1).numpy()
    np.testing.assert_allclose(text_emb, ref, atol=1e-4)


def test_pytorch_bin_checkpoint_converts_too(hf_checkpoint, tmp_path) -> None:
    hf_model, folder = hf_checkpoint
    target = tmp_path / "plip"
    target.mkdir()
    (target / "config.json").write_text((folder / "config.json").read_text())
    torch.save(hf_model.state_dict(), target / "pytorch_model.bin")
    a = load_model("plip", weights=folder, device="cpu")
    b = load_model("plip", weights=target, device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(a.encode_images(images), b.encode_images(images), atol=1e-6)


def test_bare_hf_file_without_config_reports_mismatch(hf_checkpoint, tmp_path) -> None:
    """Without config.json the registry's architecture (ViT-B/32) is assumed; the tiny file does not fit it."""
    hf_model, _ = hf_checkpoint
    path = tmp_path / "plip.bin"
    torch.save(hf_model.state_dict(), path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_model("plip", weights=path, device="cpu")
    message = str(info.value)
    assert "wrong shape" in message and "checkpoint [" in message and "model [" in message
    assert "missing" in message  # the 2-layer file lacks layers 2..11 of ViT-B/32
