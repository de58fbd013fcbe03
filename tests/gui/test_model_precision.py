"""The model panel's precision setting: it reaches load_model, and the status line says which precision ran and why."""

from __future__ import annotations

from typing import Any

from napari_clipmed._widgets.zeroshot_labels import ZeroShotLabelsWidget


def _load(qtbot: Any, widget: ZeroShotLabelsWidget, precision: str) -> str:
    panel = widget.model_panel
    panel.model_name.value = "tiny-random"
    panel.precision.value = precision
    panel.load_button.native.click()
    qtbot.waitUntil(lambda: not widget.session.loading, timeout=60_000)
    return panel.status.text()


def test_precision_setting_overrides_auto_and_the_status_says_why(viewer: Any, qtbot: Any) -> None:
    widget = ZeroShotLabelsWidget(viewer)
    viewer.window.add_dock_widget(widget, name="zero-shot")
    assert widget.model_panel.precision.value == "auto"
    status = _load(qtbot, widget, "bf16")
    assert widget.session.model.precision == "bf16"
    assert status == "tiny-random on CPU, bf16 (requested)"
    status = _load(qtbot, widget, "auto")  # another precision is another model: it reloads
    assert widget.session.model.precision == "fp32"  # the tiny model is too small to probe
    assert status in ("tiny-random on CPU, fp32 (small model)", "tiny-random on CPU, fp32 (no bf16 units)")
