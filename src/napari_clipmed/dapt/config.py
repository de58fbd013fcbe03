"""`DaptConfig`: every knob of a DAPT run, validated once, saved next to the run's outputs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from napari_clipmed.errors import InputError

TrainPrecision = Literal["auto", "fp32", "fp16", "bf16"]

DEFAULT_TEMPLATES: tuple[str, ...] = ("a CT image of {}.",)

# Fields that may change between an interrupted run and its resumption without changing the result.
RESUMABLE_CHANGES: frozenset[str] = frozenset({"save_every"})


@dataclass(frozen=True)
class DaptConfig:
    """Hyper-parameters of contrastive domain-adaptive pretraining.

    `batch_size` is the micro-batch that goes through the network at once; the contrastive
    batch (the negatives each pair sees) is `batch_size * grad_accum_steps`, and gradient
    accumulation reproduces that large batch's gradient exactly (see `dapt.step`).
    Defaults suit fine-tuning a pretrained CLIP; a model trained from scratch wants `lr` ~1e-3.
    """

    epochs: int = 5
    batch_size: int = 32
    grad_accum_steps: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 50
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    precision: TrainPrecision = "auto"  # half precision applies on CUDA only; fp32 elsewhere
    seed: int = 0
    save_every: int = 1  # epochs between checkpoints (the last epoch is always saved)
    val_fraction: float = 0.1  # ignored when the manifest has a `split` column
    lock_image: bool = False  # LiT: keep the image tower fixed, train the text side
    lock_text: bool = False  # keep the text tower fixed, train the image side
    templates: tuple[str, ...] = DEFAULT_TEMPLATES  # label -> caption, and zero-shot validation prompts
    augment: bool = False  # light image augmentation: random crop (80-100% area) and horizontal flip
    text_temperature: float = 0.05  # text-only objective: fixed temperature of the sentence-view InfoNCE

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", tuple(self.templates))
        problems = []
        for name in ("epochs", "grad_accum_steps", "save_every"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.batch_size < 2:
            problems.append(f"batch_size must be at least 2 for a contrastive loss (got {self.batch_size})")
        if not self.lr > 0:
            problems.append(f"lr must be positive (got {self.lr})")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            problems.append("weight_decay and warmup_steps cannot be negative")
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0 and self.eps > 0):
            problems.append("AdamW needs 0 <= beta1, beta2 < 1 and eps > 0")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1) (got {self.val_fraction})")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            problems.append(f"precision must be auto, fp32, fp16 or bf16 (got {self.precision!r})")
        if self.lock_image and self.lock_text:
            problems.append("lock_image and lock_text together leave nothing to train")
        if not self.templates or any("{}" not in t for t in self.templates):
            problems.append(f"every template needs a {{}} where the label goes (got {list(self.templates)})")
        if not self.text_temperature > 0:
            problems.append("text_temperature must be positive")
        if problems:
            raise InputError("invalid DAPT settings: " + "; ".join(problems))

    @property
    def effective_batch(self) -> int:
        """Pairs per optimizer step (the contrastive batch)."""
        return self.batch_size * self.grad_accum_steps

    def to_dict(self) -> dict:
        data = asdict(self)
        data["templates"] = list(self.templates)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> DaptConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown DAPT settings: {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other: DaptConfig) -> list[str]:
        """Names of the fields (other than `RESUMABLE_CHANGES`) whose values differ."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k]]
