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

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    import napari

    from napari_clipmed.ct.pipeline import CTMontageResult
    from napari_clipmed.models.loader import ClipModel

__all__ = ["load_model", "current_model", "ct_montage"]


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
    import numpy as np

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
