"""The CT montage widget's coarse-to-fine search: a montage that sharpens round by round, in place.

References: the same run made directly with the core (`run_ct_montage`, same volume and config);
the layers and tables are inspected after every round, and on cancel, as a user would see them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from napari_clipmed._widgets.ct_montage import CTMontageWidget, RoundShown
from napari_clipmed.session import ModelChoice

K = 6


def _widget(viewer: Any, tiny_model: Any) -> CTMontageWidget:
    widget = CTMontageWidget(viewer)
    viewer.window.add_dock_widget(widget, name="CT montage")
    widget.session.model, widget.session.choice = tiny_model, ModelChoice("tiny-random")
    widget.k.value = K
    widget.stride.value = 8.0  # a finer grid: several refinement rounds
    return widget


def _record_rounds(widget: CTMontageWidget, on_round: Any = None) -> list[dict]:
    """Wrap the widget's round handler: after each round, what the viewer shows (pending updates applied)."""
    seen: list[dict] = []
    show_round = widget._show_round

    def recorded(step: Any, geometry: Any) -> None:
        show_round(step, geometry)
        if not isinstance(step, RoundShown) or widget._cancel_requested:
            return
        widget._shown.flush()
        seen.append({
            "round": step.output.search_round, "n_layers": len(widget.viewer.layers),
            "layers": (widget.montage_layer, widget.boxes_layer),
            "names": [layer.name for layer in widget.viewer.layers][1:],
            "montage": np.array(widget.montage_layer.data), "partial": widget.montage_layer.metadata["partial"],
            "ranks": list(widget.boxes_layer.features["patch"]), "status": widget.controls.status.text(),
            "table_rows": widget.patch_table.rowCount(), "chosen": list(step.output.chosen),
        })
        if on_round is not None:
            on_round(step)

    widget._show_round = recorded  # type: ignore[method-assign]
    return seen


def test_rounds_update_the_same_layers_in_place(viewer: Any, qtbot: Any, tiny_model: Any, ct_layer: Any,
                                                ct_crop: Any) -> None:
    from napari_clipmed.ct.pipeline import run_ct_montage

    widget = _widget(viewer, tiny_model)
    assert widget.search.value == "coarse-to-fine"  # the widget's default
    seen = _record_rounds(widget)
    widget.controls.run_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.last_error is None, widget.last_error

    assert len(seen) >= 2, "a run long enough for refinement rounds"
    first_layers = seen[0]["layers"]
    for i, s in enumerate(seen, start=1):
        assert s["round"] == i and s["n_layers"] == 3  # the CT plus one montage and one boxes layer, every round
        assert s["layers"][0] is first_layers[0] and s["layers"][1] is first_layers[1]
        assert all(f"(refining: round {i} of <= 4)" in name for name in s["names"])
        assert f"refining (round {i} of <= 4)" in s["status"]
        assert s["partial"] is True and s["ranks"] == s["chosen"] and s["table_rows"] == len(s["chosen"])
    # the final result: same layers, plain names, not partial, equal to the core's run
    assert [layer.name for layer in viewer.layers] == ["CT", "CT ILD montage", "CT ILD patches"]
    assert widget.montage_layer is first_layers[0] and widget.boxes_layer is first_layers[1]
    assert widget.montage_layer.metadata["partial"] is False
    ref = run_ct_montage(ct_crop, tiny_model, widget.config())
    np.testing.assert_array_equal(widget.result.chosen, ref.chosen)
    np.testing.assert_array_equal(widget.montage_layer.data, ref.montage.image)
    np.testing.assert_array_equal(widget.boxes_layer.features["patch"], ref.chosen)
    assert len(widget.boxes_layer.data) == len(ref.chosen) == widget.patch_table.rowCount()
    assert widget.result.patches_scored == ref.patches_scored < len(ref.patches)


def test_cancel_keeps_the_last_complete_round_marked_partial_and_writes_nothing(
        viewer: Any, qtbot: Any, tiny_model: Any, ct_layer: Any, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    widget = _widget(viewer, tiny_model)
    seen = _record_rounds(widget, on_round=lambda step: widget.cancel())  # cancel as round 1 shows
    widget.controls.run_button.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)

    assert len(seen) == 1 and widget.last_error is None
    assert len(viewer.layers) == 3
    assert all("(partial: round 1 of <= 4, cancelled)" in layer.name for layer in list(viewer.layers)[1:])
    assert widget.montage_layer.metadata["partial"] is True and widget.result.partial
    np.testing.assert_array_equal(widget.montage_layer.data, seen[0]["montage"])
    assert "partial" in widget.controls.status.text() and "nothing was saved" in widget.controls.status.text()
    assert os.listdir(tmp_path) == []


def test_event_loop_stays_responsive_while_rounds_update_in_place(viewer: Any, qtbot: Any, tiny_model: Any,
                                                                  ct_layer: Any) -> None:
    """Largest tick gap (10 ms QTimer) from the start to the final result, in-place updates included.

    Adding the first round's two layers is napari's own GUI work (layer controls, vispy visuals), as
    adding the final layers of an exhaustive run is in test_responsiveness.py: the gaps that
    contain it are left out, every later round's update is measured.
    """
    from gui_support import INTERVAL_MS, LatencyProbe

    widget = _widget(viewer, tiny_model)
    probe = LatencyProbe()
    adds: list[tuple[float, float]] = []

    def timed_show(*args: Any, **kwargs: Any) -> bool:
        start = time.perf_counter()
        added = widget._shown.show.__wrapped__(*args, **kwargs)  # type: ignore[attr-defined]
        if added:
            adds.append((start, time.perf_counter()))
        return added

    rounds: list[Any] = []
    show_round = widget._show_round

    def counted(step: Any, geometry: Any) -> None:  # no flush here: the updates run as in real use
        rounds.extend([step] if isinstance(step, RoundShown) else [])
        show_round(step, geometry)

    widget._show_round = counted  # type: ignore[method-assign]
    done: list[float] = []
    run_job = widget.run_job

    def probed_run_job(job: Any, on_result: Any, **kwargs: Any) -> Any:
        def on_result_probed(result: Any) -> None:
            done.append(time.perf_counter())
            probe.timer.stop()
            on_result(result)

        return run_job(job, on_result_probed, **kwargs)

    widget.run_job = probed_run_job  # type: ignore[method-assign]
    probe.start()
    worker = widget.run()
    assert worker is not None
    # the run replaced widget._shown: wrap the new one's show to time the first add
    timed_show.__wrapped__ = widget._shown.show  # type: ignore[attr-defined]
    widget._shown.show = timed_show  # type: ignore[method-assign]
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    assert widget.last_error is None and len(done) == 1 and len(rounds) >= 2 and len(adds) == 1
    ticks = probe.ticks
    gaps = [(a, b) for a, b in zip(ticks, ticks[1:]) if not any(a <= s and e <= b for s, e in adds)]
    assert len(gaps) >= 20, "the job was too short to measure the event loop"
    latency = max(b - a for a, b in gaps) - INTERVAL_MS / 1000.0
    assert latency < 0.100, f"the event loop stalled for {latency * 1000:.0f} ms during the run"
