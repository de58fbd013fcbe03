"""CT volume -> lung mask -> patches -> CLIP scores -> top-k (3-D NMS) -> montage -> zero-shot ILD probabilities.

One generator (`iter_run_ct_montage`) runs the whole chain and returns a `CTMontageResult`,
which saves itself as montage PNG, patch and montage tables (CSV), scores and the run
config (JSON), each written atomically (`napari_clipmed.io.atomic`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
from napari_clipmed.ct.search import RoundScored, SearchConfig, SearchState, iter_search
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
    search: SearchConfig = field(default_factory=SearchConfig)  # exhaustive, or coarse-to-fine with its budget

    def check(self) -> CTMontageConfig:
        """Raise one `InputError` for a setting of the wrong type or range (before any work); return self."""
        check_patch_config(self.patch)
        labels = {"k": "k (patches in the montage)", "cell_size": "montage cell size", "pad": "pad", "batch_size": "batch size"}
        for name, label in labels.items():
            value, least = getattr(self, name), 0 if name == "pad" else 1
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
                raise InputError(f"{label} must be at least {least} (a whole number), got {value!r}")
        dist = self.min_distance_mm
        if dist is not None and (not isinstance(dist, (int, float)) or isinstance(dist, bool) or not np.isfinite(dist)
                                 or dist < 0):
            raise InputError(f"min_distance_mm must be a finite number of mm (0 or more), got {dist!r}")
        for key in ("patch_prompts", "class_prompts"):
            table = getattr(self, key)
            if not isinstance(table, dict) or not all(
                isinstance(k, str) and v and all(isinstance(p, str) for p in v) for k, v in table.items()
            ):
                raise InputError(f"{key} must map class names to phrases, got {table!r}")
        return self

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
        try:
            return cls._from_values(values).check()
        except (TypeError, ValueError, AttributeError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"CT montage settings of the wrong type or shape ({err})") from None

    @classmethod
    def _from_values(cls, values: dict) -> CTMontageConfig:
        for key in ("patch", "lung"):
            if key in values and not isinstance(values[key], dict):
                raise InputError(f"CT montage setting {key!r} must be a mapping, got {values[key]!r}")
        if "patch" in values and isinstance(values["patch"], dict):
            p = dict(values["patch"])
            p["axes"] = tuple(p.get("axes", ("axial",)))
            p["window"] = tuple(p.get("window", PatchConfig.window))
            if p.get("windows") is not None:
                p["windows"] = tuple(tuple(w) for w in p["windows"])
            values["patch"] = PatchConfig(**p)
        if "search" in values and isinstance(values["search"], dict):
            values["search"] = SearchConfig(**values["search"])
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
    precision: dict = field(default_factory=dict)  # ClipModel.precision_record: which precision and why
    # the search: which round scored each patch (0: never; exhaustive: all 1), and where it stands
    patch_round: np.ndarray | None = None
    scout_score: np.ndarray | None = None  # (N,) scout model scores (coarse-to-fine with a scout), NaN unscored
    scout_model: str | None = None
    search_round: int = 1
    max_rounds: int = 1
    stop_reason: str = "exhaustive"
    partial: bool = False  # an intermediate round's result (the search had not finished)

    @property
    def rounds(self) -> np.ndarray:
        """(N,) round in which the chosen model scored each patch; 0 = never scored."""
        return np.ones(len(self.patches), np.int64) if self.patch_round is None else self.patch_round

    @property
    def patches_scored(self) -> int:
        return int(np.count_nonzero(self.rounds))

    @property
    def prediction(self) -> str:
        return max(self.probabilities, key=self.probabilities.__getitem__)

    def to_frame(self):  # -> pandas.DataFrame
        """The montage cells (rank order) with their provenance and per-finding probabilities."""
        frame = self.montage.to_frame()
        probs = self.scores.to_frame().drop(columns="score").iloc[self.chosen].reset_index(drop=True)
        return frame.join(probs)

    def patches_frame(self):  # -> pandas.DataFrame
        """Every candidate patch: position, lung fraction, score, probabilities, montage rank, search round.

        Patches the search never scored have empty score, probabilities and round.
        """
        import pandas as pd

        frame = self.patches.to_frame().join(self.scores.to_frame())
        rank = np.full(len(self.patches), np.nan)
        rank[self.chosen] = np.arange(len(self.chosen))
        frame["montage_rank"] = rank
        frame["round"] = pd.array(np.where(self.rounds > 0, self.rounds, None), dtype="Int64")  # empty: unscored
        if self.scout_score is not None:
            frame["scout_score"] = self.scout_score
        return frame

    def summary(self) -> dict:
        return {
            "source": self.source,
            "model": self.model_name,
            "probabilities": self.probabilities,
            "prediction": self.prediction,
            "lung_volume_ml": round(self.lung_volume_ml, 1),
            "n_patches": len(self.patches),
            "patches_scored": self.patches_scored,
            "n_montage": len(self.chosen),
            "montage_scores": [float(s) for s in self.scores.score[self.chosen]],
            "mean_patch_score": float(np.mean(self.scores.score[self.rounds > 0])),
            "search": {
                "mode": self.config.search.mode, "rounds": self.search_round, "max_rounds": self.max_rounds,
                "stopped": self.stop_reason, "partial": self.partial,
                "scout_model": self.scout_model,
                "scout_patches_scored": 0 if self.scout_score is None else int(np.count_nonzero(~np.isnan(self.scout_score))),
            },
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
            "config.json": json.dumps({"model": self.model_name, "precision": self.precision, **self.config.to_dict()},
                                      indent=2).encode(),
        }
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return {name: atomic_write(out / name, data) for name, data in payloads.items()}


@dataclass(frozen=True)
class MontageRound(Progress):
    """A progress step that carries the montage after a coarse-to-fine round (`result.partial` until the end)."""

    result: CTMontageResult | None = None


def iter_run_ct_montage(
    volume: CTVolume,
    model: ClipModel,
    config: CTMontageConfig | None = None,
    mask: np.ndarray | None = None,
    scout_model: ClipModel | None = None,
) -> ProgressGenerator[CTMontageResult]:
    """The whole chain on one volume; yields Progress (lung mask, patches, each batch, montage, classes).

    Pass `mask` to use your own lung mask (e.g. edited in napari) instead of `lung_mask`. With
    `config.search.mode == "coarse-to-fine"` a `MontageRound` (a Progress with a partial result:
    top k so far, montage, probabilities) follows every search round; `scout_model` (loaded from
    `config.search.scout` when not given) scores the coarse round.
    """
    cfg = (config or CTMontageConfig()).check()
    check_patch_config(cfg.patch, volume)  # cheap checks before the lung mask
    if scout_model is None and cfg.search.scout is not None:
        from napari_clipmed.models.loader import load_model

        scout_model = load_model(cfg.search.scout, device=getattr(model, "device", None))
    yield Progress(0, 1, "lung mask")
    if mask is None:
        mask = lung_mask(volume, cfg.lung)
    elif np.shape(mask) != volume.shape:
        raise InputError(f"lung mask shape {np.shape(mask)} differs from the volume's {volume.shape}")
    patches = extract_patches(volume, mask, cfg.patch)
    lung_ml = float(np.count_nonzero(mask)) * volume.voxel_volume_ml

    def result_of(scores: PatchScores, chosen: np.ndarray, **search: object) -> CTMontageResult:
        montage = build_montage(patches, scores.score, chosen, pad=cfg.pad, cell_size=cfg.cell_size)
        probabilities = classify_montage(model, montage, cfg.class_prompts, cfg.class_templates)
        return CTMontageResult(config=cfg, model_name=model.identity, precision=model.precision_record, source=volume.source,
                               lung_volume_ml=lung_ml, patches=patches, scores=scores, chosen=chosen,
                               montage=montage, probabilities=probabilities, **search)  # type: ignore[arg-type]

    if cfg.search.mode == "coarse-to-fine":
        return (yield from _iter_coarse_to_fine(patches, model, cfg, scout_model, result_of))
    steps = len(patches) + 2
    yield Progress(0, steps, f"{len(patches)} patches")
    scores = yield from forward(
        iter_score_patches(model, patches, cfg.patch_prompts, cfg.patch_templates, cfg.normal_classes, cfg.batch_size),
        0, steps,
    )
    chosen = select_top_k(scores.score, patches, cfg.k, cfg.nms_distance_mm)
    yield Progress(len(patches) + 1, steps, "classifying the montage")
    result = result_of(scores, chosen)
    yield Progress(steps, steps, "done")
    return result


def _iter_coarse_to_fine(patches: Patches, model: ClipModel, cfg: CTMontageConfig, scout_model: ClipModel | None,
                         result_of: Any) -> ProgressGenerator[CTMontageResult]:
    """Drive `iter_search`, turning each finished round into a `MontageRound` with its partial result."""
    search = iter_search(patches, model, cfg.search, cfg.k, cfg.nms_distance_mm, cfg.patch_prompts,
                         cfg.patch_templates, cfg.normal_classes, cfg.batch_size, scout_model)
    scout_name = None if scout_model is None else scout_model.identity
    result: CTMontageResult | None = None
    while True:
        try:
            step = next(search)
        except StopIteration as stop:
            state: SearchState = stop.value
            break
        if isinstance(step, RoundScored) and step.state is not None:
            s = step.state
            yield Progress(step.done, step.total, f"round {s.round}: montage of the top {len(s.chosen)}")
            result = result_of(
                s.ranking(), s.chosen, patch_round=s.round_of, scout_model=scout_name,
                scout_score=None if s.scout is None else s.scout.score, search_round=s.round,
                max_rounds=step.max_rounds, stop_reason="", partial=True,
            )
            yield MontageRound(step.done, step.total, step.message, result=result)
        else:
            yield step
    assert result is not None  # iter_search yields a round before it can return
    return replace(result, partial=False, stop_reason=state.stop_reason)


def run_ct_montage(volume: CTVolume, model: ClipModel, config: CTMontageConfig | None = None,
                   mask: np.ndarray | None = None, scout_model: ClipModel | None = None) -> CTMontageResult:
    """Plain-call twin of `iter_run_ct_montage`."""
    return run_generator(iter_run_ct_montage(volume, model, config, mask, scout_model))
