"""Tokenizers from local files only, and the check that a prompt fits a model's context.

Every tokenizer napari-clipmed builds reads its files from a folder on disk (a bundle's
`text/` folder, a transformers model folder): none is ever fetched from the hub by name, so a
loaded model works offline. A missing file is one `BundleError` naming the folder and the file.

CLIP tokenizers truncate silently: a prompt longer than the model's context would be encoded
without its end. `check_context` refuses such a prompt instead, naming it and the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from napari_clipmed.errors import BundleError, InputError

# A Hugging Face tokenizer folder needs its settings (tokenizer_config.json, or the model's config.json,
# whose model_type names the tokenizer class) and at least one vocabulary file.
TOKENIZER_SETTINGS = ("tokenizer_config.json", "config.json")
VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "tokenizer.model", "vocab.json")


def require_tokenizer_files(folder: Path, *, what: str) -> None:
    """Raise `BundleError` naming `folder` and the missing file when it cannot hold a tokenizer."""
    if not folder.is_dir():
        raise BundleError(f"{what}: the tokenizer folder {folder} is missing")
    if not any((folder / name).is_file() for name in TOKENIZER_SETTINGS):
        raise BundleError(f"{what}: {folder} lacks {TOKENIZER_SETTINGS[0]} (the tokenizer's settings)")
    if not any((folder / name).is_file() for name in VOCABULARY_FILES):
        raise BundleError(
            f"{what}: {folder} lacks the tokenizer's vocabulary (one of {', '.join(VOCABULARY_FILES)})"
        )


def load_auto_tokenizer(folder: Path, *, what: str) -> object:
    """`transformers.AutoTokenizer` from `folder`, never from the hub."""
    require_tokenizer_files(folder, what=what)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as err:
        raise BundleError(f"{what}: cannot read the tokenizer in {folder} ({type(err).__name__}: {err})") from None


class PaddedTokenizer:
    """A Hugging Face tokenizer padded to the model's fixed context (what SigLIP was trained with)."""

    def __init__(self, tokenizer: object, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = int(context_length)

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tokenizer(  # type: ignore[operator]
            texts, padding="max_length", max_length=self.context_length, truncation=True, return_tensors="pt"
        )["input_ids"]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])  # type: ignore[operator]


def count_tokens(tokenizer: object, text: str) -> int | None:
    """Tokens `text` takes in `tokenizer` before truncation (start/end tokens included); None if unknown."""
    counter = getattr(tokenizer, "count_tokens", None)
    if callable(counter):
        return int(counter(text))
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    if isinstance(tokenizer, SimpleTokenizer) and tokenizer.reduction_fn is None:
        return len(tokenizer.encode(text)) + 2  # start and end of text
    if isinstance(tokenizer, HFTokenizer) and tokenizer.tokenizer_mode != "clips":
        return len(tokenizer.tokenizer(tokenizer.clean_fn(text))["input_ids"])
    return None


def check_context(tokenizer: object, texts: Sequence[str], *, model: str) -> None:
    """Raise `InputError` for the first text longer than the tokenizer's context (it would be cut)."""
    limit = getattr(tokenizer, "context_length", None)
    if not limit:
        return
    for text in texts:
        count = count_tokens(tokenizer, text)
        if count is not None and count > limit:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise InputError(
                f"the prompt {shown!r} is {count} tokens long, but model {model!r} reads at most {limit} "
                "(its context length); shorten it"
            )
