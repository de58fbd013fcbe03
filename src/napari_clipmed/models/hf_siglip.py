"""The transformers SigLIP backend (MedSigLIP): a `SiglipModel` folder loaded from disk, sigmoid scoring.

The folder is what the hub publishes for a transformers model (config.json, model.safetensors,
tokenizer files, preprocessor_config.json), e.g. a bundle of ``google/medsiglip-448``. The
embeddings are transformers' own `get_image_features` / `get_text_features`; texts are padded
to the full context (64 tokens for MedSigLIP), as SigLIP was trained. Zero-shot scores are the
model's own rule: ``sigmoid(logit_scale * cosine + logit_bias)`` per class, not a softmax.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from napari_clipmed.errors import CheckpointError, WeightsNotFoundError
from napari_clipmed.models.backends import BackendNetwork
from napari_clipmed.models.registry import ModelSpec
from napari_clipmed.models.tokens import PaddedTokenizer, load_auto_tokenizer

SIGLIP_TYPES = ("siglip", "siglip2")


def _pooled(output: Any) -> torch.Tensor:
    return getattr(output, "pooler_output", output)  # transformers 5 returns a model output, 4 a tensor


class SiglipNetwork(nn.Module):
    """A transformers SigLIP model behind the backend protocol's `encode_image` / `encode_text`."""

    model: Any  # a transformers SiglipModel

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.embed_dim = int(self.model.config.vision_config.hidden_size)

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.model.logit_scale

    @property
    def logit_bias(self) -> torch.Tensor:
        return self.model.logit_bias

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_text_features(input_ids=tokens))


def read_siglip_config(folder: Path, what: str) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{what}: {folder} lacks config.json (a transformers SigLIP folder needs it)")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
    if config.get("model_type") not in SIGLIP_TYPES:
        raise CheckpointError(
            f"{what}: {folder} holds a {config.get('model_type')!r} model, not a SigLIP "
            f"(config.json model_type should be one of {', '.join(SIGLIP_TYPES)})"
        )
    return config


class SiglipBackend:
    """Backend ``hf_siglip``: builds registry models whose `backend` is ``hf_siglip`` (MedSigLIP)."""

    name = "hf_siglip"
    models: tuple[ModelSpec, ...] = ()  # MedSigLIP is in the built-in registry

    def load(self, spec: ModelSpec, weights: Path | None, device: torch.device) -> BackendNetwork:
        what = f"model {spec.name!r}"
        if weights is None:
            raise WeightsNotFoundError(f"{what} needs its transformers folder (config.json, model.safetensors, tokenizer)")
        folder = weights if weights.is_dir() else weights.parent
        config = read_siglip_config(folder, what)
        from transformers import AutoModel

        try:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True).float()  # fp32; autocast on GPUs
        except (OSError, ValueError, RuntimeError) as err:
            detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise CheckpointError(f"{what}: cannot load the SigLIP weights in {folder} ({detail})") from None
        text_config = config.get("text_config", {})
        vision_config = config.get("vision_config", {})
        tokenizer = PaddedTokenizer(load_auto_tokenizer(folder, what=f"{what} (folder {folder})"),
                                    int(text_config.get("max_position_embeddings", 64)))
        changes: dict = {"image_size": int(vision_config.get("image_size", spec.image_size))}
        processor = folder / "preprocessor_config.json"
        if processor.is_file():
            settings = json.loads(processor.read_text())
            if "image_mean" in settings:
                changes["mean"] = tuple(float(v) for v in settings["image_mean"])
            if "image_std" in settings:
                changes["std"] = tuple(float(v) for v in settings["image_std"])
        return BackendNetwork(SiglipNetwork(model.eval()), tokenizer, spec.with_changes(**changes))


BACKEND = SiglipBackend()
