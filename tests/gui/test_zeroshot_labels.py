"""Zero-shot labels widget driven like a user, on real H&E pixels.

Reference: the probabilities in the output layer's features are recomputed here directly with
`ZeroShotClassifier.from_prompts` + `model.encode_images` on crops cut by hand from the pixel
boxes that the drawn (world-coordinate) rectangles should map to.
"""

from __future__ import annotations

import numpy as np
import open_clip  # noqa: F401  - load torch's triton before Qt's OpenGL stack (their LLVMs clash: segfault)
import pytest
from gui_support import SHARED_DATA, load_tiny, notification_messages, wait_done
from PIL import Image
from qtpy.QtCore import Qt

from napari_clipmed import layers
from napari_clipmed.ops import corrupt as corrupt_op
from napari_clipmed.ops.layerdata import PALETTE
from napari_clipmed._widgets.zeroshot_labels import (
    CUSTOM,
    RECTANGLES,
    TILES,
    ZeroShotLabelsWidget,
)
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.zeroshot import ZeroShotClassifier, load_preset

HE = SHARED_DATA / "pathology" / "he_carcinoma_tiatoolbox.png"


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return np.asarray(Image.open(HE).convert("RGB"))[:384, :384].copy()


@pytest.fixture
def widget(viewer) -> ZeroShotLabelsWidget:
    w = ZeroShotLabelsWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w








def _rect(r0: float, c0: float, r1: float, c1: float) -> np.ndarray:
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)


def test_rectangles_on_scaled_image_match_direct_classification(qtbot, widget: ZeroShotLabelsWidget, he) -> None:
    model = load_tiny(widget)
    viewer = widget.viewer
    image = viewer.add_image(he.copy(), name="he", rgb=True, scale=(2.0, 2.0), translate=(5.0, -3.0))
    boxes = [(10, 20, 110, 140), (200, 150, 330, 300)]  # pixel boxes (row0, col0, row1, col1)
    world = [_rect(*(np.array(b, float).reshape(2, 2) * 2.0 + [5.0, -3.0]).ravel()) for b in boxes]
    shapes = viewer.add_shapes(world, shape_type="rectangle", name="roi")
    shapes.add_ellipses(_rect(0, 0, 50, 50))  # not a rectangle: ignored
    before = [d.copy() for d in shapes.data]

    widget.preset.value = "wsss4luad"
    preset = load_preset("wsss4luad")
    assert widget.classes.value.splitlines()[0] == "tumour epithelium: tumor epithelial tissue; lung adenocarcinoma"
    assert all(name in widget.legend.text() for name in preset.classes)
    widget.image_layer.value, widget.shapes_layer.value = image, shapes
    widget.mode.value = RECTANGLES
    n_layers = len(viewer.layers)
    qtbot.mouseClick(widget.controls.run_button, Qt.MouseButton.LeftButton)
    wait_done(qtbot, widget, widget.worker)
    assert widget.last_error is None, widget.last_error
    assert len(viewer.layers) == n_layers + 1
    out = viewer.layers[-1]
    assert out.name == "he labels [rectangles]" and out.nshapes == 2
    np.testing.assert_allclose(out.scale, image.scale)
    np.testing.assert_allclose(out.translate, image.translate)
    for drawn, copied in zip(world, out.data):  # the copies overlay the user's rectangles in world space
        np.testing.assert_allclose(np.sort(copied * 2.0 + [5.0, -3.0], axis=0), np.sort(drawn, axis=0))

    classifier = ZeroShotClassifier.from_prompts(model, preset)
    crops = [he[r0:r1, c0:c1] for r0, c0, r1, c1 in boxes]
    expected = classifier.predict_proba(model.encode_images(crops))
    feats = out.features
    got = feats[[f"p({c})" for c in preset.class_names]].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    labels = [preset.class_names[i] for i in expected.argmax(axis=1)]
    assert list(feats["label"]) == labels and list(out.text.values) == labels
    np.testing.assert_allclose(feats["max_probability"], expected.max(axis=1), atol=1e-6)
    assert feats[["row0", "col0", "row1", "col1"]].to_numpy().tolist() == [list(b) for b in boxes]
    for label, face in zip(labels, out.face_color):
        hex_colour = PALETTE[preset.class_names.index(label)]
        np.testing.assert_allclose(face[:3], [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)], atol=1e-3)
    for a, b in zip(shapes.data, before):  # the user's shapes layer is untouched
        np.testing.assert_array_equal(a, b)
    assert shapes.nshapes == 3

    # the same rectangles on a corrupted copy (as the corruption explorer makes it): labels follow the pixels
    (blurred_layer,) = layers.add_layers(viewer, corrupt_op.run(corrupt_op.CorruptRequest(
        layers.rgb_snapshot(image), "blur", 4.0, seed=0)).to_layer_data())
    widget.image_layer.value = blurred_layer
    wait_done(qtbot, widget, widget.run())
    blurred = corrupt(he, "blur", 4.0)
    expected_blur = classifier.predict_proba(model.encode_images([blurred[r0:r1, c0:c1] for r0, c0, r1, c1 in boxes]))
    got_blur = viewer.layers[-1].features[[f"p({c})" for c in preset.class_names]].to_numpy()
    np.testing.assert_allclose(got_blur, expected_blur, atol=1e-5)
    assert np.abs(got_blur - got).max() > 1e-4
    assert viewer.layers[-1].name == "he [blur 4] labels [rectangles]"


def test_tiles_with_and_without_tissue_filter(qtbot, widget: ZeroShotLabelsWidget, he) -> None:
    load_tiny(widget)
    viewer = widget.viewer
    blank = np.full((384, 256, 3), 245, dtype=np.uint8)  # glass: no tissue
    image = viewer.add_image(np.concatenate([he, blank], axis=1), name="half glass", rgb=True)
    widget.image_layer.value = image
    widget.mode.value = TILES
    widget.tile_size.value, widget.stride.value = 128, 128
    widget.tissue_only.value = False
    wait_done(qtbot, widget, widget.run())
    assert widget.last_error is None, widget.last_error
    everything = viewer.layers[-1].features
    assert viewer.layers[-1].name == "half glass labels [tiles 128px]"
    assert len(everything) == (384 // 128) * (640 // 128)  # the full grid
    expected_boxes = [[r, c, r + 128, c + 128] for r in (0, 128, 256) for c in (0, 128, 256, 384, 512)]
    assert everything[["row0", "col0", "row1", "col1"]].to_numpy().tolist() == expected_boxes
    widget.tissue_only.value = True
    wait_done(qtbot, widget, widget.run())
    tissue = viewer.layers[-1].features
    assert len(tissue) == 9 and tissue["col1"].max() <= 384  # only the H&E part
    same = everything.merge(tissue, on=["row0", "col0"], suffixes=("", "_t"))
    assert len(same) == 9  # the same tiles get the same probabilities
    np.testing.assert_allclose(same["max_probability"], same["max_probability_t"], atol=1e-6)


def test_bad_inputs_and_cancel_add_no_layer(qtbot, widget: ZeroShotLabelsWidget, he) -> None:
    viewer = widget.viewer
    image = viewer.add_image(he.copy(), name="he", rgb=True)
    widget.image_layer.value = image
    n_layers = len(viewer.layers)
    assert widget.run() is None
    assert "load a model first" in widget.last_error and widget.last_error in notification_messages()[-1]
    load_tiny(widget)

    widget.classes.value = "tumour: tumor; carcinoma"
    assert widget.preset.value == CUSTOM  # editing a preset makes it custom
    assert widget.run() is None and "at least two classes" in widget.last_error
    widget.classes.value = "tumour\nstroma"
    widget.templates.value = "an H&E image of {}.\na picture of tissue"
    assert widget.run() is None and "a picture of tissue" in widget.last_error
    widget.templates.value = "an H&E image of {}."
    widget.mode.value = RECTANGLES
    assert widget.run() is None and "Shapes layer" in widget.last_error
    viewer.add_shapes([_rect(-50, -50, -10, -10)], shape_type="rectangle", name="outside")
    widget.image_layer.value = image
    assert widget.run() is None and "no rectangle over image" in widget.last_error
    assert widget.last_error in notification_messages()[-1]
    assert len(viewer.layers) == n_layers + 1  # only the user's shapes layer

    widget.mode.value = TILES
    widget.tile_size.value, widget.stride.value = 64, 64
    worker = widget.run()
    widget.cancel()
    wait_done(qtbot, widget, worker)
    assert len(viewer.layers) == n_layers + 1 and widget.last_error is None
    assert widget.controls.status.text().startswith("cancelled")


def test_rectangle_mapping_without_viewer() -> None:
    from napari.layers import Image as ImageLayer
    from napari.layers import Shapes

    image = ImageLayer(np.zeros((100, 80, 3), np.uint8), rgb=True, name="img", scale=(0.5, 0.25), translate=(10, 0))
    # a Shapes layer with its own scale: data (r, c) -> world (2 r, 2 c)
    shapes = Shapes([_rect(10, 2, 20, 6), _rect(-5, -5, 100, 100)], shape_type="rectangle", scale=(2, 2))
    boxes = layers.shapes_to_boxes(shapes, layers.image_snapshot(image))
    # world rows 20..40 -> pixels (20-10)/0.5 .. (40-10)/0.5 = 20..60; world cols 4..12 -> 16..48
    assert boxes.tolist() == [[20, 16, 60, 48], [0, 0, 100, 80]]  # the second is clipped to the image


def test_quality_gate_marks_and_skips_failing_tiles(qtbot, widget: ZeroShotLabelsWidget, he) -> None:
    """Blurred and glass tiles fail the shipped gate: red outline, measures in features, 'uncertain' when skipped."""
    load_tiny(widget)
    viewer = widget.viewer
    blurred = corrupt(he[:256, :256], "blur", 4.0)
    glass = np.full((256, 256, 3), 245, dtype=np.uint8)
    image = viewer.add_image(np.concatenate([he[:256, :256], blurred, glass], axis=1), name="mixed", rgb=True)
    widget.image_layer.value = image
    widget.mode.value = TILES
    widget.tile_size.value, widget.stride.value = 128, 128
    widget.tissue_only.value = False
    widget.quality_gate.value, widget.skip_failing.value = True, True
    wait_done(qtbot, widget, widget.run())
    assert widget.last_error is None, widget.last_error
    layer = viewer.layers[-1]
    features = layer.features
    assert {"quality_focus", "quality_tissue", "quality_passed", "quality_reasons", "abstain_reason"} <= set(features)
    blurred_tiles = (features["col0"] >= 256) & (features["col0"] < 512)
    glass_tiles = features["col0"] >= 512
    assert not features.loc[blurred_tiles, "quality_passed"].any()
    assert features.loc[blurred_tiles, "quality_reasons"].str.contains("focus").all()
    assert features.loc[glass_tiles, "quality_reasons"].str.contains("tissue").all()
    assert (features.loc[~features["quality_passed"], "label"] == "uncertain").all()
    assert features.loc[~features["quality_passed"], "abstain_reason"].str.startswith("failed the quality gate").all()
    assert (features.loc[features["quality_passed"], "label"] != "uncertain").all()
    widths = np.asarray(layer.edge_width)
    assert widths[~features["quality_passed"].to_numpy()].min() > widths[features["quality_passed"].to_numpy()].max()
