from __future__ import annotations

import pytest
import torch

from napari_clipmed.models.loader import load_model
from napari_clipmed.models.model import ClipModel


@pytest.fixture(scope="module")
def tiny() -> ClipModel:
    return load_model("tiny-random", device="cpu")


def _small_hf_clip(seed: int = 0):
    """A randomly initialised, small `transformers.CLIPModel` (64-d towers, 64x64 images)."""
    import transformers

    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=77, vocab_size=49408),
        vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # make every tensor non-trivial (HF initialises some biases to zero, norms to one)
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


@pytest.fixture(scope="session")
def small_hf_clip():
    return _small_hf_clip
