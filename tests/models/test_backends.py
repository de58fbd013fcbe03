"""Third-party model backends registered through the `napari_clipmed.backends` entry point group.

The test writes a real installed distribution (a .dist-info folder with entry_points.txt) on
sys.path, so `importlib.metadata` finds it exactly as it finds a pip-installed plug-in. Its model
then runs through the encoder, cache, zero-shot classifier, retrieval index and CLI unchanged; a
plug-in whose import fails is reported with its error and breaks nothing else.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from napari_clipmed.errors import BackendError
from napari_clipmed.models import backends
from napari_clipmed.models.cache import EmbeddingCache
from napari_clipmed.models.images import preprocess_batch
from napari_clipmed.models.loader import load_model
from napari_clipmed.models.registry import (
    MODELS,
    UnknownModelError,
    get_spec,
    list_models,
)
from napari_clipmed.retrieval import EmbeddingIndex
from napari_clipmed.zeroshot import classify_images

TOY_PACKAGE = '''
"""A toy backend: mean colour -> linear map for images, bag of characters for texts."""
import torch
from torch import nn

from napari_clipmed.models.backends import BackendNetwork
from napari_clipmed.models.registry import ModelSpec


class CharTokenizer:
    context_length = 64

    def count_tokens(self, text):
        return len(text) + 1

    def __call__(self, texts):
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [1 + ord(c) % 90 for c in text][: self.context_length]
            out[i, : len(ids)] = torch.tensor(ids)
        return out


class ToyNetwork(nn.Module):
    embed_dim = 8

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.image_proj = nn.Parameter(torch.randn(3 * 16, 8, generator=generator))
        self.token_embedding = nn.Parameter(torch.randn(92, 8, generator=generator))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))
        self.image_calls = 0

    def encode_image(self, pixels):
        self.image_calls += len(pixels)
        pooled = nn.functional.adaptive_avg_pool2d(pixels, 4).flatten(1)  # N x 3 x 4 x 4 -> N x 48
        return pooled[:, : 3 * 16] @ self.image_proj

    def encode_text(self, tokens):
        return self.token_embedding[tokens].sum(dim=1)


class ToyBackend:
    name = "toy"
    models = (ModelSpec(name="toy-model", arch="toy", description="toy backend model", image_size=16,
                        needs_weights=False, weights_format="none", backend="toy", licence="MIT"),)

    def load(self, spec, weights, device):
        return BackendNetwork(ToyNetwork(), CharTokenizer(), spec)


def make_backend():
    return ToyBackend()
'''


@pytest.fixture()
def plugins(tmp_path, monkeypatch):
    """Install (on sys.path) a distribution with a working and a broken backend entry point."""
    (tmp_path / "clipmed_toy_backend.py").write_text(textwrap.dedent(TOY_PACKAGE))
    (tmp_path / "clipmed_broken_backend.py").write_text("import conch_is_not_installed  # noqa\nbackend = None\n")
    dist = tmp_path / "clipmed_toy_backend-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: clipmed-toy-backend\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[napari_clipmed.backends]\ntoy = clipmed_toy_backend:make_backend\nconch = clipmed_broken_backend:backend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    saved = (dict(MODELS), dict(backends._BACKENDS), dict(backends._BROKEN))
    backends.rediscover_backends()
    yield
    MODELS.clear()
    MODELS.update(saved[0])
    backends._BACKENDS.clear()
    backends._BACKENDS.update(saved[1])
    backends._BROKEN.clear()
    backends._BROKEN.update(saved[2])


def test_entry_point_backend_model_runs_everywhere_unchanged(plugins, tmp_path) -> None:
    assert "toy-model" in list_models() and get_spec("toy-model").backend == "toy"
    model = load_model("toy-model", device="cpu")
    images = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)

    # The encoder: preprocessing by the spec, then the backend's encode_image, L2-normalised.
    embeddings = model.encode_images(images)
    pixels = preprocess_batch(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, 16, model.spec.mean,
                              model.spec.std)
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.module.encode_image(pixels), dim=-1).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)

    # The embedding cache: a second pass does no model work.
    cache = EmbeddingCache(tmp_path / "cache")
    model.encode_images(images, cache=cache)
    calls = model.module.image_calls
    np.testing.assert_allclose(model.encode_images(images, cache=cache), embeddings, atol=1e-6)
    assert model.module.image_calls == calls

    # Zero-shot (softmax, the spec's default rule) and retrieval.
    result = classify_images(model, images, ["tumor", "stroma", "necrosis"])
    assert result.probabilities.shape == (5, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, atol=1e-5)
    index = EmbeddingIndex(embeddings, labels=list("abcde"), model_id=model.signature)
    hits = index.search(embeddings[:2], k=1, model_id=model.signature)
    assert list(hits.to_frame()["label"][:2]) == ["a", "b"]


def test_entry_point_backend_works_from_the_cli(plugins, tmp_path) -> None:
    from PIL import Image

    from napari_clipmed.cli import main

    path = tmp_path / "tile.png"
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(path)
    out = tmp_path / "emb.npz"
    assert main(["encode", str(path), "--model", "toy-model", "--out", str(out), "--no-cache"]) == 0
    assert np.load(out)["embeddings"].shape == (1, 8)


def test_backend_that_fails_to_import_is_one_clear_message(plugins, tmp_path, capsys) -> None:
    with pytest.raises(BackendError) as info:
        backends.get_backend("conch")
    message = str(info.value)
    assert "'conch'" in message and "clipmed_broken_backend:backend" in message
    assert "ModuleNotFoundError" in message and "conch_is_not_installed" in message
    with pytest.raises(UnknownModelError, match="backend 'conch'.*failed to load"):
        get_spec("conch-vit-b-16")
    # A model that names the broken backend: the same message, and nothing written.
    from napari_clipmed.models.registry import ModelSpec, register_model

    register_model(ModelSpec(name="conch-like", arch="x", description="", backend="conch", needs_weights=False,
                             weights_format="none"))
    with pytest.raises(BackendError, match="failed to load"):
        load_model("conch-like", device="cpu")
    # The other models and `clipmed models` still work; the listing names the broken plug-in.
    from napari_clipmed.cli import main

    assert main(["models", "--weights-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "toy-model" in printed and "warning: the model backend 'conch'" in printed
    assert list(tmp_path.iterdir()) and not (tmp_path / "conch-like").exists()


def test_unknown_backend_names_the_known_ones() -> None:
    with pytest.raises(BackendError, match="unknown model backend 'nope'.*open_clip.*hf_siglip"):
        backends.get_backend("nope")


def test_a_backend_must_follow_the_protocol() -> None:
    with pytest.raises(BackendError, match="not a model backend"):
        backends.register_backend(object())  # type: ignore[arg-type]
