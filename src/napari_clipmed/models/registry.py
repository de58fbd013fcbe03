"""Named CLIP models as data: architecture, preprocessing, tokenizer, weight source, licence.

The registry holds no model objects, only frozen specs; `loader.load_model` turns a
spec into a running model. Add a model with `register_model(ModelSpec(...))`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from napari_clipmed.errors import ClipmedError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

WeightsFormat = Literal["open_clip", "hf_clip", "none"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to build, feed and find the weights of one CLIP model.

    `weights_file` is the file (or folder) name looked for in the weights folder;
    `hub_id` says where to download it when online: ``open_clip:ARCH:TAG`` (an open_clip
    pretrained tag), ``hf-hub:ORG/REPO`` (an open_clip checkpoint on the Hugging Face hub) or
    ``hf:ORG/REPO`` (a Hugging Face `CLIPModel`, converted on load).
    `arch_config` is an open_clip model config dict for architectures open_clip does not
    ship (tiny test models, DAPT checkpoints); it is registered with open_clip on load.
    """

    name: str
    arch: str
    description: str
    image_size: int = 224
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD
    tokenizer: str | None = None  # open_clip tokenizer name; defaults to `arch`
    weights_file: str | None = None
    hub_id: str | None = None
    weights_format: WeightsFormat = "open_clip"
    licence: str = ""
    arch_config: dict | None = field(default=None, compare=False, hash=False)
    needs_weights: bool = True  # False: random initialisation is the intended state (tests, demos)
    seed: int = 0  # initialisation seed for models that need no weights

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.arch

    def with_changes(self, **changes: object) -> ModelSpec:
        return replace(self, **changes)  # type: ignore[arg-type]


# A 2-layer, width-64 CLIP: small enough to run everywhere in milliseconds. Its weights are
# random (seeded), so its predictions mean nothing: it exists to exercise pipelines end to end.
TINY_ARCH = "clipmed-tiny"
TINY_ARCH_CONFIG: dict = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

_BUILTIN: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="openai-vit-b-16",
        arch="ViT-B-16-quickgelu",
        tokenizer="ViT-B-16",
        description="OpenAI CLIP ViT-B/16 (general domain).",
        weights_file="openai-vit-b-16.pt",
        hub_id="open_clip:ViT-B-16-quickgelu:openai",
        licence="MIT (OpenAI CLIP)",
    ),
    ModelSpec(
        name="openai-vit-b-32",
        arch="ViT-B-32-quickgelu",
        tokenizer="ViT-B-32",
        description="OpenAI CLIP ViT-B/32 (general domain).",
        weights_file="openai-vit-b-32.pt",
        hub_id="open_clip:ViT-B-32-quickgelu:openai",
        licence="MIT (OpenAI CLIP)",
    ),
    ModelSpec(
        name="plip",
        arch="ViT-B-32-quickgelu",
        tokenizer="ViT-B-32",
        description="PLIP: CLIP ViT-B/32 fine-tuned on pathology image-text pairs from Twitter (OpenPath).",
        weights_file="plip",
        hub_id="hf:vinid/plip",
        weights_format="hf_clip",
        licence="research use only (see the PLIP model card)",
    ),
    ModelSpec(
        name="pathclip",
        arch="ViT-B-16-quickgelu",
        tokenizer="ViT-B-16",
        description="PathCLIP: open_clip ViT-B/16 (QuickGELU) trained on pathology image-caption pairs.",
        weights_file="pathclip-base.pt",
        hub_id=None,
        licence="research use only (see the PathCLIP release)",
    ),
    ModelSpec(
        name="quiltnet-b-32",
        arch="ViT-B-32",
        description="QuiltNet-B-32: open_clip ViT-B/32 trained on Quilt-1M histopathology videos.",
        weights_file="quiltnet-b-32.bin",
        hub_id="hf-hub:wisdomik/QuiltNet-B-32",
        licence="MIT (Quilt-1M); research use",
    ),
    ModelSpec(
        name="local",
        arch="ViT-B-16",
        description="Any open_clip architecture with a checkpoint file you name "
        "(e.g. one trained by `clipmed dapt`; its architecture is read from the file).",
        weights_file=None,
        hub_id=None,
        licence="as the checkpoint's",
    ),
    ModelSpec(
        name="tiny-random",
        arch=TINY_ARCH,
        tokenizer="ViT-B-32",
        description="A tiny randomly initialised CLIP for testing pipelines; its predictions are meaningless.",
        image_size=64,
        arch_config=TINY_ARCH_CONFIG,
        needs_weights=False,
        weights_format="none",
        licence="n/a",
    ),
)

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _BUILTIN}


class UnknownModelError(ClipmedError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def list_models() -> list[str]:
    """Names of the registered models, in registration order."""
    return list(MODELS)


def get_spec(name: str | ModelSpec) -> ModelSpec:
    """The spec registered under `name` (a spec passes through unchanged)."""
    if isinstance(name, ModelSpec):
        return name
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}"
        ) from None


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add `spec` to the registry (e.g. a site-specific checkpoint)."""
    if spec.name in MODELS and not overwrite:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec
