"""Load a registry model into a `ClipModel` (`models.model`): network, tokenizer, preprocessing and device together."""

from __future__ import annotations

import os

import torch

from napari_clipmed.errors import CheckpointError
from napari_clipmed.models.checkpoint import Checkpoint, check_compatible, read_checkpoint
from napari_clipmed.models.device import Precision, pick_device, resolve_precision
from napari_clipmed.models.model import ClipModel
from napari_clipmed.models.registry import ModelSpec, get_spec
from napari_clipmed.models.weights import resolve_weights

def arch_config_of(spec: ModelSpec) -> dict:
    """The open_clip config dict of `spec`'s architecture."""
    if spec.arch_config is not None:
        return spec.arch_config
    import open_clip

    config = open_clip.get_model_config(spec.arch)
    if config is None:
        raise CheckpointError(
            f"unknown open_clip architecture {spec.arch!r}; known ones include: "
            + ", ".join(open_clip.list_models()[:12])
            + " ..."
        )
    return config


def spec_to_meta(spec: ModelSpec, arch_config: dict) -> dict:
    return {
        "name": spec.name,
        "arch": spec.arch,
        "arch_config": arch_config,
        "image_size": spec.image_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "tokenizer": spec.tokenizer_name,
    }


def _spec_from_checkpoint(spec: ModelSpec, checkpoint: Checkpoint) -> ModelSpec:
    meta = checkpoint.meta
    changes: dict = {}
    if meta:
        changes = {
            "arch": meta.get("arch", spec.arch),
            "image_size": int(meta.get("image_size", spec.image_size)),
            "mean": tuple(meta.get("mean", spec.mean)),
            "std": tuple(meta.get("std", spec.std)),
            "tokenizer": meta.get("tokenizer", spec.tokenizer),
        }
    if checkpoint.arch_config is not None:
        changes["arch_config"] = checkpoint.arch_config
        changes["image_size"] = int(checkpoint.arch_config["vision_cfg"].get("image_size", spec.image_size))
    return spec.with_changes(**changes) if changes else spec


def build_module(spec: ModelSpec) -> torch.nn.Module:
    """An open_clip CLIP network for `spec`, randomly initialised with `spec.seed`."""
    import open_clip

    config = dict(arch_config_of(spec))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if "custom_text" in config or config.get("text_cfg", {}).get("hf_model_name"):
            return open_clip.CustomTextCLIP(**config)
        return open_clip.CLIP(**config)


def _make_tokenizer(spec: ModelSpec, module: torch.nn.Module) -> object:
    import open_clip

    context = int(getattr(module, "context_length", 77))
    try:
        return open_clip.get_tokenizer(spec.tokenizer_name, context_length=context)
    except Exception:  # noqa: BLE001 - an unknown or unreachable tokenizer: fall back to CLIP's BPE
        return open_clip.SimpleTokenizer(context_length=context)


def load_model(
    name: str | ModelSpec,
    weights: str | os.PathLike[str] | None = None,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    precision: Precision = "auto",
    allow_download: bool = True,
) -> ClipModel:
    """Build model `name` from the registry and load its weights.

    `weights` names a checkpoint (file or Hugging Face folder) explicitly; otherwise the weights
    folder and then the hub are tried (see `weights.resolve_weights`).
    """
    spec = get_spec(name)
    path = resolve_weights(spec, weights, weights_dir=weights_dir, allow_download=allow_download)
    checkpoint = read_checkpoint(path) if path is not None else None
    if checkpoint is not None:
        spec = _spec_from_checkpoint(spec, checkpoint)
    module = build_module(spec)
    if checkpoint is not None:
        check_compatible(module, checkpoint.state_dict, what=f"model {spec.name!r} (architecture {spec.arch})")
        module.load_state_dict(checkpoint.state_dict, strict=True)
    target = pick_device(device)
    module = module.to(target).eval()
    return ClipModel(
        spec=spec,
        module=module,
        tokenizer=_make_tokenizer(spec, module),
        device=target,
        precision=resolve_precision(target, precision),
        weights_path=path,
    )
