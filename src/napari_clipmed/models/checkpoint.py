"""Read checkpoints of every format we meet, check them against a model, and save our own.

Formats read: open_clip state dicts (.pt/.bin/.pth/.safetensors, bare or under "state_dict",
with or without a DataParallel "module." prefix), OpenAI TorchScript archives, Hugging Face
`CLIPModel` files or folders (converted), and napari-clipmed checkpoints, which carry the
architecture and preprocessing so the `local` model can rebuild them.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from napari_clipmed.errors import CheckpointError, CheckpointMismatchError
from napari_clipmed.io.atomic import atomic_path
from napari_clipmed.models.convert import (
    convert_hf_state_dict,
    hf_config_to_open_clip,
    is_hf_clip_state_dict,
    read_hf_config,
)

CLIPMED_FORMAT = "napari-clipmed-checkpoint"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_PREFERRED_FILES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "model.safetensors",
    "pytorch_model.bin",
)
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


@dataclass
class Checkpoint:
    """A state dict in open_clip layout plus what the file says about its architecture."""

    state_dict: dict[str, torch.Tensor]
    path: Path
    arch_config: dict | None = None  # open_clip model config, when the file knows it
    meta: dict = field(default_factory=dict)  # napari-clipmed metadata (arch, preprocessing, training)


def _weights_file_in(folder: Path) -> Path:
    for name in _PREFERRED_FILES:
        if (folder / name).is_file():
            return folder / name
    files = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise CheckpointError(f"no checkpoint file ({', '.join(_WEIGHT_SUFFIXES)}) in folder {folder}")
    return files[0]


def _load_file(path: Path, trusted_pickle: bool = False) -> object:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                is_torchscript = any(n.split("/", 1)[-1].startswith("code/") for n in archive.namelist())
            if is_torchscript:  # OpenAI's original .pt files are TorchScript archives
                return torch.jit.load(str(path), map_location="cpu").state_dict()
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            if not trusted_pickle:
                raise
            return torch.load(str(path), map_location="cpu", weights_only=False)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - every reader failure means the same to the user
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt, truncated or not a model checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else 'no details'})"
        ) from None


def _refuse_siglip(hf_config: dict | None, state: dict, file: Path) -> None:
    """A SigLIP checkpoint (MedSigLIP) is not a CLIP: say which model loads it instead of a key listing."""
    siglip = (hf_config or {}).get("model_type", "") in ("siglip", "siglip2") or any(
        k.startswith("vision_model.head.") or k == "logit_bias" for k in state
    )
    if siglip:
        raise CheckpointError(
            f"{file} is a SigLIP checkpoint (e.g. MedSigLIP), not a CLIP: load it with the model that names "
            "it, `--model medsiglip --weights FOLDER` (load_model('medsiglip', weights=FOLDER))"
        )


def read_checkpoint(path: str | os.PathLike[str], *, trusted_pickle: bool = False) -> Checkpoint:
    """Read `path` (file or folder) into an open_clip-layout state dict.

    `trusted_pickle` allows a checkpoint that pickles Python objects (``weights_only=False``); only for
    registry models that publish one (OmiCLIP), never for arbitrary files.
    """
    path = Path(path)
    hf_config = None
    if path.is_dir():
        hf_config = read_hf_config(path)
        file = _weights_file_in(path)
    else:
        file = path
        hf_config = read_hf_config(path.parent) if path.name in _PREFERRED_FILES else None
    raw = _load_file(file, trusted_pickle)
    if not isinstance(raw, dict):
        raise CheckpointError(f"checkpoint {file} holds a {type(raw).__name__}, not a state dict")
    meta: dict = {}
    if raw.get("format") == CLIPMED_FORMAT:
        meta = dict(raw.get("meta", {}))
        raw = raw["state_dict"]
    elif isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    state = {k.removeprefix("module."): v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"checkpoint {file} holds no tensors")
    arch_config = meta.get("arch_config")
    if is_hf_clip_state_dict(state):
        _refuse_siglip(hf_config, state, file)
        state = convert_hf_state_dict(state)
        if hf_config is not None:
            arch_config = hf_config_to_open_clip(hf_config)
    for key in _OPENAI_EXTRA_KEYS:
        state.pop(key, None)
    return Checkpoint(state_dict=state, path=file, arch_config=arch_config, meta=meta)


def check_compatible(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, what: str) -> None:
    """Raise `CheckpointMismatchError` naming missing, unexpected and mis-shaped keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    if not (missing or unexpected or shapes):
        return

    def listing(keys: list[str], show=lambda k: k) -> str:
        head = ", ".join(show(k) for k in keys[:5])
        return head + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")

    parts = []
    if shapes:
        parts.append(
            f"{len(shapes)} tensors have the wrong shape ("
            + listing(shapes, lambda k: f"{k}: checkpoint {list(got[k])} vs model {list(expected[k])}")
            + ")"
        )
    if missing:
        parts.append(f"{len(missing)} keys are missing ({listing(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} keys are unexpected ({listing(unexpected)})")
    raise CheckpointMismatchError(
        f"the checkpoint does not fit {what}: " + "; ".join(parts)
        + ". Is it a checkpoint of another architecture?"
    )


def save_checkpoint(state_dict: dict[str, torch.Tensor], path: str | os.PathLike[str], meta: dict) -> Path:
    """Write a napari-clipmed checkpoint atomically (temp file, then rename)."""
    path = Path(path)
    payload = {"format": CLIPMED_FORMAT, "meta": meta, "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
