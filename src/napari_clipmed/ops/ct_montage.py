"""The CT ILD patch montage as an operation: a validated request (volume, settings, optional lung
mask), the run (`ct.pipeline`), and its result as tables, files and napari layer data.

The run configuration is checked here, once, for every front end: the widget's fields, `api`
keyword arguments and the CLI's options all become a `CTMontageRequest`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.ct.io import CTVolume
from napari_clipmed.ct.pipeline import CTMontageConfig, CTMontageResult
from napari_clipmed.errors import InputError
from napari_clipmed.ops.geometry import Geometry
from napari_clipmed.ops.layerdata import LayerData
from napari_clipmed.progress import ProgressGenerator, run_generator
from napari_clipmed.zeroshot import PromptSource

if TYPE_CHECKING:
    import pandas as pd

    from napari_clipmed.models.model import ClipModel

# Montage-level class sets by display name (the widget's choices) -> preset key in ct.ild.ILD_CLASS_PRESETS
CLASS_SET_NAMES: dict[str, str] = {"ILD vs no ILD": "ild", "UIP vs other": "uip"}
BOX_COLOUR = "#FFB000"  # amber: visible on grey CT in any window


def ct_prompts(source: PromptSource) -> dict[str, tuple[str, ...]]:
    """Class -> phrasings from the one prompt syntax; the CT class sets by key (ild, uip) or display name."""
    from napari_clipmed.ct.ild import ILD_CLASS_PRESETS
    from napari_clipmed.zeroshot import PromptSet

    presets = {**ILD_CLASS_PRESETS, **{name: ILD_CLASS_PRESETS[key] for name, key in CLASS_SET_NAMES.items()}}
    return dict(PromptSet.parse(source, presets=presets).classes)


def check_config(cfg: CTMontageConfig) -> None:
    """One `InputError` for the first impossible setting of a run (volume-independent checks):
    types and ranges (`CTMontageConfig.check`), then what a montage needs."""
    cfg.check()
    if int(cfg.cell_size) < 8:
        raise InputError(f"montage cell size must be at least 8 px, got {cfg.cell_size}")
    if not cfg.patch_prompts:
        raise InputError("add at least one patch prompt (one finding per line)")
    missing = [c for c in cfg.normal_classes if c not in cfg.patch_prompts]
    if missing:
        raise InputError(f"normal class(es) {missing} are not among the patch prompts {list(cfg.patch_prompts)}")
    if len(cfg.class_prompts) < 2:
        raise InputError("the montage needs at least two classes to choose between (one per line)")


@dataclass(frozen=True, eq=False)
class CTMontageRequest:
    """One montage run: the volume, its settings and (optionally) a lung mask to use instead of the automatic one."""

    volume: CTVolume
    config: CTMontageConfig = CTMontageConfig()
    mask: np.ndarray | None = None  # bool, the volume's shape; None: `ct.lung.lung_mask`

    def __post_init__(self) -> None:
        from napari_clipmed.ct.patches import check_patch_config

        check_config(self.config)
        check_patch_config(self.config.patch, self.volume)
        if self.mask is not None:
            mask = np.asarray(self.mask) != 0
            if mask.shape != tuple(self.volume.shape):
                raise InputError(f"the lung mask has shape {mask.shape}, the CT volume {tuple(self.volume.shape)}")
            object.__setattr__(self, "mask", mask)

    @classmethod
    def from_fields(cls, volume: CTVolume, *, mask: np.ndarray | None = None, **fields: Any) -> CTMontageRequest:
        """The request from the widget's fields (also `api.ct_montage`'s keyword arguments, see `montage_config`)."""
        return cls(volume, montage_config(**fields), mask)


def montage_config(
    *,
    patch_size_mm: float = 32.0,
    stride_mm: float = 16.0,
    k: int = 16,
    min_distance_mm: float | None = None,
    patch_prompts: PromptSource | None = None,
    normal_classes: tuple[str, ...] | list[str] | str | None = None,
    class_prompts: PromptSource = "ILD vs no ILD",
    min_lung_fraction: float = 0.5,
    batch_size: int = 64,
    search: str = "exhaustive",
) -> CTMontageConfig:
    """A checked `CTMontageConfig` from the widget's fields (prompts in any `PromptSet.parse` syntax).

    `search`: "exhaustive" (every patch) or "coarse-to-fine" (`ct.search`, its default budget and rounds).
    """
    from napari_clipmed.ct.search import SearchConfig

    base = CTMontageConfig()
    prompts = ct_prompts(patch_prompts) if patch_prompts is not None else dict(base.patch_prompts)
    if isinstance(normal_classes, str):
        normal_classes = [n.strip() for n in normal_classes.split(",") if n.strip()]
    normals = tuple(normal_classes) if normal_classes is not None else tuple(
        c for c in base.normal_classes if c in prompts
    )
    if not patch_size_mm > 0 or not stride_mm > 0:
        raise InputError(f"patch size and stride must be positive (mm), got {patch_size_mm} and {stride_mm}")
    patch = replace(base.patch, size_mm=float(patch_size_mm), stride_mm=float(stride_mm),
                    min_lung_fraction=float(min_lung_fraction))
    cfg = replace(base, patch=patch, patch_prompts=prompts, normal_classes=normals, k=int(k),
                  min_distance_mm=None if min_distance_mm is None else float(min_distance_mm),
                  class_prompts=ct_prompts(class_prompts), batch_size=int(batch_size), search=SearchConfig(mode=search))
    check_config(cfg)
    return cfg


@dataclass(frozen=True, eq=False)
class CTMontageOutput:
    """A montage run's result (`ct.pipeline.CTMontageResult`, its attributes readable here) with its
    table, files and layer data."""

    result: CTMontageResult
    source_name: str = "CT"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.result, name)

    def to_frame(self) -> pd.DataFrame:
        """The montage cells in rank order (`patch_table`)."""
        return patch_table(self.result)

    def save(self, folder: str | os.PathLike[str]) -> dict[str, Path]:
        """montage.png, montage.csv, patches.csv, scores.json, config.json (atomically)."""
        return self.result.save(folder)

    def to_layer_data(self, geometry: Geometry) -> list[LayerData]:
        """The montage (RGB image, right of the volume) and the patch boxes (shapes on the volume)."""
        volume = geometry.last(3)
        image, image_kwargs = montage_image(self.result, volume, self.source_name)
        boxes, box_kwargs = patch_boxes(self.result, volume, self.source_name)
        r = self.result  # a coarse-to-fine round's partial result says so in both layers
        search = {"partial": bool(r.partial), "search_round": r.search_round, "max_rounds": r.max_rounds,
                  "patches_scored": r.patches_scored}
        for kwargs in (image_kwargs, box_kwargs):
            kwargs.setdefault("metadata", {}).update(search)
        return [(image, image_kwargs, "image"), (boxes, box_kwargs, "shapes")]

    def probability_table(self) -> list[tuple[str, float]]:
        """(class, probability) pairs, most probable first."""
        return sorted(self.result.probabilities.items(), key=lambda kv: -kv[1])


def iter_run(request: CTMontageRequest, model: ClipModel,
             scout_model: ClipModel | None = None) -> ProgressGenerator[CTMontageOutput]:
    """Lung mask, patches, scores, top k with 3-D NMS, montage, zero-shot classes (`ct.pipeline`).

    With the coarse-to-fine search a `ct.pipeline.MontageRound` (a Progress holding that round's
    partial `CTMontageResult`) follows every round; `scout_model` scores the coarse round.
    """
    from napari_clipmed.ct.pipeline import iter_run_ct_montage

    result = yield from iter_run_ct_montage(request.volume, model, request.config, request.mask, scout_model=scout_model)
    return CTMontageOutput(result, str(request.volume.source or "CT"))


def run(request: CTMontageRequest, model: ClipModel, scout_model: ClipModel | None = None) -> CTMontageOutput:
    """Plain-call twin of `iter_run`."""
    return run_generator(iter_run(request, model, scout_model))


def patch_table(result: CTMontageResult) -> Any:
    """The montage cells (rank order): provenance, score, per-finding probabilities, top finding, label."""
    frame = result.to_frame()
    classes = list(result.scores.classes)
    probs = result.scores.probabilities[result.chosen]
    normal = set(result.scores.normal_classes)
    abnormal = [j for j, c in enumerate(classes) if c not in normal] or list(range(len(classes)))
    top = [classes[abnormal[int(np.argmax(p[abnormal]))]] for p in probs]
    frame.insert(2, "prompt", top)
    frame["label"] = [f"#{r + 1} {p} {s:.2f}" for r, p, s in zip(frame["rank"], top, frame["score"])]
    return frame


def patch_boxes(
    result: CTMontageResult, geom: Geometry, source_name: str, name: str | None = None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Shapes layer data + kwargs: one rectangle per montage patch on its slice, over the source layer's voxels.

    Vertices are voxel coordinates (z, y, x) on pixel edges; the layer copies the source's
    scale and translate, so the rectangles sit on the patches in world (mm) coordinates.
    """
    from napari_clipmed.ct.patches import AXES

    frame = patch_table(result)
    rects = []
    for axis, sl, row, col, h, w in zip(frame["axis"], frame["slice"], frame["row"], frame["col"],
                                        frame["height_px"], frame["width_px"]):
        a = AXES.index(str(axis))
        in_plane = [ax for ax in range(3) if ax != a]
        corners = [(row - 0.5, col - 0.5), (row - 0.5, col + w - 0.5), (row + h - 0.5, col + w - 0.5),
                   (row + h - 0.5, col - 0.5)]
        verts = np.zeros((4, 3))
        verts[:, a] = sl
        verts[:, in_plane] = np.asarray(corners, dtype=float)
        rects.append(verts)
    kwargs: dict[str, Any] = {
        "name": name or f"{source_name} ILD patches",
        "shape_type": "rectangle",
        "features": frame,
        "face_color": "transparent",
        "edge_color": BOX_COLOUR,
        "edge_width": max(1.0, float(np.median(frame["width_px"])) / 16.0) if len(frame) else 1.0,
        "text": {"string": "{label}", "size": 9, "color": BOX_COLOUR, "anchor": "upper_left"},
        "scale": geom.scale,
        "translate": geom.translate,
        "metadata": {"probabilities": dict(result.probabilities), "prediction": result.prediction,
                     "source_layer": source_name, "model": result.model_name},
    }
    return rects, kwargs


def montage_image(
    result: CTMontageResult, geom: Geometry, source_name: str, name: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Image layer data + kwargs of the montage (RGB), placed right of the source volume at its height.

    metadata: `probabilities` and `prediction` (montage-level classes), `cells` (the patch table),
    `montage` (the core `Montage`, for `cell_at`), `source_layer`, `config`.
    """
    image = result.montage.image
    scale3 = np.asarray(geom.scale, dtype=float)
    translate3 = np.asarray(geom.translate, dtype=float)
    shape3 = np.asarray(geom.shape, dtype=float)
    height_world = shape3[1] * scale3[1]
    s = float(height_world / image.shape[0])
    left = translate3[2] + shape3[2] * scale3[2] + 0.05 * height_world
    kwargs: dict[str, Any] = {
        "name": name or f"{source_name} ILD montage",
        "rgb": True,
        "scale": (s, s),
        "translate": (float(translate3[1] - 0.5 * scale3[1]), float(left)),
        "metadata": {
            "probabilities": dict(result.probabilities),
            "prediction": result.prediction,
            "cells": patch_table(result),
            "montage": result.montage,
            "source_layer": source_name,
            "model": result.model_name,
            "config": result.config.to_dict(),
        },
    }
    return image, kwargs
