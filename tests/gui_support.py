"""Helpers shared by the GUI tests (importable because pytest puts `tests/` on the path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tiny(widget: Any) -> Any:
    """Load the tiny random model into the widget's viewer session, synchronously."""
    from napari_clipmed.session import ModelChoice, session_for

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
