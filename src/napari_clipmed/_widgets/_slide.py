"""Slide layers in the widgets: recognise a whole-slide layer and run slide operations on it.

A layer opened by our reader carries ``metadata["slide"]`` and the file's path; the widgets then
read tiles from the file through the tiler, at the target magnification, instead of the pixels
napari holds (a multiscale slide is never materialised). Rectangles drawn at any zoom become
level-0 regions through the layers' world coordinates.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.ops.geometry import Geometry


def is_slide_layer(layer: Any) -> bool:
    """True for an Image layer that our slide reader made (a file path and µm metadata)."""
    meta = getattr(layer, "metadata", None) or {}
    return bool(meta.get("slide")) and bool(meta.get("path"))


def slide_geometry(layer: Any) -> Geometry:
    """Where the slide's level-0 pixels lie in the world (µm when the slide has a pixel size)."""
    return Geometry(tuple(np.asarray(layer.scale)[-2:]), tuple(np.asarray(layer.translate)[-2:]),
                    unit=str(layer.metadata.get("units", "")))


def slide_mpp(layer: Any, user_mpp: float) -> float | None:
    """The user's µm/px (> 0) over the file's; None when neither says (the tiler then asks for it)."""
    return float(user_mpp) if user_mpp and user_mpp > 0 else layer.metadata.get("mpp")


def drawn_region(shapes: Any, slide_layer: Any) -> tuple[float, float, float, float]:
    """The last rectangle of `shapes` as a level-0 (y0, x0, y1, x1) box of the slide (pixel edges)."""
    if shapes is None or len(shapes.data) == 0:
        raise InputError("draw a rectangle on the slide (a Shapes layer) to run on a region")
    vertices = np.asarray(shapes.data[-1], dtype=float)[:, -2:]
    world = vertices * np.asarray(shapes.scale)[-2:] + np.asarray(shapes.translate)[-2:]
    pixels = slide_geometry(slide_layer).to_pixels(world) + 0.5  # pixel centres -> pixel edges
    (y0, x0), (y1, x1) = pixels.min(axis=0), pixels.max(axis=0)
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise InputError("the rectangle is too small: draw it over the region of the slide to use")
    return float(y0), float(x0), float(y1), float(x1)


def add_layer_data(viewer: Any, layers: list[tuple[Any, dict[str, Any], str]]) -> list[Any]:
    """Add (data, kwargs, kind) tuples to the viewer (on the GUI thread)."""
    added = []
    for data, kwargs, kind in layers:
        added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return added
