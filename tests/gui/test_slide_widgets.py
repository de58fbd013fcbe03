"""Whole slides in the zero-shot widget: a lazy multiscale layer in µm, tiles read from the file at
the target magnification, heat maps over the slide, a responsive viewer and a cancel that stops reading."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gui_support import notification_messages, run_and_probe, wait_done
from PIL import Image
from slide_support import MPP, PNG, carcinoma_pyramid, write_pyramid

from napari_clipmed.session import ModelChoice
from napari_clipmed._widgets.zeroshot_labels import (
    RECTANGLES,
    TILES,
    ZeroShotLabelsWidget,
)
from napari_clipmed.io.slide import SlideWarning

MAX_LATENCY_S = 0.100


def _widget(viewer: Any, tiny_model: Any, path: Path) -> tuple[ZeroShotLabelsWidget, Any]:
    (layer,) = viewer.open(str(path), plugin="napari-clipmed")
    widget = ZeroShotLabelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.session.model, widget.session.choice = tiny_model, ModelChoice("tiny-random")
    widget.preset.value = "custom"
    widget.classes.value = "tumor\nstroma\nlymphocytes"
    widget.image_layer.value = layer
    return widget, layer


def test_slide_zeroshot_from_the_widget(viewer: Any, qtbot: Any, tiny_model: Any, tmp_path: Path) -> None:
    widget, layer = _widget(viewer, tiny_model, carcinoma_pyramid(tmp_path / "carcinoma.tif"))
    assert layer.multiscale and len(layer.data) == 3 and tuple(layer.scale) == (MPP, MPP)
    messages: list[str] = []
    show = widget.controls.show_progress
    widget.controls.show_progress = lambda step: (messages.append(step.message), show(step))  # type: ignore[method-assign]
    latency, ticks = run_and_probe(qtbot, widget)
    assert widget.last_error is None
    assert any(m.startswith("36 tissue tiles at 0.50 µm/px from level 1") for m in messages), messages[:3]
    heat = [lyr for lyr in viewer.layers if "p(" in lyr.name]
    assert len(heat) == 3 and heat[0].data.shape == (6, 6)
    np.testing.assert_allclose(heat[0].scale, (448 * MPP, 448 * MPP))
    # heat pixel (2, 3) lies over its tile: its world centre is the centre of level-0 box [896, 1344) x [1344, 1792)
    centre = heat[0].data_to_world((2, 3))
    np.testing.assert_allclose(layer.world_to_data(centre), (1119.5, 1567.5), atol=1e-6)
    top = next(lyr for lyr in viewer.layers if lyr.name.endswith("top tiles"))
    assert {"class", "rank", "probability", "quality_passed", "quality_reasons"} <= set(top.features.columns)
    assert any("36 tissue tiles at 0.50 µm/px from level 1" in m for m in notification_messages())
    assert ticks >= 10 and latency < MAX_LATENCY_S, f"the event loop stalled for {latency * 1000:.0f} ms"


def test_slide_region_cancel_and_missing_pixel_size(viewer: Any, qtbot: Any, tiny_model: Any, tmp_path: Path) -> None:
    widget, _layer = _widget(viewer, tiny_model, carcinoma_pyramid(tmp_path / "carcinoma.tif"))
    before = len(viewer.layers)
    worker = widget.run()
    qtbot.waitUntil(lambda: widget.controls.progress.maximum() > 0, timeout=60_000)  # tiles are streaming
    widget.cancel()
    wait_done(qtbot, widget, worker, timeout=60_000)
    assert len(viewer.layers) == before  # a cancelled run adds nothing
    qtbot.waitUntil(lambda: not any(t.name.startswith("clipmed-tiles") for t in threading.enumerate()), timeout=10_000)

    # a rectangle drawn on the slide: only the tiles of that region
    shapes = viewer.add_shapes([np.array([[0, 0], [0, 300], [300, 300], [300, 0]]) * 1.0], shape_type="rectangle")
    widget.shapes_layer.value = shapes
    widget.mode.value = RECTANGLES
    worker = widget.run()
    wait_done(qtbot, widget, worker, timeout=60_000)
    heat = [lyr for lyr in viewer.layers if "p(" in lyr.name]
    assert widget.last_error is None and heat and heat[0].data.shape == (2, 2)  # 300 µm = 1200 px = 2 tiles of 448

    # a slide that does not say its pixel size: one clear message and no layer, until the user gives it
    path = tmp_path / "no_mpp.tif"
    write_pyramid(path, np.asarray(Image.open(PNG).convert("RGB")), levels=2, mpp=None)
    with pytest.warns(SlideWarning, match="pixel size"):
        (plain,) = viewer.open(str(path), plugin="napari-clipmed")
    widget.image_layer.value = plain
    widget.mode.value = TILES
    count = len(viewer.layers)
    worker = widget.run()
    if worker is not None:
        wait_done(qtbot, widget, worker)
    assert len(viewer.layers) == count and "no pixel size" in (widget.last_error or "")
    assert any("no pixel size" in m for m in notification_messages())
    widget.slide_mpp.value = 0.5
    wait_done(qtbot, widget, widget.run())
    assert widget.last_error is None and len(viewer.layers) > count


def test_slide_retrieval_from_the_widget(viewer: Any, qtbot: Any, tiny_model: Any, tmp_path: Path) -> None:
    from napari_clipmed._widgets.retrieval import RetrievalWidget

    (layer,) = viewer.open(str(carcinoma_pyramid(tmp_path / "carcinoma.tif")), plugin="napari-clipmed")
    widget = RetrievalWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.session.model, widget.session.choice = tiny_model, ModelChoice("tiny-random")
    wait_done(qtbot, widget, widget.index_slides())
    assert widget.slide_index is not None and "36 tissue tiles of 1 slide(s) at 0.50 µm/px" in widget.index_status.text()
    # the rectangle of tile 7 ([448, 896) x [448, 896) level-0 px), drawn in µm
    corners = np.array([[448, 448], [448, 896], [896, 896], [896, 448]]) - 0.5
    shapes = viewer.add_shapes([corners * MPP], shape_type="rectangle")
    widget.image_layer.value, widget.shapes_layer.value, widget.k.value = layer, shapes, 4
    wait_done(qtbot, widget, widget.run())
    assert widget.last_error is None and widget.hits is not None
    assert widget.hits.loc[0, "tile"] == 7 and widget.hits.loc[0, "similarity"] > 0.9999
    boxes = next(lyr for lyr in viewer.layers if lyr.name == "carcinoma: hits")
    np.testing.assert_allclose(boxes.scale, (MPP, MPP))
    np.testing.assert_allclose(boxes.data[0][0], (447.5, 447.5))
    assert widget.table.rowCount() == 4


def test_api_tissue_layer_edits_are_honoured(viewer: Any, tiny_model: Any, tmp_path: Path) -> None:
    from napari_clipmed import api
    from napari_clipmed.session import session_for

    (layer,) = viewer.open(str(carcinoma_pyramid(tmp_path / "carcinoma.tif")), plugin="napari-clipmed")
    session = session_for(viewer)
    session.model, session.choice = tiny_model, ModelChoice("tiny-random")
    tissue = api.slide_tissue(viewer, layer)
    np.testing.assert_allclose(tissue.scale, (2 * MPP, 2 * MPP))  # computed on level 1
    full = api.slide_zeroshot(viewer, layer, ["tumor", "stroma"], tissue_layer=tissue)
    tissue.data[:, : tissue.data.shape[1] // 2] = 0  # the user erases the left half of the tissue
    half = api.slide_zeroshot(viewer, layer, ["tumor", "stroma"], tissue_layer=tissue)
    assert len(full.grid) == 36 and 0 < len(half.grid) < 36
    assert (half.grid.boxes[:, 1] >= 1500 - 448 / 2).all()


def test_corruption_explorer_reads_a_slide_region_at_the_tilers_magnification(
    viewer: Any, qtbot: Any, tmp_path: Path
) -> None:
    from napari_clipmed.layers import camera_of, slide_region_source
    from napari_clipmed._widgets.corruption_explorer import CorruptionExplorerWidget
    from napari_clipmed.io.slide import open_slide
    from napari_clipmed.pathology.slide_tiler import read_box

    path = carcinoma_pyramid(tmp_path / "carcinoma.tif")
    (layer,) = viewer.open(str(path), plugin="napari-clipmed")
    camera_of(viewer).center = (1500 * MPP, 1500 * MPP)  # the middle of the slide, in µm
    source = slide_region_source(viewer, layer, target_mpp=0.5, side=256)
    assert source.pixels.shape == (256, 256, 3)  # 512 level-0 px read at 0.5 µm/px
    with open_slide(path) as slide:
        np.testing.assert_array_equal(source.pixels, read_box(slide, 1, (1244, 1244, 1756, 1756), 256))
    # region pixel (0, 0) covers level-0 pixels 1244..1245: its world centre is level-0 coordinate 1244.5
    np.testing.assert_allclose(source.geometry.to_world((0, 0)), np.array([1244.5, 1244.5]) * MPP)

    widget = CorruptionExplorerWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.source_layer.value = layer
    before = len(viewer.layers)
    wait_done(qtbot, widget, widget.run(), timeout=120_000)
    assert widget.last_error is None and len(viewer.layers) > before
