"""Convert Hugging Face `CLIPModel` checkpoints (e.g. PLIP) to open_clip state dicts.

The two implementations hold the same weights under different names; the only real
changes are that open_clip keeps q/k/v as one packed projection and stores the two output
projections transposed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from napari_clipmed.errors import CheckpointError

_TOWER_RENAMES: tuple[tuple[str, str], ...] = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)
_DIRECT: dict[str, str] = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "logit_scale": "logit_scale",
}
_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")


def is_hf_clip_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """True when the keys are those of a Hugging Face `CLIPModel`."""
    return any(k.startswith("vision_model.") for k in state_dict) and any(
        k.startswith("text_model.") for k in state_dict
    )


def convert_hf_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename and repack a Hugging Face `CLIPModel` state dict into open_clip's `CLIP` layout."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.endswith("position_ids"):
            continue  # a buffer open_clip does not keep
        if key in _DIRECT:
            out[_DIRECT[key]] = value
        elif key == "visual_projection.weight":
            out["visual.proj"] = value.T.contiguous()
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif match := _LAYER.match(key):
            tower, index, rest = match.groups()
            prefix = f"{'visual.' if tower == 'vision' else ''}transformer.resblocks.{index}."
            proj = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if proj:
                qkv.setdefault((prefix, proj.group(2)), {})[proj.group(1)] = value
                continue
            for old, new in _TOWER_RENAMES:
                if rest.startswith(old):
                    out[prefix + new + rest[len(old):]] = value
                    break
            else:
                raise CheckpointError(f"unexpected key in Hugging Face CLIP checkpoint: {key}")
        else:
            raise CheckpointError(f"unexpected key in Hugging Face CLIP checkpoint: {key}")
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise CheckpointError(f"incomplete attention projection under {prefix} (have {sorted(parts)})")
        packed = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"{prefix}attn.in_proj_{kind}"] = packed
    return out


def hf_config_to_open_clip(config: dict) -> dict:
    """An open_clip model config (for `open_clip.CLIP(**cfg)`) from a Hugging Face `CLIPConfig` dict."""
    vision, text = config["vision_config"], config["text_config"]

    def tower(cfg: dict) -> dict:
        width = cfg.get("hidden_size", 768)
        return {
            "width": width,
            "layers": cfg.get("num_hidden_layers", 12),
            "mlp_ratio": cfg.get("intermediate_size", 4 * width) / width,
        }

    vwidth = vision.get("hidden_size", 768)
    twidth = text.get("hidden_size", 512)
    vision_cfg = tower(vision) | {
        "image_size": vision.get("image_size", 224),
        "patch_size": vision.get("patch_size", 32),
        "head_width": vwidth // vision.get("num_attention_heads", 12),
    }
    text_cfg = tower(text) | {
        "context_length": text.get("max_position_embeddings", 77),
        "vocab_size": text.get("vocab_size", 49408),
        "heads": text.get("num_attention_heads", twidth // 64),
    }
    act = vision.get("hidden_act", "quick_gelu")
    return {
        "embed_dim": config.get("projection_dim", 512),
        "quick_gelu": act == "quick_gelu",
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }


def read_hf_config(folder: Path) -> dict | None:
    """The `config.json` of a Hugging Face model folder, if there is one."""
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from None
