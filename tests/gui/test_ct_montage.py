"""The CT ILD montage widget, driven as a user would (tiny random CLIP, a 12-slice crop of the sample CT).

References: the same run made directly with the core (`run_ct_montage`) on the same volume and
config; patch boxes checked against voxel geometry computed here from the crop's spacing/origin;
navigation checked against the patch table's slice and centre.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from napari_clipmed.session import ModelChoice
from napari_clipmed._widgets.ct_montage import CTMontageWidget

K = 5


def _widget(viewer: Any, *, load: bool = True) -> CTMontageWidget:
    widget = CTMontageWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CT montage")
    if load:
        widget.session.load_now(ModelChoice("tiny-random"))
    widget.k.value = K
    widget.stride.value = 24.0  # fewer candidate patches: a fast test
    return widget


def _run(qtbot: Any, widget: CTMontageWidget) -> None:
    widget.controls.run_button.click()
    assert widget.worker is not None, widget.last_error
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.last_error is None, widget.last_error


def _last_notification() -> str:
    from napari.utils.notifications import notification_manager

    return notification_manager.records[-1].message if notification_manager.records else ""


def test_run_adds_boxes_montage_and_tables(viewer: Any, qtbot: Any, ct_layer: Any, ct_crop: Any) -> None:
    from napari_clipmed import layers
    from napari_clipmed.ct.pipeline import run_ct_montage

    before = np.array(ct_layer.data, copy=True)
    widget = _widget(viewer)
    _run(qtbot, widget)
    boxes, montage = widget.boxes_layer, widget.montage_layer
    assert [layer.name for layer in viewer.layers] == ["CT", "CT ILD montage", "CT ILD patches"]
    np.testing.assert_array_equal(ct_layer.data, before)  # the source is never modified

    # reference: the core called directly on the same volume and settings
    ref = run_ct_montage(ct_crop, widget.session.model, widget.config())
    np.testing.assert_array_equal(widget.result.chosen, ref.chosen)
    assert widget.result.probabilities == pytest.approx(ref.probabilities)
    assert len(ref.chosen) == K

    feats = boxes.features
    for col in ("rank", "prompt", "score", "slice", "row", "col", "z_mm", "y_mm", "x_mm", "world_z"):
        assert col in feats.columns
    np.testing.assert_array_equal(feats["rank"], np.arange(K))
    np.testing.assert_allclose(feats["score"], ref.scores.score[ref.chosen])
    assert set(feats["prompt"]) <= set(ref.scores.classes) - {"normal lung parenchyma"}
    assert list(boxes.text.values) == list(feats["label"])

    # each rectangle covers its patch's voxels on its slice, in world (mm) coordinates
    spacing = np.asarray(ct_crop.spacing)
    origin_zyx = np.asarray(ct_crop.origin)[::-1]
    for i, (verts, row) in enumerate(zip(boxes.data, feats.itertuples())):
        patch = ref.patches[int(ref.chosen[i])]
        world = np.array([boxes.data_to_world(v) for v in verts])
        lo = np.array([patch.slice_index, patch.row - 0.5, patch.col - 0.5]) * spacing + origin_zyx
        hi = np.array([patch.slice_index, patch.row + patch.height - 0.5, patch.col + patch.width - 0.5]) * spacing + origin_zyx
        np.testing.assert_allclose(world.min(axis=0), lo)
        np.testing.assert_allclose(world.max(axis=0), hi)
        assert row.slice == patch.slice_index

    # the montage image and its probabilities
    assert montage.rgb
    np.testing.assert_array_equal(montage.data, ref.montage.image)
    probs = montage.metadata["probabilities"]
    assert set(probs) == {"ILD", "no ILD"} and sum(probs.values()) == pytest.approx(1.0)
    assert widget.prob_table.rowCount() == 2
    shown = {widget.prob_table.item(i, 0).text(): float(widget.prob_table.item(i, 1).text()) for i in range(2)}
    assert shown == pytest.approx(probs, abs=1e-3)
    assert widget.patch_table.rowCount() == K
    assert widget.patch_table.item(0, 0).text() == "1"

    # picking a table row goes to that patch's slice and centres the camera on it
    target = 3
    widget.patch_table.selectRow(target)
    assert viewer.dims.current_step[0] == feats["slice"].iloc[target]
    centre = layers.patch_world_centre(feats, target, ct_layer)
    np.testing.assert_allclose(layers.camera_of(viewer).center[-2:], centre[-2:])
    assert boxes.selected_data == {target}


def test_clicking_a_montage_cell_goes_to_its_patch(viewer: Any, qtbot: Any, ct_layer: Any, MouseEvent: Any) -> None:
    widget = _widget(viewer)
    _run(qtbot, widget)
    montage, feats = widget.montage_layer, widget.boxes_layer.features
    cells = montage.metadata["montage"]
    for rank in (4, 1):
        y0, x0, y1, x1 = cells.cell_box(rank)
        world = montage.data_to_world(np.array([(y0 + y1) / 2, (x0 + x1) / 2]))
        event = MouseEvent(type="mouse_press", position=(viewer.dims.point[0], *world))
        for callback in montage.mouse_drag_callbacks:
            callback(montage, event)
        assert widget.patch_table.currentRow() == rank
        assert viewer.dims.current_step[0] == feats["slice"].iloc[rank]
    # padding between cells is not a patch: nothing moves
    step = tuple(viewer.dims.current_step)
    event = MouseEvent(type="mouse_press", position=(viewer.dims.point[0], *montage.data_to_world(np.array([0.5, 0.5]))))
    widget._on_montage_click(montage, event)
    assert tuple(viewer.dims.current_step) == step


def test_own_lung_mask_is_used(viewer: Any, qtbot: Any, ct_layer: Any, ct_crop: Any) -> None:
    from napari_clipmed.ct.lung import lung_mask

    mask = lung_mask(ct_crop)
    mask[:, :, mask.shape[2] // 2 :] = False  # keep the patient's right lung (left half of the image) only
    viewer.add_labels(mask.astype(np.uint8), name="right lung", scale=ct_layer.scale, translate=ct_layer.translate)
    widget = _widget(viewer)
    widget.mask.value = viewer.layers["right lung"]
    _run(qtbot, widget)
    feats = widget.boxes_layer.features
    for row in feats.itertuples():  # each chosen patch is mostly inside the given mask
        inside = mask[row.slice, row.row : row.row + row.height_px, row.col : row.col + row.width_px].mean()
        assert inside == pytest.approx(row.lung_fraction) and inside >= 0.5


def test_plain_array_without_spacing_is_noted(viewer: Any, qtbot: Any, ct_crop: Any) -> None:
    viewer.add_image(np.array(ct_crop.array), name="no spacing")
    widget = _widget(viewer)
    widget.image.value = viewer.layers["no spacing"]
    worker = widget.run()
    assert worker is not None
    assert "assuming 1 mm" in _last_notification()
    widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)


def test_cancel_adds_nothing(viewer: Any, qtbot: Any, ct_layer: Any) -> None:
    widget = _widget(viewer)
    worker = widget.run()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=120_000):  # connected before the worker can stop
        widget.cancel()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=5_000)
    assert [layer.name for layer in viewer.layers] == ["CT"]
    assert widget.result is None and widget.patch_table.rowCount() == 0
    assert "cancelled" in widget.controls.status.text()
    assert widget.controls.run_button.isEnabled()


@pytest.mark.parametrize(
    "case, expected",
    [
        ("2-D layer", "dimension"),
        ("RGB layer", "RGB"),
        ("no model", "load a model first"),
        ("k = 0", "k (patches in the montage) must be at least 1"),
        ("normal not a prompt", "normal class"),
        ("one class", "at least two classes"),
    ],
)
def test_bad_input_notifies_and_adds_nothing(viewer: Any, ct_layer: Any, case: str, expected: str) -> None:
    widget = _widget(viewer, load=case != "no model")
    if case == "2-D layer":
        viewer.add_image(np.zeros((32, 32), np.int16) - 1000, name="slice")
        widget.image.value = viewer.layers["slice"]
    elif case == "RGB layer":
        viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="photo", rgb=True)
        widget.image.value = viewer.layers["photo"]
    elif case == "k = 0":
        widget.k.value = 0
    elif case == "normal not a prompt":
        widget.normal.value = "healthy alveoli"
    elif case == "one class":
        widget.class_prompts.setPlainText("ILD: pulmonary fibrosis")
        assert widget.class_set.value == "custom"
    names = [layer.name for layer in viewer.layers]
    assert widget.run() is None
    assert widget.last_error is not None and expected in widget.last_error
    assert expected in _last_notification()
    assert [layer.name for layer in viewer.layers] == names
    assert widget.worker is None


def test_class_set_fills_the_prompts(viewer: Any) -> None:
    from napari_clipmed.ct.ild import ILD_CLASS_PRESETS

    widget = _widget(viewer, load=False)
    widget.class_set.value = "UIP vs other"
    assert widget.config().class_prompts == ILD_CLASS_PRESETS["uip"]
    widget.class_set.value = "ILD vs no ILD"
    assert widget.config().class_prompts == ILD_CLASS_PRESETS["ild"]


def test_missing_checkpoint_is_explained_in_the_model_panel(viewer: Any, qtbot: Any, ct_layer: Any, tmp_path: Any,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPMED_WEIGHTS_DIR", str(tmp_path))  # empty; CLIPMED_OFFLINE=1 from conftest
    widget = _widget(viewer, load=False)
    panel = widget.model_panel
    panel.model_name.value = "pathclip"
    assert "pathclip-base.pt" in panel.status.text() and str(tmp_path) in panel.status.text()
    panel.load_button.native.click()
    qtbot.waitUntil(lambda: not widget.session.loading, timeout=60_000)
    text = panel.status.text()
    assert text.startswith("could not load pathclip")
    assert str(tmp_path / "pathclip-base.pt") in text
    assert widget.session.model is None
    assert widget.run() is None and "load a model first" in (widget.last_error or "")


def test_load_button_loads_in_the_background(viewer: Any, qtbot: Any) -> None:
    widget = _widget(viewer, load=False)
    widget.model_panel.model_name.value = "tiny-random"
    widget.model_panel.load_button.native.click()
    qtbot.waitUntil(lambda: widget.session.model is not None, timeout=60_000)
    assert widget.session.model.spec.name == "tiny-random"
    assert "tiny-random" in widget.model_panel.status.text()


def test_plugin_menu_docks_the_widget(viewer: Any) -> None:
    _, widget = viewer.window.add_plugin_dock_widget("napari-clipmed", "CT: ILD patch montage")
    assert isinstance(widget, CTMontageWidget)


def test_api_adds_the_same_layers_as_the_widget(viewer: Any, ct_layer: Any, ct_crop: Any) -> None:
    from napari_clipmed import api
    from napari_clipmed.ops.ct_montage import montage_config
    from napari_clipmed.ct.pipeline import run_ct_montage

    model = api.load_model(viewer, "tiny-random")
    result = api.ct_montage(viewer, "CT", k=K, stride_mm=24.0, class_prompts="UIP vs other")
    ref = run_ct_montage(ct_crop, model, montage_config(k=K, stride_mm=24.0, class_prompts="UIP vs other"))
    np.testing.assert_array_equal(result.chosen, ref.chosen)
    assert set(result.probabilities) == {"UIP pattern", "other"}
    assert [layer.name for layer in viewer.layers] == ["CT", "CT ILD montage", "CT ILD patches"]
    np.testing.assert_array_equal(viewer.layers["CT ILD montage"].data, ref.montage.image)
    assert len(viewer.layers["CT ILD patches"].data) == K
    with pytest.raises(Exception, match="k .* must be at least 1"):
        api.ct_montage(viewer, "CT", k=0)
