"""open_clip model folders: `open_clip_config.json` + weights, the layout open_clip models are published in.

A folder like this is what an ``hf-hub:ORG/REPO`` download holds and what a bundle holds for an
open_clip model. `spec_from_folder` reads it into a `ModelSpec` the loader builds with no network:
the architecture and preprocessing come from the folder's config, and a Hugging Face text tower
(BiomedCLIP's and QuiltNet-B-16-PMB's PubMedBERT) takes its config and tokenizer from the folder's
`text/` subfolder, never from the hub name the published config carries.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from napari_clipmed.errors import BundleError
from napari_clipmed.models.registry import ModelSpec
from napari_clipmed.models.tokens import require_tokenizer_files

OPEN_CLIP_CONFIG = "open_clip_config.json"
TEXT_DIR = "text"  # a bundle's copy of the Hugging Face text tower's config.json and tokenizer files
TEXT_TOWER_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json",
                    "merges.txt", "special_tokens_map.json", "spiece.model", "tokenizer.model")


def is_open_clip_folder(path: Path) -> bool:
    return path.is_dir() and (path / OPEN_CLIP_CONFIG).is_file()


def read_open_clip_config(folder: Path) -> dict:
    """The folder's `open_clip_config.json` (with `model_cfg`); one clear error when it is unusable."""
    path = folder / OPEN_CLIP_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"the model folder {folder} lacks {OPEN_CLIP_CONFIG} (the architecture)") from None
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"cannot read {path}: {err}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise BundleError(f"{path} has no 'model_cfg' section: it is not an open_clip model config")
    return config


def hf_text_tower(model_cfg: dict) -> str | None:
    """The hub name of the model's Hugging Face text tower, or None for open_clip's own text transformer."""
    text_cfg = model_cfg.get("text_cfg", {})
    return text_cfg.get("hf_model_name") or text_cfg.get("hf_tokenizer_name") or None


def spec_from_folder(spec: ModelSpec, folder: Path) -> ModelSpec:
    """`spec` with architecture, preprocessing and tokenizer taken from the open_clip folder `folder`."""
    config = read_open_clip_config(folder)
    model_cfg = copy.deepcopy(config["model_cfg"])
    preprocess = config.get("preprocess_cfg", {}) or {}
    text_cfg = model_cfg.setdefault("text_cfg", {})
    vision_cfg = model_cfg.setdefault("vision_cfg", {})
    changes: dict = {}
    if hf_text_tower(model_cfg):
        text_dir = folder / TEXT_DIR
        what = f"model {spec.name!r} (folder {folder})"
        if not (text_dir / "config.json").is_file():
            raise BundleError(
                f"{what}: the text tower's config {text_dir / 'config.json'} is missing (the config.json of "
                f"{hf_text_tower(model_cfg)}); `clipmed models pull {spec.name} --to DIR` on a connected "
                "machine makes a complete bundle"
            )
        require_tokenizer_files(text_dir, what=what)
        text_cfg.update(hf_model_name=str(text_dir), hf_tokenizer_name=str(text_dir), hf_model_pretrained=False)
        changes["hf_tokenizer"] = str(text_dir)
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # the checkpoint holds every weight; never fetch timm's
    size = vision_cfg.get("image_size", spec.image_size)
    changes["image_size"] = int(size[0] if isinstance(size, (list, tuple)) else size)
    if "mean" in preprocess:
        changes["mean"] = tuple(float(v) for v in preprocess["mean"])
    if "std" in preprocess:
        changes["std"] = tuple(float(v) for v in preprocess["std"])
    if preprocess.get("resize_mode") == "squash":
        changes["resize"] = "squash"
    if preprocess.get("interpolation") in ("bicubic", "bilinear"):
        changes["interpolation"] = preprocess["interpolation"]
    return spec.with_changes(arch_config=model_cfg, **changes)
