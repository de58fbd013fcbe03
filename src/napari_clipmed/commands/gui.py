"""`clipmed napari`: open napari with the sample chest CT and H&E image and every napari-clipmed widget docked.

napari and Qt are imported only when the command runs, so `clipmed --help` and the batch
subcommands stay light. Widgets whose module is missing are skipped with a printed note.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

# (display name in napari.yaml, "module:Class"): the order they are docked in
WIDGETS: tuple[tuple[str, str], ...] = (
    ("CT: ILD patch montage", "napari_clipmed._widgets.ct_montage:CTMontageWidget"),
    ("Pathology: corruption explorer", "napari_clipmed._widgets.corruption_explorer:CorruptionExplorerWidget"),
    ("Zero-shot labels", "napari_clipmed._widgets.zeroshot_labels:ZeroShotLabelsWidget"),
    ("Retrieval", "napari_clipmed._widgets.retrieval:RetrievalWidget"),
)
SAMPLES: tuple[str, ...] = ("chest_ct", "he_carcinoma")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "napari",
        help="open napari with the samples and the napari-clipmed widgets",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("paths", nargs="*", help="files or DICOM folders to open as well (CT volumes, slides)")
    parser.add_argument("--no-samples", action="store_true", help="do not open the sample chest CT and H&E image")
    parser.add_argument("--model", default=None, help="load this model on start (e.g. tiny-random, pathclip)")
    parser.add_argument("--weights", default=None, help="checkpoint for --model")
    parser.set_defaults(func=run)


def widget_class(target: str) -> type | None:
    """The widget class named by "module:Class", or None (with a note) when its module is not there."""
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except ImportError as err:
        if getattr(err, "name", None) and not module_name.startswith(str(err.name)):
            raise  # the module exists but something it imports is missing: a real error
        print(f"clipmed napari: note: {target} is not available ({err}); skipping it", file=sys.stderr)
        return None


def dock_widgets(viewer: Any, widgets: tuple[tuple[str, str], ...] = WIDGETS) -> dict[str, Any]:
    """Create and dock the widgets (tabbed on the right); returns {display name: widget}."""
    docked: dict[str, Any] = {}
    for name, target in widgets:
        cls = widget_class(target)
        if cls is None:
            continue
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=name, area="right", tabify=bool(docked))
        docked[name] = widget
    return docked


def open_viewer(
    paths: tuple[str, ...] | list[str] = (),
    *,
    samples: bool = True,
    model: str | None = None,
    weights: str | None = None,
    show: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """A napari viewer with the samples (and `paths`) open and the widgets docked; optionally a model loading."""
    import napari

    viewer = napari.Viewer(title="napari-clipmed", show=show)
    return viewer, setup_viewer(viewer, paths, samples=samples, model=model, weights=weights)


def setup_viewer(
    viewer: Any,
    paths: tuple[str, ...] | list[str] = (),
    *,
    samples: bool = True,
    model: str | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """Open the samples and `paths` in `viewer`, dock the widgets, start loading `model`; returns the widgets."""
    from napari_clipmed.session import ModelChoice, session_for

    if samples:
        for key in SAMPLES:
            viewer.open_sample("napari-clipmed", key)
        _show_first_layer_only(viewer)
    for path in paths:
        viewer.open(path)
    docked = dock_widgets(viewer)
    if model:
        session_for(viewer).load(ModelChoice(model, weights))
    return docked


def _show_first_layer_only(viewer: Any) -> None:
    """The CT and the H&E image live in different worlds (mm vs pixels): show the CT, hide the rest."""
    for layer in list(viewer.layers)[1:]:
        layer.visible = False
    if len(viewer.layers):
        viewer.layers.selection.active = viewer.layers[0]
        viewer.reset_view()


def run(args: argparse.Namespace) -> int:
    import napari

    open_viewer(args.paths, samples=not args.no_samples, model=args.model, weights=args.weights)
    napari.run()
    return 0
