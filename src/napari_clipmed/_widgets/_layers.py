"""CT results <-> napari layers: pure functions shared by the CT montage widget and `napari_clipmed.api`.

No Qt here. Layers are read through `data`, `name`, `scale`, `translate`, `rgb`, `metadata`;
outputs are `(data, kwargs)` pairs for `viewer.add_shapes` / `viewer.add_image`.

Geometry rule: a layer's world coordinates are ``voxel * scale + translate`` (rotate, shear and
affine are ignored). The patch boxes copy the source layer's scale and translate, so they sit
exactly on its voxels; the montage is placed to the right of the volume, scaled to its height.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    from napari_clipmed.ct.io import CTVolume
    from napari_clipmed.ct.pipeline import CTMontageConfig, CTMontageResult

# Montage-level class sets offered in the widget: display name -> preset key in ct.ild.ILD_CLASS_PRESETS
CLASS_SET_NAMES: dict[str, str] = {"ILD vs no ILD": "ild", "UIP vs other": "uip"}
BOX_COLOUR = "#FFB000"  # amber: visible on grey CT in any window


@dataclass(frozen=True)
class VolumeGeometry:
    """What the output layers need of the source layer, read once on the GUI thread (a snapshot)."""

    name: str
    scale: tuple[float, float, float]
    translate: tuple[float, float, float]
    shape: tuple[int, int, int]

    @classmethod
    def of(cls, layer: Any) -> VolumeGeometry:
        if isinstance(layer, cls):
            return layer
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        return cls(
            name=str(layer.name),
            scale=tuple(float(v) for v in np.asarray(layer.scale)[-3:]),  # type: ignore[arg-type]
            translate=tuple(float(v) for v in np.asarray(layer.translate)[-3:]),  # type: ignore[arg-type]
            shape=tuple(int(n) for n in data.shape[-3:]),  # type: ignore[arg-type]
        )


# --- inputs ---------------------------------------------------------------------------------------
def volume_from_layer(layer: Any) -> CTVolume:
    """A `CTVolume` (a copy of the pixels) from a 3-D single-channel Image layer; spacing from its scale.

    Origin and direction come from the layer's metadata when the reader put them there (scanner
    coordinates in the tables), else from its translate. InputError for RGB, 2-D or 4-D layers.
    """
    from napari_clipmed.ct.io import IDENTITY_DIRECTION, CTVolume

    name = getattr(layer, "name", "layer")
    if getattr(layer, "rgb", False):
        raise InputError(f"layer '{name}' is an RGB image; the CT montage needs a CT volume in HU (one value per voxel)")
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if data.ndim != 3:
        raise InputError(
            f"layer '{name}' has {data.ndim} dimension(s) {tuple(data.shape)}; the CT montage needs a 3-D volume "
            "(z, y, x) - open the whole series or NIfTI file"
        )
    meta = getattr(layer, "metadata", {}) or {}
    spacing: tuple[float, ...] | None = tuple(float(s) for s in np.asarray(layer.scale)[-3:])
    if spacing == (1.0, 1.0, 1.0) and "spacing" not in meta:
        spacing = None  # a plain array: CTVolume notes that 1 mm is assumed
    translate = tuple(float(t) for t in np.asarray(layer.translate)[-3:])
    origin = tuple(meta.get("origin", translate[::-1]))
    direction = tuple(meta.get("direction", IDENTITY_DIRECTION))
    if "origin" in meta and not np.allclose(translate, tuple(meta["origin"])[::-1]):
        origin, direction = translate[::-1], IDENTITY_DIRECTION  # the layer was moved: trust what is shown
    return CTVolume.from_array(np.asarray(data), spacing=spacing, origin=origin, direction=direction, source=name)


def class_prompts_for(name_or_key: str) -> dict[str, tuple[str, ...]]:
    """The montage class prompts of a class set ("ILD vs no ILD", "UIP vs other", or a preset key)."""
    from napari_clipmed.ct.ild import ILD_CLASS_PRESETS

    key = CLASS_SET_NAMES.get(name_or_key, name_or_key)
    if key not in ILD_CLASS_PRESETS:
        known = ", ".join(list(CLASS_SET_NAMES) + list(ILD_CLASS_PRESETS))
        raise InputError(f"unknown class set {name_or_key!r}; choose one of: {known}")
    return {k: tuple(v) for k, v in ILD_CLASS_PRESETS[key].items()}


def montage_config(
    *,
    patch_size_mm: float = 32.0,
    stride_mm: float = 16.0,
    k: int = 16,
    min_distance_mm: float | None = None,
    patch_prompts: dict[str, Any] | None = None,
    normal_classes: tuple[str, ...] | list[str] | None = None,
    class_prompts: dict[str, Any] | str = "ILD vs no ILD",
    min_lung_fraction: float = 0.5,
    batch_size: int = 64,
) -> CTMontageConfig:
    """A `CTMontageConfig` from the widget's fields (InputError says which one is wrong)."""
    from napari_clipmed.ct.pipeline import CTMontageConfig

    if int(k) < 1:
        raise InputError(f"k (patches in the montage) must be at least 1, got {k}")
    if not patch_size_mm > 0 or not stride_mm > 0:
        raise InputError(f"patch size and stride must be positive (mm), got {patch_size_mm} and {stride_mm}")
    if min_distance_mm is not None and min_distance_mm < 0:
        raise InputError(f"minimum distance must be >= 0 mm, got {min_distance_mm}")
    base = CTMontageConfig()
    prompts = {n: (v,) if isinstance(v, str) else tuple(v) for n, v in (patch_prompts or base.patch_prompts).items()}
    if not prompts:
        raise InputError("add at least one patch prompt (one finding per line)")
    normals = tuple(normal_classes) if normal_classes is not None else tuple(
        c for c in base.normal_classes if c in prompts
    )
    missing = [c for c in normals if c not in prompts]
    if missing:
        raise InputError(f"normal class(es) {missing} are not among the patch prompts {list(prompts)}")
    classes = class_prompts_for(class_prompts) if isinstance(class_prompts, str) else {
        n: (v,) if isinstance(v, str) else tuple(v) for n, v in class_prompts.items()
    }
    if len(classes) < 2:
        raise InputError("the montage needs at least two classes to choose between (one per line)")
    patch = replace(base.patch, size_mm=float(patch_size_mm), stride_mm=float(stride_mm),
                    min_lung_fraction=float(min_lung_fraction))
    return replace(base, patch=patch, patch_prompts=prompts, normal_classes=normals, k=int(k),
                   min_distance_mm=None if min_distance_mm is None else float(min_distance_mm),
                   class_prompts=classes, batch_size=int(batch_size))


# --- outputs --------------------------------------------------------------------------------------
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


def patch_boxes(result: CTMontageResult, source: Any, name: str | None = None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Shapes layer data + kwargs: one rectangle per montage patch on its slice, over the source layer's voxels.

    Vertices are voxel coordinates (z, y, x) on pixel edges; the layer copies the source's
    scale and translate, so the rectangles sit on the patches in world (mm) coordinates.
    """
    from napari_clipmed.ct.patches import AXES

    geom = VolumeGeometry.of(source)
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
        "name": name or f"{geom.name} ILD patches",
        "shape_type": "rectangle",
        "features": frame,
        "face_color": "transparent",
        "edge_color": BOX_COLOUR,
        "edge_width": max(1.0, float(np.median(frame["width_px"])) / 16.0) if len(frame) else 1.0,
        "text": {"string": "{label}", "size": 9, "color": BOX_COLOUR, "anchor": "upper_left"},
        "scale": geom.scale,
        "translate": geom.translate,
        "metadata": {"probabilities": dict(result.probabilities), "prediction": result.prediction,
                     "source_layer": geom.name, "model": result.model_name},
    }
    return rects, kwargs


def montage_image(result: CTMontageResult, source: Any, name: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Image layer data + kwargs of the montage (RGB), placed right of the source volume at its height.

    metadata: `probabilities` and `prediction` (montage-level classes), `cells` (the patch table),
    `montage` (the core `Montage`, for `cell_at`), `source_layer`, `config`.
    """
    geom = VolumeGeometry.of(source)
    image = result.montage.image
    scale3 = np.asarray(geom.scale, dtype=float)
    translate3 = np.asarray(geom.translate, dtype=float)
    shape3 = np.asarray(geom.shape, dtype=float)
    height_world = shape3[1] * scale3[1]
    s = float(height_world / image.shape[0])
    left = translate3[2] + shape3[2] * scale3[2] + 0.05 * height_world
    kwargs: dict[str, Any] = {
        "name": name or f"{geom.name} ILD montage",
        "rgb": True,
        "scale": (s, s),
        "translate": (float(translate3[1] - 0.5 * scale3[1]), float(left)),
        "metadata": {
            "probabilities": dict(result.probabilities),
            "prediction": result.prediction,
            "cells": patch_table(result),
            "montage": result.montage,
            "source_layer": geom.name,
            "model": result.model_name,
            "config": result.config.to_dict(),
        },
    }
    return image, kwargs


def probability_table(result: CTMontageResult) -> list[tuple[str, float]]:
    """(class, probability) pairs, most probable first."""
    return sorted(result.probabilities.items(), key=lambda kv: -kv[1])


def montage_layers(result: CTMontageResult, source: Any) -> tuple[Any, Any]:
    """The patch boxes (Shapes) and montage (Image) as napari layer objects, not yet in a viewer.

    Building them (tables, triangulated rectangles, text) is the slow part, so the widget does it
    in its worker; only adding them to the viewer happens on the GUI thread.
    """
    from napari.layers import Image, Shapes

    data, kwargs = patch_boxes(result, source)
    image, image_kwargs = montage_image(result, source)
    return Shapes(data, **kwargs), Image(image, **image_kwargs)


def add_montage_layers(viewer: Any, result: CTMontageResult, source: Any,
                       layers: tuple[Any, Any] | None = None) -> tuple[Any, Any]:
    """Add the patch boxes and the montage for `result` of `source` (built now unless `layers` are given)."""
    boxes, montage = layers if layers is not None else montage_layers(result, source)
    viewer.add_layer(montage)
    viewer.add_layer(boxes)
    return boxes, montage


def patch_world_centre(table: Any, rank: int, source: Any) -> np.ndarray:
    """World (z, y, x) of the centre of montage patch `rank` in the source layer's coordinates."""
    row = table.iloc[int(rank)]
    voxel = np.array([row["z"], row["y"], row["x"]], dtype=float)
    return voxel * np.asarray(source.scale, dtype=float)[-3:] + np.asarray(source.translate, dtype=float)[-3:]


def camera_of(viewer: Any) -> Any:
    """The viewer's camera (`viewer.scene.camera` from napari 0.9, `viewer.camera` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def go_to_patch(viewer: Any, table: Any, rank: int, source: Any) -> np.ndarray:
    """Move the viewer's slider to patch `rank`'s slice and centre the camera on it; returns its world centre."""
    from napari_clipmed.ct.patches import AXES

    centre = patch_world_centre(table, rank, source)
    offset = viewer.dims.ndim - 3
    axis = AXES.index(str(table.iloc[int(rank)]["axis"]))
    viewer.dims.set_point(offset + axis, float(centre[axis]))
    displayed = list(viewer.dims.displayed)
    full = np.asarray(viewer.dims.point, dtype=float)
    full[offset:] = centre
    camera_of(viewer).center = tuple(full[displayed]) if len(displayed) == 3 else tuple(full[displayed[-2:]])
    return centre
