"""The napari side of every operation: snapshots of layers in, layer data out.

This is the only module that reads napari layers (their `data`, `name`, `scale`, `translate`,
`rgb`, `multiscale`, `metadata`): it copies what an operation needs into core inputs plus a
`Geometry`, on the GUI thread, so workers never touch a layer. Widgets and `napari_clipmed.api`
both use it. Results come back as ``(data, kwargs, layer_type)`` tuples (`ops.*.to_layer_data`),
which `build_layers` / `add_layers` turn into layers. The user's layers are never modified.

Geometry rule: world = pixel * scale + translate over the spatial axes; rotate, shear and affine
are ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.ops.geometry import Geometry, SourceImage
from napari_clipmed.ops.layerdata import LayerData, as_rgb_uint8

if TYPE_CHECKING:
    from napari_clipmed.ct.io import CTVolume


def geometry_of(layer: Any, ndim: int = 2, unit: str = "") -> Geometry:
    """The `Geometry` of a layer's last `ndim` axes (with the spatial shape of its data when it has one)."""
    shape: tuple[int, ...] = ()
    data = getattr(layer, "data", None)
    if data is not None and hasattr(data, "shape") or getattr(layer, "multiscale", False):
        base = _base_data(layer)
        spatial = _spatial_shape(layer, base)
        shape = tuple(int(n) for n in spatial[-ndim:]) if len(spatial) >= ndim else ()
    return Geometry(
        tuple(float(s) for s in np.asarray(layer.scale)[-ndim:]),
        tuple(float(t) for t in np.asarray(layer.translate)[-ndim:]),
        unit,
        shape,
    )


MAX_PREVIEW_SIDE = 4096


def _base_data(layer: Any, level: int = 0) -> Any:
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[level]
    return data


def _spatial_shape(layer: Any, data: Any) -> tuple[int, ...]:
    rgb = bool(getattr(layer, "rgb", False))
    return tuple(data.shape[:-1] if rgb else data.shape)


def rgb_snapshot(layer: Any, max_side: int | None = None) -> SourceImage:
    """Level-0 RGB pixels of an image layer as uint8 (a centred crop when a side exceeds
    `max_side`, default `MAX_PREVIEW_SIDE`)."""
    max_side = MAX_PREVIEW_SIDE if max_side is None else int(max_side)
    if not getattr(layer, "rgb", False):
        raise InputError(
            f"layer '{layer.name}' is not an RGB image: the corruptions are defined for RGB (H&E) images"
        )
    data = _base_data(layer)
    if data.ndim != 3:
        raise InputError(f"layer '{layer.name}' is a stack of shape {data.shape}: pick a 2-D RGB image layer")
    height, width = int(data.shape[0]), int(data.shape[1])
    top = max(0, (height - max_side) // 2)
    left = max(0, (width - max_side) // 2)
    crop = data[top : top + min(height, max_side), left : left + min(width, max_side)]
    pixels = as_rgb_uint8(np.asarray(crop), f"layer '{layer.name}'")
    return SourceImage(pixels, layer.name, geometry_of(layer, 2), (top, left), (height, width))


def image_snapshot(layer: Any) -> SourceImage:
    """Level-0 pixels of a 2-D grey or RGB(A) image layer, as a copy, in their own dtype."""
    data = _base_data(layer)
    shape = _spatial_shape(layer, data)
    if len(shape) != 2:
        raise InputError(f"layer '{layer.name}' has {len(shape)} spatial dimensions: pick a 2-D grey or RGB image")
    pixels = np.array(np.asarray(data), copy=True)
    if pixels.ndim == 3 and pixels.shape[-1] == 4:
        pixels = pixels[..., :3]
    return SourceImage(pixels, layer.name, geometry_of(layer, 2), (0, 0), (int(shape[0]), int(shape[1])))


def shapes_to_boxes(shapes: Any, image: SourceImage, *, min_side: int = 2) -> np.ndarray:
    """The rectangles of a Shapes layer as image pixel boxes ``(row0, col0, row1, col1)`` (int, end-exclusive).

    Each rectangle (rotated ones by their bounding box) goes from the Shapes layer's data to world
    coordinates with its scale/translate, then to the image's pixels; boxes are clipped to the image.
    Other shape types are ignored; an empty result is an InputError.
    """
    shape_geom = geometry_of(shapes, 2)
    boxes = []
    height, width = image.full_shape
    for verts, kind in zip(shapes.data, shapes.shape_type):
        if kind != "rectangle":
            continue
        world = shape_geom.to_world(np.asarray(verts, dtype=float)[:, -2:])
        px = image.geometry.to_pixels(world)
        r0, c0 = np.floor(px.min(axis=0)).astype(int)
        r1, c1 = np.ceil(px.max(axis=0)).astype(int)
        r0, c0, r1, c1 = max(r0, 0), max(c0, 0), min(r1, height), min(c1, width)
        if r1 - r0 >= min_side and c1 - c0 >= min_side:
            boxes.append((r0, c0, r1, c1))
    if not boxes:
        raise InputError(
            f"layer '{shapes.name}' has no rectangle over image '{image.name}' (at least {min_side} x {min_side} "
            "pixels); draw one with the rectangle tool"
        )
    return np.asarray(boxes, dtype=np.int64)



def query_region(source: SourceImage, shapes: Any = None) -> SourceImage:
    """The query pixels: the whole image, or the last rectangle drawn in `shapes` (a crop of `source`)."""
    if shapes is None:
        return source
    r0, c0, r1, c1 = shapes_to_boxes(shapes, source)[-1]
    return SourceImage(source.pixels[r0:r1, c0:c1], f"{source.name} [{r0}:{r1}, {c0}:{c1}]", source.geometry,
                       (int(r0), int(c0)), source.full_shape)


def volume_snapshot(layer: Any) -> CTVolume:
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
    z, y, x = (float(s) for s in np.asarray(layer.scale)[-3:])
    spacing: tuple[float, float, float] | None = (z, y, x)
    if spacing == (1.0, 1.0, 1.0) and "spacing" not in meta:
        spacing = None  # a plain array: CTVolume notes that 1 mm is assumed
    translate = tuple(float(t) for t in np.asarray(layer.translate)[-3:])
    origin = tuple(meta.get("origin", translate[::-1]))
    direction = tuple(meta.get("direction", IDENTITY_DIRECTION))
    if "origin" in meta and not np.allclose(translate, tuple(meta["origin"])[::-1]):
        origin, direction = translate[::-1], IDENTITY_DIRECTION  # the layer was moved: trust what is shown
    return CTVolume.from_array(np.asarray(data), spacing=spacing, origin=origin, direction=direction, source=name)



def volume_geometry(layer: Any) -> Geometry:
    """The (z, y, x) geometry of a volume layer in mm."""
    return geometry_of(layer, 3, "mm")


def mask_snapshot(labels: Any, shape: Sequence[int]) -> np.ndarray:
    """A boolean copy of a Labels layer (or array): non-zero = inside; InputError when its shape differs."""
    data = np.asarray(getattr(labels, "data", labels))
    if data.shape != tuple(shape):
        name = getattr(labels, "name", "mask")
        raise InputError(f"lung mask '{name}' has shape {data.shape}, the CT volume {tuple(shape)}")
    return data != 0


def layer_by_name(viewer: Any, layer: Any) -> Any:
    """`layer` itself, or the viewer's layer of that name (InputError naming the layers there)."""
    if isinstance(layer, str):
        if layer not in viewer.layers:
            raise InputError(f"no layer named {layer!r}; layers: {', '.join(item.name for item in viewer.layers)}")
        return viewer.layers[layer]
    return layer


def build_layers(layer_data: Sequence[LayerData]) -> list[Any]:
    """napari layer objects (not yet in a viewer) from layer-data tuples; slow parts (shapes,
    tables) can so run in a worker, leaving only the adding to the GUI thread."""
    from napari.layers import Layer

    return [Layer.create(data, dict(kwargs), layer_type) for data, kwargs, layer_type in layer_data]


def add_layers(viewer: Any, layers: Sequence[Any]) -> list[Any]:
    """Add layer objects (`build_layers`) or layer-data tuples to the viewer; returns the layers."""
    built = build_layers(layers) if layers and isinstance(layers[0], tuple) else list(layers)
    return [viewer.add_layer(layer) for layer in built]


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


# --- whole slides (opened by our reader: metadata["slide"] and the file's path) --------------------
# Widgets read a slide's tiles from the file through the tiler, at the target magnification, never
# from the pixels napari holds (a multiscale slide is never materialised). Rectangles drawn at any
# zoom become level-0 regions through the layers' world coordinates.
def is_slide_layer(layer: Any) -> bool:
    """True for an Image layer that our slide reader made (a file path and µm metadata)."""
    meta = getattr(layer, "metadata", None) or {}
    return bool(meta.get("slide")) and bool(meta.get("path"))


def slide_layer(viewer: Any, layer: Any) -> Any:
    """`layer` (or the viewer's layer of that name), refused unless our slide reader opened it."""
    layer = layer_by_name(viewer, layer)
    if not is_slide_layer(layer):
        raise InputError(f"layer '{layer.name}' is not a slide opened by napari-clipmed (open the file with it)")
    return layer


def slide_geometry(layer: Any) -> Geometry:
    """Where the slide's level-0 pixels lie in the world (µm when the slide has a pixel size)."""
    return Geometry(tuple(np.asarray(layer.scale)[-2:]), tuple(np.asarray(layer.translate)[-2:]),
                    unit=str(layer.metadata.get("units", "")))


def slide_mpp(layer: Any, user_mpp: float | None) -> float | None:
    """The user's µm/px (> 0) over the file's; None when neither says (the tiler then asks for it)."""
    return float(user_mpp) if user_mpp and user_mpp > 0 else layer.metadata.get("mpp")


def drawn_region(shapes: Any, slide: Any) -> tuple[float, float, float, float]:
    """The last rectangle of `shapes` as a level-0 (y0, x0, y1, x1) box of the slide (pixel edges)."""
    if shapes is None or len(shapes.data) == 0:
        raise InputError("draw a rectangle on the slide (a Shapes layer) to run on a region")
    vertices = np.asarray(shapes.data[-1], dtype=float)[:, -2:]
    world = vertices * np.asarray(shapes.scale)[-2:] + np.asarray(shapes.translate)[-2:]
    pixels = slide_geometry(slide).to_pixels(world) + 0.5  # pixel centres -> pixel edges
    (y0, x0), (y1, x1) = pixels.min(axis=0), pixels.max(axis=0)
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise InputError("the rectangle is too small: draw it over the region of the slide to use")
    return float(y0), float(x0), float(y1), float(x1)


def slide_region_source(viewer: Any, layer: Any, target_mpp: float = 0.5, side: int = 1024) -> SourceImage:
    """A `side` x `side` px region of a slide layer, centred on the current view, read at `target_mpp`.

    For the corruption explorer: corruptions act on the pixels a model sees, i.e. at the tiler's
    magnification, not on whatever level napari shows. The region is placed exactly over the slide.
    """
    from napari_clipmed.io.slide import open_slide
    from napari_clipmed.pathology.slide_tiler import read_box

    geometry = slide_geometry(layer)
    with open_slide(layer.metadata["path"], mpp=layer.metadata.get("mpp")) as slide:
        if slide.mpp is None:
            raise InputError(f"'{layer.name}' has no pixel size; set it to read the slide at {target_mpp} µm/px")
        f = target_mpp / slide.mpp  # level-0 px per output px
        h0, w0 = slide.shapes[0]
        size = min(side * f, h0, w0)
        centre = geometry.to_pixels(np.asarray(camera_of(viewer).center)[-2:]) + 0.5
        y0 = float(round(np.clip(centre[0] - size / 2, 0, h0 - size)))  # whole level-0 pixels
        x0 = float(round(np.clip(centre[1] - size / 2, 0, w0 - size)))
        n = max(16, round(size / f))
        pixels = read_box(slide, slide.best_level(f), (y0, x0, y0 + size, x0 + size), n)
    step = size / n  # level-0 px per region pixel
    first = geometry.to_world(np.array([y0, x0]) + step / 2 - 0.5)  # world centre of the region's first pixel
    region = Geometry(tuple(np.asarray(geometry.scale) * step), tuple(first), unit=geometry.unit)
    return SourceImage(pixels, f"{layer.name} @{target_mpp:g} µm/px", region, (0, 0), (n, n))
