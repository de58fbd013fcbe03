"""Corruption explorer: an RGB image, a corruption kind and a severity slider with a live,
debounced preview in ONE separate layer, plus a "Severity strip" of all levels 0..4.

The source layer is never changed. Each slider/kind/seed change restarts a 150 ms timer; when it
fires, the corruption runs in a worker and its result replaces the preview layer's data and
name ("<source> [blur 2.5]"). At most one preview computes at a time: settings changed meanwhile
wait for it, its (outdated) result is dropped, and only the latest settings are computed next.
Images with a side over `MAX_PREVIEW_SIDE` px are previewed (and stripped) on their central
crop of that size, at full resolution, placed where it sits in the source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, FloatSlider, SpinBox
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel

from napari_clipmed._widgets import _path_layers as pl
from napari_clipmed._widgets._base import ClipmedWidget
from napari_clipmed._widgets._slide import is_slide_layer, slide_region_source
from napari_clipmed.errors import ClipmedError, InputError

if TYPE_CHECKING:
    import napari

DEBOUNCE_MS = 150


class CorruptionExplorerWidget(ClipmedWidget):
    """Preview the study's corruptions on an RGB layer as the severity slider moves."""

    needs_model = False
    run_text = "Severity strip"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from napari_clipmed.pathology.params import MAX_SEVERITY, list_corruptions

        super().__init__(viewer)
        self.preview_layer: Any = None
        self.preview_worker: Any = None  # the latest preview computation
        self.preview_requests = 0  # previews started (one per debounced change)
        self._workers: set[Any] = set()
        self._pending = False  # settings changed while a preview was computing
        self.source_layer = self.layer_combo("image (RGB)", self._accepts)
        self.kind = ComboBox(label="corruption", choices=list_corruptions(), value="blur")
        self.severity = FloatSlider(label="severity", min=0.0, max=float(MAX_SEVERITY), step=0.1, value=2.0)
        self.seed = SpinBox(label="seed", value=0, min=0, max=2**31 - 1, tooltip="ink strokes of 'markup' depend on it")
        self.live = CheckBox(label="live preview", value=True)
        self.form.extend([self.source_layer, self.kind, self.severity, self.seed, self.live])
        self.parameter = QLabel("")
        self.parameter.setWordWrap(True)
        layout = self.layout()
        layout.insertWidget(layout.indexOf(self.form.native) + 1, self.parameter)
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.request_preview)
        for w in (self.source_layer, self.kind, self.severity, self.seed, self.live):
            w.changed.connect(self._changed)
        self.reset_choices()
        self._describe()

    def _accepts(self, layer: Any) -> bool:
        from napari.layers import Image

        return isinstance(layer, Image) and layer is not self.preview_layer and "corruption" not in layer.metadata

    def _describe(self) -> None:
        from napari_clipmed.pathology.params import get_corruption

        spec = get_corruption(self.kind.value)
        value = spec.parameter_at(self.severity_value)
        self.parameter.setText(f"{spec.parameter} = {value:.3g}")
        self.parameter.setToolTip(f"{spec.description}\nSource: {spec.source}")

    @property
    def severity_value(self) -> float:
        return round(float(self.severity.value), 1)

    def _changed(self, *_: object) -> None:
        self._describe()
        self._debounce.start()  # (re)start: only the last of a burst of changes is computed

    # --- live preview -----------------------------------------------------------------------------
    def request_preview(self) -> object | None:
        """Start computing the preview for the current settings (drops any older request's result)."""
        from napari.qt.threading import create_worker

        if not self.live.value or self.source_layer.value is None:
            return None
        if self._workers:  # one computation at a time; the latest settings follow it
            self._pending = True
            return None
        kind, severity, seed = self.kind.value, self.severity_value, int(self.seed.value)
        try:
            layer = self.source_layer.value
            source = slide_region_source(self.viewer, layer) if is_slide_layer(layer) else pl.rgb_source(layer)
        except ClipmedError as err:
            self.fail(str(err))
            return None
        self.preview_requests += 1
        request = self.preview_requests

        def compute() -> tuple:  # runs in the worker thread
            return pl.corrupt_source(source, kind, severity, seed), pl.corrupted_kwargs(source, kind, severity, seed)

        worker = create_worker(compute, _start_thread=False, _ignore_errors=True)
        self._workers.add(worker)
        self.preview_worker = worker
        worker.returned.connect(lambda result: self._show_preview(request, result, source))
        worker.errored.connect(lambda err: self._preview_failed(request, err))
        worker.finished.connect(lambda: self._preview_done(worker))
        self.controls.status.setText(f"preview: {pl.corruption_tag(kind, severity)} ...")
        worker.start()
        return worker

    def _preview_done(self, worker: Any) -> None:
        self._workers.discard(worker)
        if self._pending and not self._workers:
            self._pending = False
            self.request_preview()

    def _show_preview(self, request: int, result: tuple, source: pl.SourceImage) -> None:
        if request != self.preview_requests or self._pending:
            return  # newer settings are waiting: this result is outdated
        data, kwargs = result
        self.last_error = None
        layer = self.preview_layer
        if layer is None or layer not in self.viewer.layers:
            self.preview_layer = self.viewer.add_image(data, **kwargs)
            self.reset_choices()
        else:
            layer.data = data
            layer.scale, layer.translate = kwargs["scale"], kwargs["translate"]
            layer.metadata = kwargs["metadata"]
            layer.name = kwargs["name"]
        crop = f" (central {data.shape[0]} x {data.shape[1]} px crop)" if source.cropped else ""
        self.controls.status.setText(f"preview: {kwargs['name']}{crop}")

    def _preview_failed(self, request: int, err: Exception) -> None:
        if request == self.preview_requests and not self._pending:
            self.fail(str(err) if isinstance(err, ClipmedError) else f"{type(err).__name__}: {err}")

    # --- severity strip ---------------------------------------------------------------------------
    def run(self) -> object | None:
        """All severities of the chosen corruption side by side, as a new layer (in a worker)."""
        try:
            layer = self.source_layer.value
            if layer is None:
                raise InputError("add an RGB image layer to corrupt")
            source = slide_region_source(self.viewer, layer) if is_slide_layer(layer) else pl.rgb_source(layer)
        except ClipmedError as err:
            self.fail(str(err))
            return None
        kind, seed = self.kind.value, int(self.seed.value)

        def show(result: tuple) -> None:
            strip, kwargs = result
            self.viewer.add_image(strip, **kwargs)

        return self.run_job(
            lambda: pl.iter_severity_strip(source, kind, seed), show, description=f"{kind} at every severity ..."
        )

    def _disconnect(self, *_: object) -> None:
        try:
            self._debounce.stop()
        except RuntimeError:  # the timer (a child) is already deleted
            pass
        for worker in list(self._workers):
            worker.quit()
        super()._disconnect()
