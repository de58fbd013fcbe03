"""Shared wiring of the napari-clipmed widgets: model panel, layer choosers, worker with progress and cancel.

A widget subclasses `ClipmedWidget`, adds its inputs to `self.form`, and calls `self.run_job(...)`
with a generator of `Progress` from core; results reach `on_result` on the GUI thread, which is
the only place layers are touched. Errors become napari notifications; a cancelled run changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

import pandas  # noqa: F401  (see below)
from magicgui.widgets import ComboBox, Container, FileEdit, PushButton
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from napari_clipmed.session import ModelChoice, ModelSession, availability, session_for
from napari_clipmed.errors import ClipmedError
from napari_clipmed.progress import Progress

# pandas is imported with the widgets, not first inside a job: its first import builds the DataFrame
# class while holding the GIL (0.6 s measured), which froze the viewer mid-run when a worker thread
# (e.g. a slide's ranking of top tiles) was the first to import it.

if TYPE_CHECKING:
    import napari


def notify_error(message: str) -> None:
    from napari.utils.notifications import show_error

    show_error(f"napari-clipmed: {message}")


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(f"napari-clipmed: {message}")


class ModelPanel(Container):
    """Model name + optional checkpoint + precision + Load button + status line (device and precision, or what is missing)."""

    def __init__(self, session: ModelSession, default: str = "pathclip") -> None:
        from napari_clipmed.models.registry import list_models

        self.session = session
        names = list_models()
        self.model_name = ComboBox(label="model", choices=names, value=default if default in names else names[0])
        self.weights = FileEdit(label="checkpoint", mode="r", value="", nullable=True, tooltip=(
            "Optional: a checkpoint file (or Hugging Face folder). Empty: look in the weights folder, "
            "then download when online."
        ))
        self.precision = ComboBox(label="precision", choices=["auto", "fp32", "bf16"], value="auto", tooltip=(
            "The image tower's precision. auto: on a GPU bf16/fp16; on a CPU bf16 only where its bf16 units "
            "(AMX, AVX-512 BF16) measure clearly faster at load, else fp32. The status line says which and why."
        ))
        self.load_button = PushButton(text="Load model")
        super().__init__(widgets=[self.model_name, self.weights, self.precision, self.load_button], labels=True)
        self.status = QLabel(session.message)
        self.status.setWordWrap(True)
        self.native.layout().addWidget(self.status)
        self.load_button.changed.connect(self._load)
        self.model_name.changed.connect(self._show_availability)
        self.weights.changed.connect(self._show_availability)
        self._show_availability()
        session.status.connect(self._show_status)
        session.busy.connect(self._busy)

    def choice(self) -> ModelChoice:
        weights = self.weights.value
        path = str(weights) if weights not in (None, "") and str(weights) not in ("", ".") else None
        return ModelChoice(self.model_name.value, path, self.precision.value)

    def _load(self) -> None:
        self.session.load(self.choice())

    def _show_availability(self, *_: object) -> None:
        """Before a model is loaded, say whether the chosen one can be (and which file is missing where)."""
        if self.session.model is None and not self.session.loading:
            self.status.setText(availability(self.choice()))

    def _show_status(self, message: str) -> None:
        self.status.setText(message)

    def _busy(self, busy: bool) -> None:
        self.load_button.enabled = not busy

    def disconnect_session(self) -> None:
        self.session.status.disconnect(self._show_status)
        self.session.busy.disconnect(self._busy)


class JobControls(QWidget):
    """Run and Cancel buttons with a progress bar and a status line."""

    def __init__(self, run_text: str = "Run") -> None:
        super().__init__()
        self.run_button = QPushButton(run_text)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)

    def show_progress(self, step: Progress) -> None:
        self.progress.setRange(0, max(step.total, 1))
        self.progress.setValue(min(step.done, max(step.total, 1)))
        if step.message:
            self.status.setText(step.message)


class ClipmedWidget(QWidget):
    """Base class: a model panel (when `needs_model`), the subclass's `form`, and job controls."""

    needs_model: bool = True
    default_model: str = "pathclip"  # preselected in the model panel
    run_text: str = "Run"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.session = session_for(viewer)
        self.worker = None
        self._cancel_requested = False
        self.last_error: str | None = None
        self._layer_combos: list[ComboBox] = []
        self._disconnected = False
        layout = QVBoxLayout(self)
        self.model_panel: ModelPanel | None = None
        if self.needs_model:
            self.model_panel = ModelPanel(self.session, self.default_model)
            layout.addWidget(self.model_panel.native)
        self.form = Container(labels=True)
        layout.addWidget(self.form.native)
        self.controls = JobControls(self.run_text)
        layout.addWidget(self.controls)
        layout.addStretch(1)
        self.controls.run_button.clicked.connect(self._on_run_clicked)
        self.controls.cancel_button.clicked.connect(self.cancel)
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.reset_choices)
        self.destroyed.connect(self._disconnect)

    # --- layer choosers -------------------------------------------------------------------------
    def layer_combo(self, label: str, accept: Callable[[Any], bool]) -> ComboBox:
        """A combo box of the viewer's layers that `accept` (refreshed as layers change)."""

        def choices(_widget: object) -> list[tuple[str, Any]]:
            return [(layer.name, layer) for layer in self.viewer.layers if accept(layer)]

        combo = ComboBox(label=label, choices=choices, nullable=False)
        self._layer_combos.append(combo)
        return combo

    def reset_choices(self, *_: object) -> None:
        for combo in self._layer_combos:
            combo.reset_choices()

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Closing the widget disconnects it from the viewer and the session (as destroying it does)."""
        self._disconnect()
        super().closeEvent(event)

    def _disconnect(self, *_: object) -> None:
        """Undo every connection this widget made to the viewer, its layers and the session (idempotent)."""
        events = self.viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            try:
                event.disconnect(self.reset_choices)
            except (RuntimeError, TypeError, ValueError):  # pragma: no cover - already gone
                pass
        if self.model_panel is not None and not self._disconnected:
            self.model_panel.disconnect_session()
        self._disconnected = True

    # --- running jobs ---------------------------------------------------------------------------
    def _on_run_clicked(self) -> None:
        self.run()

    def run(self) -> object | None:
        """Validate inputs and start the job; returns the worker (None when refused)."""
        raise NotImplementedError

    def fail(self, message: str) -> None:
        """Tell the user what is wrong (notification + status line); nothing else changes."""
        self.last_error = message
        self.controls.status.setText(message)
        notify_error(message)

    def run_job(
        self,
        job: Callable[[], Generator[Progress, None, Any]],
        on_result: Callable[[Any], None],
        *,
        description: str = "",
    ) -> object | None:
        """Run the generator `job()` in a napari worker; `on_result` gets its return value on the GUI thread."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            self.fail("a run is already in progress; cancel it or wait for it to finish")
            return None
        self.last_error = None
        self._cancel_requested = False

        running: list[Generator[Progress, None, Any]] = []

        def drive() -> Generator[Progress, None, Any]:
            # A generator *function*: napari only makes a GeneratorWorker (yielded signal, quit at
            # each yield) for those, and `job` is often a lambda that returns a generator.
            running.append(job())
            return (yield from running[-1])

        worker = create_worker(drive, _start_thread=False, _ignore_errors=True)  # `errored` reports them
        self.worker = worker
        started = time.perf_counter()
        self.controls.run_button.setEnabled(False)
        self.controls.cancel_button.setEnabled(True)
        self.controls.progress.setRange(0, 0)  # busy until the first progress report
        self.controls.status.setText(description or "running ...")

        def returned(result: Any) -> None:
            if self._cancel_requested:  # cancelled after the last progress step: drop the result
                self.controls.status.setText("cancelled: nothing was changed")
                return
            try:
                on_result(result)
            except ClipmedError as err:
                self.fail(str(err))
                return
            self.controls.status.setText(f"done in {time.perf_counter() - started:.1f} s")

        def errored(err: Exception) -> None:
            self.fail(str(err) if isinstance(err, ClipmedError) else f"{type(err).__name__}: {err}")

        def aborted() -> None:
            self.controls.status.setText("cancelled: nothing was changed")

        def finished() -> None:
            for gen in running:  # napari leaves a quit generator suspended: run its cleanup (files, readers) now
                gen.close()
            self.worker = None
            self.controls.run_button.setEnabled(True)
            self.controls.cancel_button.setEnabled(False)
            self.controls.progress.setRange(0, 1)
            self.controls.progress.setValue(1 if self.last_error is None else 0)

        worker.yielded.connect(lambda step: self.controls.show_progress(step) if isinstance(step, Progress) else None)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        worker.start()
        return worker

    def cancel(self) -> None:
        """Ask the running job to stop at its next progress step."""
        if self.worker is not None:
            self._cancel_requested = True
            self.controls.status.setText("cancelling ...")
            self.worker.quit()
