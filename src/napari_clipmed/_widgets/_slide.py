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


def slide_region_source(viewer: Any, layer: Any, target_mpp: float = 0.5, side: int = 1024) -> Any:
    """A `side` x `side` px region of a slide layer, centred on the current view, read at `target_mpp`.

    For the corruption explorer: corruptions act on the pixels a model sees, i.e. at the tiler's
    magnification, not on whatever level napari shows. The region is placed exactly over the slide.
    """
    from napari_clipmed._widgets._path_layers import SourceImage
    from napari_clipmed.io.slide import open_slide
    from napari_clipmed.pathology.slide_tiler import read_box

    geometry = slide_geometry(layer)
    with open_slide(layer.metadata["path"], mpp=layer.metadata.get("mpp")) as slide:
        if slide.mpp is None:
            raise InputError(f"'{layer.name}' has no pixel size; set it to read the slide at {target_mpp} µm/px")
        f = target_mpp / slide.mpp  # level-0 px per output px
        h0, w0 = slide.shapes[0]
        size = min(side * f, h0, w0)
        centre = geometry.to_pixels(np.asarray(viewer.camera.center)[-2:]) + 0.5
        y0 = float(round(np.clip(centre[0] - size / 2, 0, h0 - size)))  # whole level-0 pixels
        x0 = float(round(np.clip(centre[1] - size / 2, 0, w0 - size)))
        n = max(16, round(size / f))
        pixels = read_box(slide, slide.best_level(f), (y0, x0, y0 + size, x0 + size), n)
    step = size / n  # level-0 px per region pixel
    first = geometry.to_world(np.array([y0, x0]) + step / 2 - 0.5)  # world centre of the region's first pixel
    region = Geometry(tuple(np.asarray(geometry.scale) * step), tuple(first), unit=geometry.unit)
    return SourceImage(pixels, f"{layer.name} @{target_mpp:g} µm/px", region, (0, 0), (n, n))
