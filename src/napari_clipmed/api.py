"""Scripted sessions: the widgets' operations as plain calls on a `napari.Viewer` and its layers.

Each function runs the same core code as its widget, synchronously, and adds the same layers
(through the shared result -> layer helpers), so a script or notebook reproduces what a user
clicks::

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

import numpy as np

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    import napari

    from napari_clipmed.ct.pipeline import CTMontageResult
    from napari_clipmed.models.model import ClipModel
    from napari_clipmed.ops.qc import QcResult
    from napari_clipmed.retrieval import EmbeddingIndex
    from napari_clipmed.zeroshot import ZeroShotResult

__all__ = ["load_model", "current_model", "ct_montage", "corrupt_layer", "zeroshot_labels", "retrieve",
           "slide_tissue", "slide_zeroshot", "quality_gate"]


def load_model(viewer: napari.Viewer, name: str, weights: str | os.PathLike[str] | None = None) -> ClipModel:
    """Load model `name` (optionally from checkpoint `weights`) as the viewer's session model."""
    from napari_clipmed._widgets._session import ModelChoice, session_for

    return session_for(viewer).load_now(ModelChoice(name, str(weights) if weights is not None else None))


def current_model(viewer: napari.Viewer) -> ClipModel:
    """The viewer's session model (InputError when none is loaded)."""
    from napari_clipmed._widgets._session import session_for

    return session_for(viewer).require()


def _layer(viewer: napari.Viewer, layer: Any) -> Any:
    if isinstance(layer, str):
        if layer not in viewer.layers:
            raise InputError(f"no layer named {layer!r}; layers: {', '.join(l.name for l in viewer.layers)}")
        return viewer.layers[layer]
    return layer


def ct_montage(
    viewer: napari.Viewer,
    layer: Any,
    *,
    mask: Any = None,
    add_layers: bool = True,
    **config: Any,
) -> CTMontageResult:
    """Run the CT ILD montage on a 3-D Image layer (or its name) and add the patch boxes and montage layers.

    `config` takes the widget's fields: patch_size_mm, stride_mm, k, min_distance_mm, patch_prompts
    (dict finding -> phrasings), normal_classes, class_prompts (a dict, or "ILD vs no ILD" /
    "UIP vs other"), min_lung_fraction, batch_size. `mask` is an optional Labels layer or boolean
    array (non-zero = lung). The source layer is not modified.
    """
    from napari_clipmed._widgets import _layers
    from napari_clipmed.ct.pipeline import run_ct_montage

    source = _layer(viewer, layer)
    cfg = _layers.montage_config(**config)
    model = current_model(viewer)
    volume = _layers.volume_from_layer(source)
    lung = None
    if mask is not None:
        lung = np.asarray(getattr(mask, "data", mask)) != 0
    result = run_ct_montage(volume, model, cfg, lung)
    if add_layers:
        _layers.add_montage_layers(viewer, result, source)
    return result


# --- pathology ------------------------------------------------------------------------------------
def corrupt_layer(viewer: napari.Viewer, layer: Any, kind: str, severity: float, seed: int | None = 0) -> Any:
    """Add a corrupted copy of an RGB image layer (as the corruption explorer's preview); returns the new layer."""
    from napari_clipmed._widgets import _path_layers as pl

    data, kwargs = pl.corrupted_layer_data(_layer(viewer, layer), kind, severity, seed)
    return viewer.add_image(data, **kwargs)


def zeroshot_labels(
    viewer: napari.Viewer,
    layer: Any,
    classes: Any = None,
    *,
    preset: str | None = None,
    templates: list[str] | None = None,
    tile_size: int = 224,
    stride: int | None = None,
    tissue_only: bool = True,
    shapes_layer: Any = None,
) -> ZeroShotResult:
    """Label tiles of a 2-D image layer (or the rectangles of `shapes_layer`) with the session model.

    Classes come from `preset` (a name from `zeroshot.list_presets()` or a YAML path) or from
    `classes` (a list of names or a dict name -> synonyms) with optional `templates`. Adds one
    Shapes layer like the zero-shot widget's; returns the `ZeroShotResult` (one row per box).
    """
    from napari_clipmed._widgets import _path_layers as pl
    from napari_clipmed._widgets.zeroshot_labels import image_tiles
    from napari_clipmed.progress import run_generator
    from napari_clipmed.zeroshot import PromptSet, ZeroShotClassifier, iter_classify_images

    if (preset is None) == (classes is None):
        raise InputError("give either classes or a preset (not both)")
    prompts = PromptSet.parse(preset if preset is not None else classes, templates)
    model = current_model(viewer)
    source = pl.image_source(_layer(viewer, layer))
    if shapes_layer is not None:
        boxes, what = pl.shapes_to_boxes(_layer(viewer, shapes_layer), source), "rectangles"
    else:
        boxes, what = image_tiles(source.pixels, int(tile_size), int(stride or tile_size), tissue_only), f"tiles {tile_size}px"
        if len(boxes) == 0:
            raise InputError(f"no {tile_size} x {tile_size} tile fits in '{source.name}'; lower the tile size")
    classifier = ZeroShotClassifier.from_prompts(model, prompts)
    result = run_generator(iter_classify_images(model, pl.crop_boxes(source.pixels, boxes), classifier))
    data, kwargs = pl.zeroshot_shapes(boxes, result.classes, result.probabilities, source.geometry,
                                      name=f"{source.name} labels [{what}]",
                                      metadata={"source": source.name, "preset": prompts.name,
                                                "model": getattr(model.spec, "name", "")})
    viewer.add_shapes(data, **kwargs)
    return result


def retrieve(
    viewer: napari.Viewer,
    layer: Any,
    index: EmbeddingIndex | str | os.PathLike[str],
    k: int = 8,
    *,
    shapes_layer: Any = None,
) -> Any:
    """Search `index` (an EmbeddingIndex or a saved .npz) with an image layer, or its last drawn rectangle.

    Adds the hit grid (RGB Image, right of the query image) and its rank/label overlay (Shapes), as
    the retrieval widget does; returns the hits table (query, rank, path, label, similarity).
    """
    from napari_clipmed._widgets import _path_layers as pl
    from napari_clipmed._widgets._gallery import (
        hits_frame,
        hits_grid,
        placed_hit_layers,
        query_region,
        read_tiles,
    )
    from napari_clipmed.retrieval import EmbeddingIndex

    gallery = index if isinstance(index, EmbeddingIndex) else EmbeddingIndex.load(index)
    if not 1 <= int(k) <= len(gallery):
        raise InputError(f"top k must lie in 1..{len(gallery)} (the tiles in the index), got {k}")
    model = current_model(viewer)
    source = pl.image_source(_layer(viewer, layer))
    pixels, name = query_region(source, None if shapes_layer is None else _layer(viewer, shapes_layer))
    model_id = model.identity
    hits = gallery.search(model.encode_images([pixels]), int(k), model_id=model_id)
    frame = hits_frame(hits, name)
    (grid, kwargs), (labels, label_kwargs) = placed_hit_layers(*hits_grid(read_tiles(frame["path"].tolist()), frame), source)
    viewer.add_image(grid, **kwargs)
    viewer.add_shapes(labels, **label_kwargs)
    return frame


# --- whole slides (ops.slide_zeroshot; see docs/slides.md) ----------------------------------------
def _slide(viewer: napari.Viewer, layer: Any) -> Any:
    from napari_clipmed._widgets._slide import is_slide_layer

    layer = _layer(viewer, layer)
    if not is_slide_layer(layer):
        raise InputError(f"layer '{layer.name}' is not a slide opened by napari-clipmed (open the file with it)")
    return layer


def slide_tissue(viewer: napari.Viewer, layer: Any, slide_mpp: float | None = None) -> Any:
    """Detect tissue (without glass and pen ink) on a slide layer; add it as an editable Labels layer (1 tissue, 2 ink)."""
    from napari_clipmed.io.slide import open_slide
    from napari_clipmed.pathology.tissue import detect_tissue

    layer = _slide(viewer, layer)
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
    from napari_clipmed._widgets._slide import add_layer_data, slide_geometry
    from napari_clipmed.ops.slide_common import SlideTiling
    from napari_clipmed.ops.slide_zeroshot import SlideZeroShotRequest, run
    from napari_clipmed.pathology.tissue import TissueMask

    if (preset is None) == (classes is None):
        raise InputError("give either classes or a preset (not both)")
    from napari_clipmed.zeroshot import PromptSet

    prompts = PromptSet.parse(preset if preset is not None else classes, templates)
    layer = _slide(viewer, layer)
    tissue = None
    if tissue_layer is not None:
        labels = _layer(viewer, tissue_layer)
        tissue = TissueMask.from_labels(np.asarray(labels.data), labels.metadata["tissue_downsample"])
    tiling = SlideTiling(target_mpp, tile, min_tissue, slide_mpp, tissue=tissue)
    result = run(SlideZeroShotRequest(layer.metadata["path"], prompts, tiling, top_j, top_k), current_model(viewer))
    add_layer_data(viewer, result.to_layer_data(slide_geometry(layer)))


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
    from napari_clipmed._widgets import _path_layers as pl
    from napari_clipmed._widgets.zeroshot_labels import image_tiles
    from napari_clipmed.ops.qc import QcRequest, run
    from napari_clipmed.pathology.gate import load_gate

    source = pl.image_source(_layer(viewer, layer))
    boxes = image_tiles(source.pixels, int(tile_size), int(stride or tile_size), tissue_only)
    if len(boxes) == 0:
        raise InputError(f"no {tile_size} x {tile_size} tile fits in '{source.name}'; lower the tile size")
    result = run(QcRequest(tuple(pl.crop_boxes(source.pixels, boxes)), load_gate(gate),
                           coords=np.asarray(boxes)[:, :2], tile_size=int(tile_size)))
    for data, kwargs, kind in result.to_layer_data(source.geometry):
        getattr(viewer, f"add_{kind}")(data, **{**kwargs, "name": f"{source.name} quality [{tile_size}px]"})
    return result
