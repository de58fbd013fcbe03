"""Every widget disconnects what it connected when it closes: the viewer's layer events and the
session's signals get back exactly the callbacks they had before the widget was made."""

from __future__ import annotations

from typing import Any

import pytest

from napari_clipmed._widgets.corruption_explorer import CorruptionExplorerWidget
from napari_clipmed._widgets.ct_montage import CTMontageWidget
from napari_clipmed._widgets.retrieval import RetrievalWidget
from napari_clipmed._widgets.zeroshot_labels import ZeroShotLabelsWidget
from napari_clipmed.session import session_for

EVENTS = ("inserted", "removed", "reordered")


def _connections(viewer: Any) -> dict[str, int]:
    session = session_for(viewer)
    counts = {name: len(getattr(viewer.layers.events, name).callbacks) for name in EVENTS}
    counts |= {"session.status": len(session.status), "session.busy": len(session.busy)}
    return counts


@pytest.mark.parametrize("widget_class", [CTMontageWidget, CorruptionExplorerWidget, ZeroShotLabelsWidget,
                                          RetrievalWidget])
def test_closing_a_widget_disconnects_it(viewer: Any, qtbot: Any, widget_class: type) -> None:
    before = _connections(viewer)
    widget = widget_class(viewer)
    viewer.window.add_dock_widget(widget)
    during = _connections(viewer)
    assert all(during[name] > before[name] for name in EVENTS)  # it did connect
    widget.close()
    assert _connections(viewer) == before
    widget.close()  # closing twice is harmless
    assert _connections(viewer) == before
