"""Layers that sharpen while a job runs: a round's result is added once, later rounds update it in place.

A coarse-to-fine run yields a complete partial result after every round. Adding new layers per
round would flood the layer list, so the first round's layers are added and every later round
(and the final result) replaces their data, table, metadata and name. Each update is spread over
a few turns of the Qt event loop (image, shapes, then table and name), so no single step holds
the loop long enough for a user to notice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from qtpy.QtCore import QTimer

from napari_clipmed.layers import add_layers
from napari_clipmed.ops.layerdata import LayerData


class ProgressiveLayers:
    """Owns the layers of one run: `show` adds them the first time and updates them in place after."""

    def __init__(self, viewer: Any) -> None:
        self.viewer = viewer
        self.layers: list[Any] = []
        self.names: list[str] = []  # the layers' names without a suffix
        self._pending: list[Callable[[], None]] = []

    def alive(self) -> bool:
        """True while every layer of this run is still in the viewer (the user may delete one)."""
        return bool(self.layers) and all(layer in self.viewer.layers for layer in self.layers)

    def show(self, layer_data: Sequence[LayerData], built: Sequence[Any] | None = None, suffix: str = "",
             then: Callable[[], None] | None = None) -> bool:
        """Add the layers (prebuilt in a worker when given) or update the existing ones in place.

        Layer names are the layer data's names plus `suffix` (e.g. " (refining: round 2 of <= 4)").
        Returns True when the layers were added now (the caller wires callbacks to them), False
        for an in-place update; `then` runs on the GUI thread once the update is complete.
        """
        self.names = [str(kwargs.get("name", "")) for _, kwargs, _ in layer_data]
        if not self.alive():
            self._pending.clear()
            self.layers = add_layers(self.viewer, built if built is not None else layer_data)
            self.viewer.layers.selection.active = self.layers[0]  # the first is the one to click on
            self.mark(suffix)
            if then is not None:
                then()
            return True
        steps: list[Callable[[], None]] = []
        for layer, (data, kwargs, kind) in zip(self.layers, layer_data):
            steps.append(lambda layer=layer, data=data, kind=kind: _set_data(layer, data, kind))
            if "features" in kwargs:
                steps.append(lambda layer=layer, kwargs=kwargs: setattr(layer, "features", kwargs["features"]))
            steps.append(lambda layer=layer, kwargs=kwargs: _set_looks(layer, kwargs))
        steps.append(lambda: self.mark(suffix))
        if then is not None:
            steps.append(then)
        start = not self._pending
        self._pending.extend(steps)
        if start:
            QTimer.singleShot(0, self._next)
        return False

    def mark(self, suffix: str) -> None:
        """Name every layer by its result's name plus `suffix` (e.g. a cancelled run's partial round)."""
        for layer, name in zip(self.layers, self.names):
            if layer in self.viewer.layers:
                layer.name = f"{name}{suffix}"

    def flush(self) -> None:
        """Run every pending update step now (tests, and before the widget reads the layers)."""
        while self._pending:
            self._pending.pop(0)()

    def _next(self) -> None:
        if self._pending:
            step = self._pending.pop(0)
            if self.alive():
                step()
            else:
                self._pending.clear()
        if self._pending:
            QTimer.singleShot(0, self._next)


def _set_data(layer: Any, data: Any, kind: str) -> None:
    """Replace the layer's data, unless the round left it unchanged (a shapes update is the slow one)."""
    import numpy as np

    if kind == "shapes":
        if len(layer.data) == len(data) and all(np.array_equal(a, b) for a, b in zip(layer.data, data)):
            return
        layer.data = [(vertices, "rectangle") for vertices in data]
    elif not (np.shape(layer.data) == np.shape(data) and np.array_equal(layer.data, data)):
        layer.data = data


def _set_looks(layer: Any, kwargs: dict[str, Any]) -> None:
    """Metadata in place (no event: nothing is drawn from it); scale and translate only when they change."""
    import numpy as np

    if "metadata" in kwargs:
        layer.metadata.clear()
        layer.metadata.update(kwargs["metadata"])
    for key in ("scale", "translate"):
        if key in kwargs and not np.allclose(np.asarray(getattr(layer, key)), np.asarray(kwargs[key], dtype=float)):
            setattr(layer, key, kwargs[key])
