"""Load a registry model into a `ClipModel` (`models.model`): network, tokenizer, preprocessing and device together."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from napari_clipmed.errors import CheckpointError, CheckpointMismatchError
from napari_clipmed.models.backends import OPEN_CLIP, get_backend
from napari_clipmed.models.bundle import is_bundle, spec_for_bundle
from napari_clipmed.models.checkpoint import (
    Checkpoint,
    check_compatible,
    read_checkpoint,
)
from napari_clipmed.models.device import Precision, pick_device, resolve_precision
from napari_clipmed.models.folders import is_open_clip_folder, spec_from_folder
from napari_clipmed.models.model import ClipModel
from napari_clipmed.models.precision import decide
from napari_clipmed.models.registry import FOLDER_ARCH, ModelSpec, get_spec
from napari_clipmed.models.weights import resolve_weights


def arch_config_of(spec: ModelSpec) -> dict:
    """The open_clip config dict of `spec`'s architecture."""
    if spec.arch_config is not None:
        return spec.arch_config
    if spec.arch == FOLDER_ARCH:
        raise CheckpointError(
            f"model {spec.name!r} is published as an open_clip folder (open_clip_config.json, weights, text "
            f"tower files): pass that folder, e.g. a bundle from `clipmed models pull {spec.name} --to DIR`, not a file"
        )
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


_ARCH_KEYS = (("embed_dim",), ("vision_cfg", "width"), ("vision_cfg", "layers"), ("vision_cfg", "patch_size"),
              ("vision_cfg", "image_size"), ("text_cfg", "width"), ("text_cfg", "layers"))


def _check_registry_architecture(spec: ModelSpec, checkpoint: Checkpoint) -> None:
    """A checkpoint that records another architecture is refused under a registry name (only `local`
    takes its architecture from the file), so outputs never name the wrong model."""
    if spec.name == "local" or not checkpoint.meta.get("arch_config"):  # a napari-clipmed file that records its arch
        return
    try:
        expected = arch_config_of(spec)
    except CheckpointError:
        return

    def pick(config: dict | None, keys: tuple[str, ...]) -> object:
        for key in keys:
            config = config.get(key, {}) if isinstance(config, dict) else {}
        return config if config != {} else None

    differ = [".".join(k) for k in _ARCH_KEYS
              if pick(expected, k) is not None and pick(checkpoint.arch_config, k) is not None
              and pick(expected, k) != pick(checkpoint.arch_config, k)]
    if differ:
        saved = checkpoint.meta.get("arch") or checkpoint.meta.get("name") or "another"
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint.path} holds a {saved} architecture, not {spec.arch} as model {spec.name!r} needs "
            f"({', '.join(differ)} differ); load it with --model local --weights {checkpoint.path}"
        )


def build_module(spec: ModelSpec) -> torch.nn.Module:
    """An open_clip CLIP network for `spec`, randomly initialised with `spec.seed`."""
    import open_clip

    config = dict(arch_config_of(spec))
    custom_text = config.pop("custom_text", False) or config.get("text_cfg", {}).get("hf_model_name")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if "multimodal_cfg" in config:
            return open_clip.CoCa(**config)
        if custom_text:
            return open_clip.CustomTextCLIP(**config)
        return open_clip.CLIP(**config)


def _make_tokenizer(spec: ModelSpec, module: torch.nn.Module) -> object:
    import open_clip

    context = int(arch_config_of(spec).get("text_cfg", {}).get("context_length") or getattr(module, "context_length", 77))
    if spec.hf_tokenizer:  # a Hugging Face text tower: its tokenizer from the local folder, never the hub
        from open_clip.tokenizer import HFTokenizer

        from napari_clipmed.models.tokens import require_tokenizer_files

        require_tokenizer_files(Path(spec.hf_tokenizer), what=f"model {spec.name!r}")
        kwargs = arch_config_of(spec).get("text_cfg", {}).get("tokenizer_kwargs", {})
        return HFTokenizer(spec.hf_tokenizer, context_length=context, local_files_only=True, **kwargs)
    try:
        return open_clip.get_tokenizer(spec.tokenizer_name, context_length=context)
    except Exception:  # noqa: BLE001 - an unknown or unreachable tokenizer: fall back to CLIP's BPE
        return open_clip.SimpleTokenizer(context_length=context)


def _drop_stale_buffers(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Remove buffers older checkpoints saved that today's modules no longer keep (as open_clip does)."""
    expected = module.state_dict()
    for key in [k for k in state if k.endswith("embeddings.position_ids") and k not in expected]:
        del state[key]


def _load_with_backend(spec: ModelSpec, path: Path | None, device: str | torch.device | None,
                       precision: Precision) -> ClipModel:
    """A model built by a non-open_clip backend (`models.backends`), wrapped like any other."""
    target = pick_device(device)
    network = get_backend(spec.backend).load(spec, path, target)
    return _with_precision(ClipModel(
        spec=network.spec,
        module=network.module.to(target).eval(),
        tokenizer=network.tokenizer,
        device=target,
        precision=resolve_precision(target, precision),  # on a CPU `_with_precision` decides
        weights_path=path,
    ), precision)


def _with_precision(model: ClipModel, precision: Precision) -> ClipModel:
    """On a CPU, once per load: the precision requested, or `auto`'s measured choice (`models.precision`)."""
    if model.device.type == "cpu":
        model.precision_choice = decide(model, precision)
        model.precision = model.precision_choice.precision
    return model


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
    if path is not None and is_bundle(path):
        spec = spec_for_bundle(spec, path)
    if spec.backend != OPEN_CLIP:
        return _load_with_backend(spec, path, device, precision)
    if path is not None and is_open_clip_folder(path):
        spec = spec_from_folder(spec, path)
    checkpoint = read_checkpoint(path, trusted_pickle=spec.trusted_pickle) if path is not None else None
    if checkpoint is not None:
        _check_registry_architecture(spec, checkpoint)
        spec = _spec_from_checkpoint(spec, checkpoint)
    module = build_module(spec)
    if checkpoint is not None:
        _drop_stale_buffers(module, checkpoint.state_dict)
        check_compatible(module, checkpoint.state_dict, what=f"model {spec.name!r} (architecture {spec.arch})")
        module.load_state_dict(checkpoint.state_dict, strict=True)
    target = pick_device(device)
    module = module.to(target).eval()
    return _with_precision(ClipModel(
        spec=spec,
        module=module,
        tokenizer=_make_tokenizer(spec, module),
        device=target,
        precision=resolve_precision(target, precision),  # on a CPU `_with_precision` decides
        weights_path=path,
    ), precision)
