"""Corruption explorer driven like a user, on real H&E pixels.

References: the preview must equal `corrupt()` called directly on a copy of the source, and a
blur preview must match scipy.ndimage.gaussian_filter at the table's sigma (an independent
implementation); the source layer's data must be bit-identical to a copy taken before.
"""

from __future__ import annotations

import numpy as np
import open_clip  # noqa: F401  - load torch's triton before Qt's OpenGL stack (their LLVMs clash: segfault)
import pytest
from gui_support import SHARED_DATA, notification_messages
from PIL import Image
from qtpy.QtCore import Qt
from scipy import ndimage

from napari_clipmed import layers
from napari_clipmed._widgets.corruption_explorer import CorruptionExplorerWidget
from napari_clipmed.pathology.corrupt import corrupt

HE = SHARED_DATA / "pathology" / "he_carcinoma_tiatoolbox.png"


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return np.asarray(Image.open(HE).convert("RGB"))[300:500, 400:640].copy()  # 200 x 240 px


@pytest.fixture
def widget(viewer) -> CorruptionExplorerWidget:
    w = CorruptionExplorerWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w




def _settle(qtbot, w: CorruptionExplorerWidget, name: str) -> None:
    """Wait until the debounced preview for the current settings is shown and nothing is pending."""
    qtbot.waitUntil(
        lambda: w.preview_layer is not None and w.preview_layer.name == name and not w._workers
        and not w._debounce.isActive(),
        timeout=20_000,
    )


def test_live_preview_is_debounced_and_leaves_source_alone(qtbot, widget: CorruptionExplorerWidget, he) -> None:
    viewer = widget.viewer
    source = viewer.add_image(he.copy(), name="he", rgb=True, scale=(0.5, 0.5), translate=(3.0, 4.0))
    widget.kind.value = "blur"
    for value in (1.0, 2.0, 2.7, 3.5):  # a burst of slider moves
        widget.severity.value = value
    _settle(qtbot, widget, "he [blur 3.5]")
    assert widget.preview_requests == 1  # only the last move was computed
    assert len(viewer.layers) == 2
    preview = widget.preview_layer
    np.testing.assert_array_equal(preview.data, corrupt(he.copy(), "blur", 3.5, seed=0))
    sigma = 3.5  # the table's sigma at severity 3.5 (3 px at 3, 4 px at 4)
    reference = np.stack([ndimage.gaussian_filter(he[..., c].astype(float), sigma) for c in range(3)], -1)
    assert np.abs(preview.data.astype(float) - reference).max() <= 1.0
    np.testing.assert_allclose(preview.scale, source.scale)
    np.testing.assert_allclose(preview.translate, source.translate)
    assert preview.metadata["corruption"]["severity"] == 3.5 and preview.metadata["corruption"]["kind"] == "blur"
    assert widget.parameter.text() == "sigma (px) = 3.5"

    widget.kind.value = "hue"  # another burst updates the same layer in place
    widget.severity.value = 0.5
    widget.seed.value = 7
    widget.severity.value = 1.2
    _settle(qtbot, widget, "he [hue 1.2]")
    assert widget.preview_requests == 2 and len(viewer.layers) == 2 and widget.preview_layer is preview
    np.testing.assert_array_equal(preview.data, corrupt(he.copy(), "hue", 1.2, seed=7))
    assert widget.source_layer.value is source  # the preview is not offered as a source

    # settings changed while a preview computes wait for it; its outdated result is never shown
    widget.kind.value = "markup"
    widget.severity.value = 4.0
    widget._debounce.stop()
    assert widget.request_preview() is not None
    widget.severity.value = 1.0
    widget._debounce.stop()
    assert widget.request_preview() is None  # queued behind the running one
    shown: list[str] = []
    preview.events.name.connect(lambda event: shown.append(preview.name))
    _settle(qtbot, widget, "he [markup 1]")
    assert widget.preview_requests == 4 and shown == ["he [markup 1]"]
    np.testing.assert_array_equal(preview.data, corrupt(he.copy(), "markup", 1.0, seed=7))
    np.testing.assert_array_equal(source.data, he)  # the source was never touched
    assert widget.last_error is None


def test_severity_strip_and_huge_image_crop(qtbot, widget: CorruptionExplorerWidget, he, monkeypatch) -> None:
    viewer = widget.viewer
    widget.live.value = False
    source = viewer.add_image(he.copy(), name="he", rgb=True, scale=(2.0, 2.0))
    widget.kind.value = "contrast"
    qtbot.mouseClick(widget.controls.run_button, Qt.MouseButton.LeftButton)
    assert widget.worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=20_000)  # a state: the worker may finish very fast
    assert widget.last_error is None, widget.last_error
    strip = viewer.layers[-1]
    assert strip.name == "he [contrast strip 0-4]" and len(viewer.layers) == 2
    h, w = he.shape[:2]
    assert strip.data.shape == (h, 5 * w + 4 * 16, 3)
    for level, col in enumerate(strip.metadata["corruption"]["panel_cols"]):
        np.testing.assert_array_equal(strip.data[:, col : col + w], corrupt(he, "contrast", level))
    np.testing.assert_array_equal(strip.data[:, :w], he)  # severity 0 is the image itself
    assert strip.translate[0] > source.translate[0] + h * 2.0  # placed below the source
    np.testing.assert_array_equal(source.data, he)

    # an image over the size limit is previewed on its central crop, placed where it sits
    monkeypatch.setattr(layers, "MAX_PREVIEW_SIDE", 128)
    widget.live.value = True
    widget.severity.value = 2.0
    _settle(qtbot, widget, "he [contrast 2]")
    top, left = (h - 128) // 2, (w - 128) // 2
    crop = he[top : top + 128, left : left + 128]
    np.testing.assert_array_equal(widget.preview_layer.data, corrupt(crop, "contrast", 2.0))
    np.testing.assert_allclose(widget.preview_layer.translate, [top * 2.0, left * 2.0])
    assert "central 128 x 128 px crop" in widget.controls.status.text()


def test_bad_input_and_cancel_add_no_layer(qtbot, widget: CorruptionExplorerWidget, he) -> None:
    viewer = widget.viewer
    grey = viewer.add_image(he[..., 0].copy(), name="grey")
    qtbot.waitUntil(lambda: widget.last_error is not None, timeout=10_000)  # the live preview refuses it
    assert "not an RGB image" in widget.last_error and widget.last_error in notification_messages()[-1]
    assert widget.run() is None and "not an RGB image" in widget.last_error
    assert len(viewer.layers) == 1 and widget.preview_layer is None
    np.testing.assert_array_equal(grey.data, he[..., 0])

    widget.live.value = False
    floats = viewer.add_image(he.astype(np.float32), name="float 0-255", rgb=True)
    widget.source_layer.value = floats
    assert widget.run() is None and "outside [0, 1]" in widget.last_error
    assert len(viewer.layers) == 2

    big = viewer.add_image(np.tile(he, (3, 3, 1)), name="big", rgb=True)
    widget.source_layer.value = big
    widget.kind.value = "markup"
    worker = widget.run()
    widget.cancel()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=20_000)
    assert len(viewer.layers) == 3 and widget.controls.status.text().startswith("cancelled")
