"""Helpers shared by the GUI tests (importable because pytest puts `tests/` on the path)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


def load_tiny(widget: Any) -> Any:
    """Load the tiny random model into the widget's viewer session, synchronously."""
    from napari_clipmed._widgets._session import ModelChoice, session_for

    return session_for(widget.viewer).load_now(ModelChoice("tiny-random"))


def wait_done(qtbot: Any, widget: Any, worker: Any, timeout: int = 30_000) -> None:
    """Wait until the widget is done with `worker` (a state, not a signal: a fast worker can finish
    before a signal wait would start listening)."""
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is not worker, timeout=timeout)


def notification_messages() -> list[str]:
    """Every napari notification shown so far, as text."""
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The real sample images beside the checkout (`../shared/data`)."""


# --- event-loop latency (tests/gui/test_responsiveness.py, tests/gui/test_slide_widgets.py) ---------------
INTERVAL_MS = 10


class LatencyProbe:
    """Records the tick times of a 10 ms QTimer."""

    def __init__(self) -> None:
        self.ticks: list[float] = []
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(INTERVAL_MS)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> float:
        """The worst latency seen (seconds)."""
        self.timer.stop()
        gaps = np.diff(self.ticks)
        return float(gaps.max() - INTERVAL_MS / 1000.0)


def run_and_probe(qtbot: Any, widget: Any) -> tuple[float, int]:
    """Run the widget's job; probe the event loop from start until its result reaches the GUI thread.

    Adding the result layers afterwards is napari's own GUI work (layer controls, vispy visuals),
    not model work, so it is outside the window.
    """
    probe = LatencyProbe()
    measured: list[float] = []
    run_job = widget.run_job

    def probed_run_job(job: Any, on_result: Any, **kwargs: Any) -> Any:
        def on_result_probed(result: Any) -> None:
            measured.append(probe.stop())
            on_result(result)

        return run_job(job, on_result_probed, **kwargs)

    widget.run_job = probed_run_job  # type: ignore[method-assign]
    probe.start()
    worker = widget.run()
    assert worker is not None, widget.last_error
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)  # the base clears it when finished
    assert len(measured) == 1, widget.last_error
    return measured[0], len(probe.ticks)
