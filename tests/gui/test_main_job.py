"""`clipmed napari`: the samples open and the four widgets dock; offline without checkpoints they say what is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_clipmed.cli import build_parser
from napari_clipmed.commands.gui import WIDGETS, setup_viewer


def test_the_command_is_registered() -> None:
    args = build_parser().parse_args(["napari", "--no-samples", "--model", "tiny-random", "a.nii.gz"])
    assert args.func.__module__ == "napari_clipmed.commands.gui"
    assert (args.no_samples, args.model, args.paths) == (True, "tiny-random", ["a.nii.gz"])


def test_viewer_opens_samples_and_docks_every_widget(viewer: Any, qtbot: Any) -> None:
    import os

    docked = setup_viewer(viewer)
    assert list(docked) == [name for name, _ in WIDGETS]  # all four widget modules exist
    ct, he = viewer.layers
    assert ct.name == "chest CT" and he.name == "H&E carcinoma"
    np.testing.assert_allclose(ct.scale, (3.0, 3.0, 3.0))
    assert ct.visible and not he.visible
    weights_dir = Path(os.environ["CLIPMED_WEIGHTS_DIR"])
    for name, widget in docked.items():
        if widget.model_panel is None:
            continue
        text = widget.model_panel.status.text()
        model = widget.model_panel.model_name.value
        assert model in text, (name, text)
        assert str(weights_dir) in text, (name, text)  # offline: says which folder the checkpoint goes in


def test_model_option_loads_it_in_the_background(viewer: Any, qtbot: Any) -> None:
    docked = setup_viewer(viewer, samples=False, model="tiny-random")
    widget = docked["CT: ILD patch montage"]
    qtbot.waitUntil(lambda: widget.session.model is not None, timeout=60_000)
    assert widget.session.model.spec.name == "tiny-random"
    assert all(w.session is widget.session for w in docked.values())  # one model per viewer
