"""The Qt event loop keeps running while a widget's model job runs in its worker.

A QTimer ticks every 10 ms on the GUI thread during the job; the largest gap between ticks minus
the interval is the worst event-loop latency a user would feel (a click, a repaint). It must stay
under 100 ms: model work, tables and layer objects are built off the GUI thread, and progress
signals do not flood the loop.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gui_support import run_and_probe

from napari_clipmed._widgets._base import ClipmedWidget

MAX_LATENCY_S = 0.100


class EncodeWidget(ClipmedWidget):
    """A minimal widget on the shared base: encodes tiles with the session's model."""

    def __init__(self, viewer: Any, tiles: np.ndarray) -> None:
        super().__init__(viewer)
        self.tiles = tiles
        self.result: np.ndarray | None = None

    def run(self) -> object | None:
        model = self.session.require()

        def store(embeddings: np.ndarray) -> None:
            self.result = embeddings

        return self.run_job(lambda: model.iter_encode_images(self.tiles, batch_size=32), store)


def test_gui_stays_responsive_while_encoding(viewer: Any, qtbot: Any, tiny_model: Any) -> None:
    from napari_clipmed._widgets._session import ModelChoice

    tiles = np.random.default_rng(0).integers(0, 256, (1500, 64, 64, 3), dtype=np.uint8)
    widget = EncodeWidget(viewer, tiles)
    viewer.window.add_dock_widget(widget)
    widget.session.model, widget.session.choice = tiny_model, ModelChoice("tiny-random")
    latency, ticks = run_and_probe(qtbot, widget)
    assert widget.result is not None and widget.result.shape == (1500, tiny_model.embed_dim)
    np.testing.assert_allclose(widget.result[:5], tiny_model.encode_images(tiles[:5]), atol=1e-5)
    assert ticks >= 20, "the job was too short to measure the event loop"
    assert latency < MAX_LATENCY_S, f"the event loop stalled for {latency * 1000:.0f} ms during the run"


def test_gui_stays_responsive_during_a_ct_montage(viewer: Any, qtbot: Any, tiny_model: Any, ct_layer: Any) -> None:
    from napari_clipmed._widgets._session import ModelChoice
    from napari_clipmed._widgets.ct_montage import CTMontageWidget

    widget = CTMontageWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.session.model, widget.session.choice = tiny_model, ModelChoice("tiny-random")
    widget.k.value = 9
    widget.stride.value = 8.0  # many candidate patches: a run long enough to measure
    latency, ticks = run_and_probe(qtbot, widget)
    assert widget.last_error is None and widget.montage_layer is not None
    assert ticks >= 20, "the job was too short to measure the event loop"
    assert latency < MAX_LATENCY_S, f"the event loop stalled for {latency * 1000:.0f} ms during the run"
