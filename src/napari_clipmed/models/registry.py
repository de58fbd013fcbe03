"""Named CLIP models as data: architecture, preprocessing, tokenizer, weight source, licence.

The registry holds no model objects, only frozen specs; `loader.load_model` turns a
spec into a running model. Add a model with `register_model(ModelSpec(...))`, or ship a backend
package that registers its models through the `napari_clipmed.backends` entry point group
(see `models.backends`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from napari_clipmed.errors import ClipmedError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

WeightsFormat = Literal["open_clip", "hf_clip", "hf_siglip", "none"]
Scoring = Literal["softmax", "sigmoid"]
Resize = Literal["crop", "squash"]


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
    gated: bool = False
    backend: str = "open_clip"
    scoring: Scoring = "softmax"
    resize: Resize = "crop"
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    trusted_pickle: bool = False
    training_mpp: float | None = None
    training_magnification: str | None = None
    resolution_source: str = ""
    hf_tokenizer: str | None = None  # a local Hugging Face tokenizer folder (set when loading a bundle)

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

# The architecture of a model published as an open_clip folder (open_clip_config.json + weights,
# e.g. on the hub as hf-hub:ORG/REPO): read from that folder (a bundle), not from open_clip's list.
FOLDER_ARCH = "from-bundle"

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
        name="quiltnet-b-16",
        arch="ViT-B-16",
        description="QuiltNet-B-16: open_clip ViT-B/16 trained on Quilt-1M histopathology videos.",
        weights_file="quiltnet-b-16.bin",
        hub_id="hf-hub:wisdomik/QuiltNet-B-16",
        licence="MIT (model card)",
    ),
    ModelSpec(
        name="quiltnet-b-16-pmb",
        arch=FOLDER_ARCH,
        description="QuiltNet-B-16-PMB: ViT-B/16 with a PubMedBERT text tower (256 tokens), trained on Quilt-1M.",
        weights_file="quiltnet-b-16-pmb",
        hub_id="hf-hub:wisdomik/QuiltNet-B-16-PMB",
        licence="MIT (model card)",
    ),
    ModelSpec(
        name="biomedclip",
        arch=FOLDER_ARCH,
        description="BiomedCLIP: timm ViT-B/16 with a PubMedBERT text tower (256 tokens), trained on "
        "PMC-15M figure-caption pairs (radiology, microscopy, histology...). Works for CT as well.",
        weights_file="biomedclip",
        hub_id="hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
        licence="MIT (model card)",
    ),
    ModelSpec(
        name="pathgen-clip",
        arch="ViT-B-16",
        description="PathGen-CLIP: open_clip ViT-B/16 trained on PathGen-1.6M (TCGA patches with generated captions).",
        weights_file="pathgenclip.pt",
        hub_id="hf-file:jamessyx/pathgenclip/pathgenclip.pt",
        gated=True,
        licence="research use (gated; see the PathGen-CLIP model card)",
    ),
    ModelSpec(
        name="omiclip",
        arch="coca_ViT-L-14",
        description="OmiCLIP (Loki): open_clip CoCa ViT-L/14 trained on H&E images paired with spatial "
        "transcriptomics gene sentences.",
        weights_file="omiclip.pt",
        hub_id="hf-file:WangGuangyuLab/Loki/checkpoint.pt",
        trusted_pickle=True,
        licence="see the Loki release (model card)",
    ),
    ModelSpec(
        name="medsiglip",
        arch="siglip-so400m-448",
        description="MedSigLIP-448: Google's SigLIP (400M vision + 400M text) trained on medical images "
        "(radiology, CT/MRI slices, pathology, dermatology, ophthalmology); sigmoid scores, 64 tokens.",
        image_size=448,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        weights_file="medsiglip",
        hub_id="hf:google/medsiglip-448",
        weights_format="hf_siglip",
        backend="hf_siglip",
        scoring="sigmoid",
        resize="squash",
        interpolation="bilinear",
        gated=True,
        licence="Health AI Developer Foundations terms of use (gated)",
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


def _discover_backends() -> dict[str, str]:
    """Let backend plug-ins (entry points) register their models; returns the ones that failed."""
    from napari_clipmed.models.backends import broken_backends

    return broken_backends()


def list_models() -> list[str]:
    """Names of the registered models, in registration order (plug-in backends' models included)."""
    _discover_backends()
    return list(MODELS)


def get_spec(name: str | ModelSpec) -> ModelSpec:
    """The spec registered under `name` (a spec passes through unchanged)."""
    if isinstance(name, ModelSpec):
        return name
    broken = _discover_backends()
    try:
        return MODELS[name]
    except KeyError:
        failed = "".join(f"; {reason}" for reason in broken.values())
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(MODELS)}{failed}") from None


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Add `spec` to the registry (e.g. a site-specific checkpoint)."""
    if spec.name in MODELS and not overwrite:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    MODELS[spec.name] = spec
    return spec
