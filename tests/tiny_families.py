"""Tiny randomly initialised models of each native family, saved the way their authors publish them.

- timm trunk + Hugging Face BERT text tower (BiomedCLIP, QuiltNet-B-16-PMB): an open_clip folder
  (open_clip_config.json naming the text tower by hub id, open_clip_pytorch_model.bin) plus the
  BERT config and tokenizer in `text/`, as a bundle holds them; the BERT is built with transformers
  from a local config and a vocabulary written here.
- CoCa (OmiCLIP): the same open_clip folder layout, and a training checkpoint that needs
  ``weights_only=False`` (it pickles an argparse Namespace), as OmiCLIP's is.
- SigLIP (MedSigLIP): a transformers `SiglipModel` folder from `save_pretrained`, with a tokenizer
  and image processor written here.

Each builder also returns what the reference library loads (open_clip's ``local-dir:`` folder with
the text tower's path made local, or the transformers model itself).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
WORDS = ["a", "an", "image", "of", "tumor", "necrosis", "normal", "tissue", "the", "h", "&", "e", "histopathology", "stroma", ".", "lung", "ct", "scan", "fibrosis", "honeycombing", "ground", "glass", "opacity", "emphysema", "benign", "malignant"]
BERT_HUB_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Make every tensor non-trivial (fresh models have zero biases and unit norms)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))


def write_bert_tower(folder: Path) -> None:
    """A 2-layer, width-32 BERT config and a WordPiece tokenizer over `WORDS`, as the hub holds them."""
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    ).save_pretrained(folder)
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)


def _write_config(folder: Path, model_cfg: dict) -> None:
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))


def _reference_folder(published: Path, ref: Path, model_cfg: dict) -> None:
    """open_clip's `local-dir:` folder: same weights; the text tower (if any) named by its local path."""
    ref.mkdir(parents=True)
    local = copy.deepcopy(model_cfg)
    text = published / "text"
    if text.is_dir():
        local["text_cfg"].update(hf_model_name=str(text), hf_tokenizer_name=str(text))
        for file in text.iterdir():  # open_clip's local-dir tokenizer reads the folder itself
            if file.name != "config.json":
                shutil.copy(file, ref / file.name)
    _write_config(ref, local)
    shutil.copy(published / "open_clip_pytorch_model.bin", ref / "open_clip_pytorch_model.bin")


def _publish(root: Path, model_cfg: dict, seed: int, extra_state: dict | None = None) -> tuple[Path, Path]:
    """Build `model_cfg` randomly with open_clip, save it as published; returns (published, reference)."""
    import open_clip

    published, ref = root / "published", root / "reference"
    published.mkdir(parents=True)
    _write_config(published, model_cfg)
    if "hf_model_name" in model_cfg["text_cfg"]:
        write_bert_tower(published / "text")
    build = root / "build"
    build.mkdir()
    local = copy.deepcopy(model_cfg)
    if (published / "text").is_dir():
        local["text_cfg"].update(hf_model_name=str(published / "text"), hf_tokenizer_name=str(published / "text"))
    _write_config(build, local)
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{build}", pretrained_text=False)
    _perturb(model, seed)
    state = model.state_dict() | (extra_state or {})
    torch.save(state, published / "open_clip_pytorch_model.bin")
    _reference_folder(published, ref, model_cfg)
    return published, ref


def biomedclip_like(root: Path) -> tuple[Path, Path]:
    """timm ViT trunk + BERT text tower (BiomedCLIP's layout: hub id in the config, weights in one .bin)."""
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": {"hf_model_name": BERT_HUB_ID, "hf_tokenizer_name": BERT_HUB_ID, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }
    # BiomedCLIP's published checkpoint still carries BERT's position_ids buffer (older transformers).
    stale = {"text.transformer.embeddings.position_ids": torch.arange(64)[None]}
    return _publish(root, model_cfg, seed=1, extra_state=stale)


COCA_CFG: dict = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16,
                   "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
    "text_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 76, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                       "attn_pooler_heads": 2},
    "custom_text": True,
}


def coca(root: Path) -> tuple[Path, Path]:
    """A 1-layer CoCa in the open_clip folder layout."""
    return _publish(root, copy.deepcopy(COCA_CFG), seed=2)


def omiclip_checkpoint(published: Path, path: Path) -> Path:
    """OmiCLIP's published form: an open_clip training checkpoint (``module.`` keys, pickled args)."""
    state = torch.load(published / "open_clip_pytorch_model.bin", weights_only=True)
    payload = {"epoch": 10, "name": "omiclip", "args": argparse.Namespace(model="coca_ViT-L-14", lr=1e-5),
               "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(payload, path)
    return path


def siglip(root: Path, seed: int = 3):
    """A tiny `transformers.SiglipModel` saved with save_pretrained, tokenizer and image processor beside it."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = root / "medsiglip"
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    config = transformers.SiglipConfig(
        text_config={"vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "max_position_embeddings": 16, "pad_token_id": 0, "eos_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                           "image_size": 32, "patch_size": 8},
    )
    torch.manual_seed(seed)
    model = transformers.SiglipModel(config).eval()
    _perturb(model, seed)
    model.save_pretrained(folder)
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers.processors import TemplateProcessing

    core.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>",
                                                     unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3,
                                      image_std=[0.5] * 3).save_pretrained(folder)
    return folder, model, tokenizer
