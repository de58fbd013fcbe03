"""Scripted sessions: the widgets' operations as plain calls on a `napari.Viewer` and its layers.

Each function is the widget's route without the widget: snapshot the layer (`napari_clipmed.layers`),
build the operation's Request, run it (`napari_clipmed.ops`), add the Result's layer data. It is
synchronous and adds the same layers as the widget, so a script or notebook reproduces what a
user clicks::

    import napari
    from napari_clipmed import api

    viewer = napari.Viewer()
    (ct,) = viewer.open_sample("napari-clipmed", "chest_ct")
    api.load_model(viewer, "tiny-random")
    result = api.ct_montage(viewer, ct, k=9, patch_size_mm=30)
    print(result.probabilities)

The model is the viewer's session model (the one the widgets' model panels show).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    import napari
    import pandas as pd

    from napari_clipmed.models.model import ClipModel
    from napari_clipmed.ops.ct_montage import CTMontageOutput
    from napari_clipmed.ops.zeroshot import ZeroShotLabels
    from napari_clipmed.ops.qc import QcResult
    from napari_clipmed.retrieval import EmbeddingIndex

__all__ = ["load_model", "current_model", "ct_montage", "corrupt_layer", "zeroshot_labels", "retrieve",
           "slide_tissue", "slide_zeroshot", "quality_gate"]


def load_model(viewer: napari.Viewer, name: str, weights: str | os.PathLike[str] | None = None) -> ClipModel:
    """Load model `name` (optionally from checkpoint `weights`) as the viewer's session model."""
    from napari_clipmed.session import ModelChoice, session_for

    return session_for(viewer).load_now(ModelChoice(name, str(weights) if weights is not None else None))


def current_model(viewer: napari.Viewer) -> ClipModel:
    """The viewer's session model (InputError when none is loaded)."""
    from napari_clipmed.session import session_for

    return session_for(viewer).require()


def ct_montage(
    viewer: napari.Viewer,
    layer: Any,
    *,
    mask: Any = None,
    add_layers: bool = True,
    **fields: Any,
) -> CTMontageOutput:
    """Run the CT ILD montage on a 3-D Image layer (or its name) and add the montage and patch boxes layers.

    `fields` are the widget's: search ("exhaustive" or "coarse-to-fine"), patch_size_mm, stride_mm, k,
    min_distance_mm, patch_prompts, normal_classes, class_prompts (any prompt syntax, or "ILD vs no ILD" / "UIP vs other"),
    min_lung_fraction, batch_size. `mask` is an optional Labels layer or array (non-zero = lung).
    The source layer is not modified.
    """
    from napari_clipmed import layers
    from napari_clipmed.ops import ct_montage as op

    source = layers.layer_by_name(viewer, layer)
    volume = layers.volume_snapshot(source)
    lung = None if mask is None else layers.mask_snapshot(layers.layer_by_name(viewer, mask), volume.shape)
    request = op.CTMontageRequest.from_fields(volume, mask=lung, **fields)
    result = op.run(request, current_model(viewer))
    if add_layers:
        layers.add_layers(viewer, result.to_layer_data(layers.volume_geometry(source)))
    return result


# --- pathology ------------------------------------------------------------------------------------
def corrupt_layer(viewer: napari.Viewer, layer: Any, kind: str, severity: float, seed: int | None = 0) -> Any:
    """Add a corrupted copy of an RGB image layer (as the corruption explorer's preview); returns the new layer."""
    from napari_clipmed import layers
    from napari_clipmed.ops import corrupt as op

    source = layers.rgb_snapshot(layers.layer_by_name(viewer, layer))
    result = op.run(op.CorruptRequest(source, kind, severity, seed))
    (added,) = layers.add_layers(viewer, result.to_layer_data())
    return added


def zeroshot_labels(
    viewer: napari.Viewer,
    layer: Any,
    classes: Any = None,
    *,
    preset: str | None = None,
    templates: Any = None,
    tile_size: int = 224,
    stride: int | None = None,
    tissue_only: bool = True,
    shapes_layer: Any = None,
    quality_gate: bool = False,
    skip_failing: bool = False,
) -> ZeroShotLabels:
    """Label tiles of a 2-D image layer (or the rectangles of `shapes_layer`) with the session model.

    Classes come from `preset` (a bundled name or a YAML/JSON file) or from `classes` (any
    `PromptSet.parse` source: names, a dict name -> synonyms, class text), with optional
    `templates`. Adds one Shapes layer like the zero-shot widget's; returns the result (one row per box).
    `quality_gate` marks boxes failing the shipped quality gate; `skip_failing` leaves them unlabelled.
    """
    from napari_clipmed import layers
    from napari_clipmed.ops import zeroshot as op
    from napari_clipmed.zeroshot import PromptSet

    if (preset is None) == (classes is None):
        raise InputError("give either classes or a preset (not both)")
    prompts = PromptSet.parse(preset if preset is not None else classes, templates)
    source = layers.image_snapshot(layers.layer_by_name(viewer, layer))
    boxes = None if shapes_layer is None else layers.shapes_to_boxes(layers.layer_by_name(viewer, shapes_layer), source)
    request = op.ZeroShotRequest(source, prompts, boxes, tile_size=tile_size, stride=stride, tissue_only=tissue_only,
                                 quality_gate=quality_gate, skip_failing=skip_failing)
    result = op.run(request, current_model(viewer))
    layers.add_layers(viewer, result.to_layer_data(source.geometry))
    return result


def retrieve(
    viewer: napari.Viewer,
    layer: Any,
    index: EmbeddingIndex | str | os.PathLike[str],
    k: int = 8,
    *,
    shapes_layer: Any = None,
) -> pd.DataFrame:
    """Query a gallery index (an `EmbeddingIndex` or a saved ``.npz``) with an image layer, or the last
    rectangle drawn in `shapes_layer`, using the session model.

    Adds the hit grid (RGB Image, right of the query image) and its rank/label overlay (Shapes), as
    the retrieval widget does; returns the hits table (query, rank, index, path, label, similarity).
    """
    from napari_clipmed import layers
    from napari_clipmed.ops import retrieval as op

    source = layers.image_snapshot(layers.layer_by_name(viewer, layer))
    shapes = None if shapes_layer is None else layers.layer_by_name(viewer, shapes_layer)
    request = op.QueryRequest(op.load_index(index), (layers.query_region(source, shapes),), k)
    result = op.query(request, current_model(viewer))
    layers.add_layers(viewer, result.to_layer_data(source.geometry))
    return result.to_frame()


# --- whole slides (ops.slide_zeroshot; see docs/slides.md) ----------------------------------------
def slide_tissue(viewer: napari.Viewer, layer: Any, slide_mpp: float | None = None) -> Any:
    """Detect tissue (without glass and pen ink) on a slide layer; add it as an editable Labels layer (1 tissue, 2 ink)."""
    import numpy as np

    from napari_clipmed import layers
    from napari_clipmed.io.slide import open_slide
    from napari_clipmed.pathology.tissue import detect_tissue

    layer = layers.slide_layer(viewer, layer)
    with open_slide(layer.metadata["path"], mpp=slide_mpp) as slide:
        data, kwargs, _ = detect_tissue(slide).to_layer_data(slide.mpp, name=f"{layer.name} tissue")
    kwargs["translate"] = tuple(np.asarray(kwargs["translate"]) + np.asarray(layer.translate)[-2:])
    return viewer.add_labels(data, **kwargs)


def slide_zeroshot(
    viewer: napari.Viewer,
    layer: Any,
    classes: Any = None,
    *,
    preset: str | None = None,
    templates: list[str] | None = None,
    target_mpp: float = 0.5,
    tile: int = 224,
    min_tissue: float = 0.5,
    slide_mpp: float | None = None,
    top_j: int = 10,
    top_k: int = 5,
    tissue_layer: Any = None,
) -> Any:
    """Zero-shot over a whole slide layer at `target_mpp`: adds the heat maps and top tiles; returns the result.

    `tissue_layer` (from `slide_tissue`, possibly edited) replaces the automatic tissue detection.
    """
    import numpy as np

    from napari_clipmed import layers
    from napari_clipmed.ops.slide_common import SlideTiling
    from napari_clipmed.ops.slide_zeroshot import SlideZeroShotRequest, run
    from napari_clipmed.pathology.tissue import TissueMask

    if (preset is None) == (classes is None):
        raise InputError("give either classes or a preset (not both)")
    from napari_clipmed.zeroshot import PromptSet

    prompts = PromptSet.parse(preset if preset is not None else classes, templates)
    layer = layers.slide_layer(viewer, layer)
    tissue = None
    if tissue_layer is not None:
        labels = layers.layer_by_name(viewer, tissue_layer)
        tissue = TissueMask.from_labels(np.asarray(labels.data), labels.metadata["tissue_downsample"])
    tiling = SlideTiling(target_mpp, tile, min_tissue, slide_mpp, tissue=tissue)
    result = run(SlideZeroShotRequest(layer.metadata["path"], prompts, tiling, top_j, top_k), current_model(viewer))
    layers.add_layers(viewer, result.to_layer_data(layers.slide_geometry(layer)))
    return result


def quality_gate(
    viewer: napari.Viewer,
    layer: Any,
    *,
    tile_size: int = 224,
    stride: int | None = None,
    tissue_only: bool = False,
    gate: Any = None,
) -> QcResult:
    """Check the tiles of a 2-D image layer against a quality gate (the shipped one by default).

    Adds a Shapes layer of the tiles outlined green (passed) or red (failed), with the measures,
    `passed` and `reasons` in its features; returns the `ops.qc.QcResult` (docs/quality.md).
    """
    import numpy as np

    from napari_clipmed import layers
    from napari_clipmed.ops.layerdata import crop_boxes
    from napari_clipmed.ops.qc import QcRequest, run
    from napari_clipmed.ops.zeroshot import source_tiles
    from napari_clipmed.pathology.gate import load_gate

    source = layers.image_snapshot(layers.layer_by_name(viewer, layer))
    boxes = source_tiles(source, int(tile_size), int(stride or tile_size), tissue_only)
    result = run(QcRequest(tuple(crop_boxes(source.pixels, boxes, source.offset)), load_gate(gate),
                           coords=np.asarray(boxes)[:, :2], tile_size=int(tile_size)))
    layers.add_layers(viewer, [(data, {**kwargs, "name": f"{source.name} quality [{tile_size}px]"}, kind)
                               for data, kwargs, kind in result.to_layer_data(source.geometry)])
    return result
