"""CT volume -> lung mask -> patches -> CLIP scores -> top-k (3-D NMS) -> montage -> zero-shot ILD probabilities.

One generator (`iter_run_ct_montage`) runs the whole chain and returns a `CTMontageResult`,
which saves itself as montage PNG, patch and montage tables (CSV), scores and the run
config (JSON), each written atomically (`napari_clipmed.io.atomic`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.ct.ild import (
    CLASS_TEMPLATES,
    ILD_CLASS_PRESETS,
    ILD_PATCH_PROMPTS,
    NORMAL_CLASSES,
    PATCH_TEMPLATES,
    PatchScores,
    classify_montage,
    iter_score_patches,
    select_top_k,
)
from napari_clipmed.ct.io import CTVolume
from napari_clipmed.ct.lung import LungMaskConfig, lung_mask
from napari_clipmed.ct.montage import Montage, build_montage
from napari_clipmed.ct.patches import PatchConfig, Patches, check_patch_config, extract_patches
from napari_clipmed.errors import InputError
from napari_clipmed.io.atomic import atomic_write
from napari_clipmed.progress import Progress, ProgressGenerator, forward, run_generator

if TYPE_CHECKING:
    from napari_clipmed.models.model import ClipModel


def _prompts(table: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in table.items()}


@dataclass(frozen=True)
class CTMontageConfig:
    """Every parameter of one run; saved next to its outputs (`config.json`)."""

    patch: PatchConfig = field(default_factory=PatchConfig)
    lung: LungMaskConfig = field(default_factory=LungMaskConfig)
    patch_prompts: dict[str, tuple[str, ...]] = field(default_factory=lambda: _prompts(ILD_PATCH_PROMPTS))
    patch_templates: tuple[str, ...] = PATCH_TEMPLATES
    normal_classes: tuple[str, ...] = NORMAL_CLASSES
    k: int = 16
    min_distance_mm: float | None = None  # None: the patch size (chosen patches barely overlap)
    class_prompts: dict[str, tuple[str, ...]] = field(default_factory=lambda: _prompts(ILD_CLASS_PRESETS["ild"]))
    class_templates: tuple[str, ...] = CLASS_TEMPLATES
    cell_size: int = 128
    pad: int = 2
    batch_size: int = 64

    @property
    def nms_distance_mm(self) -> float:
        return self.patch.size_mm if self.min_distance_mm is None else float(self.min_distance_mm)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CTMontageConfig:
        """Inverse of `to_dict` (lists become tuples); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown CT montage settings: {', '.join(sorted(unknown))}")
        values = dict(data)
        if "patch" in values and isinstance(values["patch"], dict):
            p = dict(values["patch"])
            p["axes"] = tuple(p.get("axes", ("axial",)))
            p["window"] = tuple(p.get("window", PatchConfig.window))
            if p.get("windows") is not None:
                p["windows"] = tuple(tuple(w) for w in p["windows"])
            values["patch"] = PatchConfig(**p)
        if "lung" in values and isinstance(values["lung"], dict):
            values["lung"] = LungMaskConfig(**values["lung"])
        for key in ("patch_prompts", "class_prompts"):
            if key in values:
                values[key] = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in values[key].items()}
        for key in ("patch_templates", "normal_classes", "class_templates"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(eq=False)
class CTMontageResult:
    """What one run produced: patches and their scores, the chosen ones, the montage, ILD probabilities."""

    config: CTMontageConfig
    model_name: str
    source: str | None
    lung_volume_ml: float
    patches: Patches
    scores: PatchScores
    chosen: np.ndarray  # (k,) patch indices, best first
    montage: Montage
    probabilities: dict[str, float]

    @property
    def prediction(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def to_frame(self):  # -> pandas.DataFrame
        """The montage cells (rank order) with their provenance and per-finding probabilities."""
        frame = self.montage.to_frame()
        probs = self.scores.to_frame().drop(columns="score").iloc[self.chosen].reset_index(drop=True)
        return frame.join(probs)

    def patches_frame(self):  # -> pandas.DataFrame
        """Every candidate patch: position, lung fraction, score, probabilities, montage rank (or empty)."""
        frame = self.patches.to_frame().join(self.scores.to_frame())
        rank = np.full(len(self.patches), np.nan)
        rank[self.chosen] = np.arange(len(self.chosen))
        frame["montage_rank"] = rank
        return frame

    def summary(self) -> dict:
        return {
            "source": self.source,
            "model": self.model_name,
            "probabilities": self.probabilities,
            "prediction": self.prediction,
            "lung_volume_ml": round(self.lung_volume_ml, 1),
            "n_patches": len(self.patches),
            "n_montage": len(self.chosen),
            "montage_scores": [float(s) for s in self.scores.score[self.chosen]],
            "mean_patch_score": float(np.mean(self.scores.score)),
        }

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write montage.png, montage.csv, patches.csv, scores.json, config.json into `out_dir`.

        Everything is rendered in memory first, so an error leaves no file behind; each file
        then appears complete or not at all.
        """
        import io

        from PIL import Image

        png = io.BytesIO()
        Image.fromarray(self.montage.image).save(png, format="PNG")
        payloads = {
            "montage.png": png.getvalue(),
            "montage.csv": self.to_frame().to_csv(index=False).encode(),
            "patches.csv": self.patches_frame().to_csv(index=False).encode(),
            "scores.json": json.dumps(self.summary(), indent=2).encode(),
            "config.json": json.dumps({"model": self.model_name, **self.config.to_dict()}, indent=2).encode(),
        }
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return {name: atomic_write(out / name, data) for name, data in payloads.items()}


def iter_run_ct_montage(
    volume: CTVolume,
    model: ClipModel,
    config: CTMontageConfig | None = None,
    mask: np.ndarray | None = None,
) -> ProgressGenerator[CTMontageResult]:
    """The whole chain on one volume; yields Progress (lung mask, patches, each batch, montage, classes).

    Pass `mask` to use your own lung mask (e.g. edited in napari) instead of `lung_mask`.
    """
    cfg = config or CTMontageConfig()
    if cfg.k < 1:
        raise InputError(f"k must be at least 1, got {cfg.k}")
    check_patch_config(cfg.patch, volume)  # cheap checks before the lung mask
    yield Progress(0, 1, "lung mask")
    if mask is None:
        mask = lung_mask(volume, cfg.lung)
    elif np.shape(mask) != volume.shape:
        raise InputError(f"lung mask shape {np.shape(mask)} differs from the volume's {volume.shape}")
    patches = extract_patches(volume, mask, cfg.patch)
    steps = len(patches) + 2
    yield Progress(0, steps, f"{len(patches)} patches")
    scores = yield from forward(
        iter_score_patches(model, patches, cfg.patch_prompts, cfg.patch_templates, cfg.normal_classes, cfg.batch_size),
        0, steps,
    )
    chosen = select_top_k(scores.score, patches, cfg.k, cfg.nms_distance_mm)
    montage = build_montage(patches, scores.score, chosen, pad=cfg.pad, cell_size=cfg.cell_size)
    yield Progress(len(patches) + 1, steps, "classifying the montage")
    probabilities = classify_montage(model, montage, cfg.class_prompts, cfg.class_templates)
    yield Progress(steps, steps, "done")
    return CTMontageResult(
        config=cfg,
        model_name=model.identity,
        source=volume.source,
        lung_volume_ml=float(np.count_nonzero(mask)) * volume.voxel_volume_ml,
        patches=patches,
        scores=scores,
        chosen=chosen,
        montage=montage,
        probabilities=probabilities,
    )


def run_ct_montage(volume: CTVolume, model: ClipModel, config: CTMontageConfig | None = None,
                   mask: np.ndarray | None = None) -> CTMontageResult:
    """Plain-call twin of `iter_run_ct_montage`."""
    return run_generator(iter_run_ct_montage(volume, model, config, mask))
