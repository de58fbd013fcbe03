"""Screenshots of every napari-clipmed widget with results, for the docs (one PNG of the whole window each).

Opens a real napari window with the packaged samples, runs each widget with the tiny random CLIP
(so results appear; they are meaningless), and saves `docs/screenshots/<widget>.png`. Widgets
whose module is missing are skipped with a printed note.

Run: `xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/screenshots.py [--out docs/screenshots]`
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

WINDOW = (1680, 1050)


def wait_idle(widget: Any, timeout: float = 600.0) -> None:
    """Process Qt events until the widget's job (and its model session) is done."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        app.processEvents()
        preview = getattr(widget, "preview_worker", None)  # the corruption explorer's live preview
        busy = widget.worker is not None or widget.session.loading or bool(getattr(preview, "is_running", False))
        if not busy:
            break
        time.sleep(0.02)
    for _ in range(20):  # let the canvas and the dock repaint
        app.processEvents()
        time.sleep(0.02)
    if widget.last_error:
        print(f"  note: the widget reported: {widget.last_error}")


def _sample(viewer: Any, key: str) -> Any:
    (layer,) = viewer.open_sample("napari-clipmed", key)
    return layer


def drive_ct(viewer: Any, widget: Any) -> None:
    ct = _sample(viewer, "chest_ct")
    widget.image.value = ct
    widget.k.value = 16
    widget.run()
    wait_idle(widget)
    widget.patch_table.selectRow(0)  # go to the best patch's slice
    viewer.reset_view()  # the volume and the montage side by side
    wait_idle(widget)


def drive_corruption(viewer: Any, widget: Any) -> None:
    widget.source_layer.value = _sample(viewer, "he_marker_ink")
    widget.kind.value = "hue" if "hue" in widget.kind.choices else widget.kind.choices[0]  # visible at any zoom
    widget.severity.value = 3.0
    widget.run()
    wait_idle(widget)
    viewer.reset_view()


def drive_zeroshot(viewer: Any, widget: Any) -> None:
    widget.image_layer.value = _sample(viewer, "he_carcinoma")
    widget.tile_size.value = 200
    widget.stride.value = 200
    widget.run()
    wait_idle(widget)
    viewer.reset_view()


def _tile_gallery(root: Path) -> Path:
    """A small ImageFolder of 128 px tiles cut from the two H&E samples (labels: carcinoma, skin)."""
    from PIL import Image

    from napari_clipmed import _sample_data

    for label, data in (("carcinoma", _sample_data.he_carcinoma()), ("skin", _sample_data.he_marker_ink())):
        pixels = data[0][0]
        (root / label).mkdir(parents=True, exist_ok=True)
        for i, r in enumerate(range(0, pixels.shape[0] - 127, 200)):
            for j, c in enumerate(range(0, pixels.shape[1] - 127, 200)):
                Image.fromarray(pixels[r : r + 128, c : c + 128]).save(root / label / f"{label}_{i}_{j}.png")
    return root


def drive_retrieval(viewer: Any, widget: Any) -> None:
    layer = _sample(viewer, "he_carcinoma")
    gallery = _tile_gallery(Path(tempfile.mkdtemp(prefix="clipmed-gallery-")))
    widget.folder.value = gallery
    widget.build_index()
    wait_idle(widget)
    widget.image_layer.value = layer
    shapes = viewer.add_shapes([np.array([[300, 300], [300, 556], [556, 556], [556, 300]])], shape_type="rectangle",
                               name="query", edge_color="cyan", face_color="transparent", edge_width=6)
    widget.shapes_layer.value = shapes
    if hasattr(widget, "query_mode"):
        widget.query_mode.value = [c for c in widget.query_mode.choices if c != "whole image"][0] \
            if len(widget.query_mode.choices) > 1 else widget.query_mode.value
    widget.run()
    wait_idle(widget)
    viewer.reset_view()


def drive_slide(viewer: Any, widget: Any) -> None:
    """The zero-shot widget on a whole slide (the real SVS with green ink): tissue layer and a heat map."""
    from napari_clipmed.io.slide import open_slide
    from napari_clipmed.pathology.tissue import detect_tissue

    svs = Path(__file__).resolve().parents[2] / "shared" / "data" / "pathology" / "cmu_small_region.svs"
    (layer,) = viewer.open(str(svs), plugin="napari-clipmed")
    with open_slide(svs) as slide:
        labels, kwargs, _ = detect_tissue(slide).to_layer_data(slide.mpp, name="tissue (2 = ink)")
    viewer.add_labels(labels, **kwargs, visible=False)
    widget.image_layer.value = layer
    widget.preset.value = "custom"
    widget.classes.value = "epidermis\ndermis\ninflammation"
    widget.tile_size.value = 224
    widget.run()
    wait_idle(widget)
    viewer.reset_view()


def _save_small_png(rgba: np.ndarray, path: Path, max_bytes: int = 400_000) -> None:
    """A PNG of the window, written atomically; a 256-colour one when full colour would exceed `max_bytes`."""
    import io
    import os

    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(np.asarray(rgba)[..., :3]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    if buffer.tell() > max_bytes:  # photos (H&E) compress badly; an octree palette keeps small UI colours
        buffer = io.BytesIO()
        image.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(buffer, format="PNG", optimize=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


DRIVERS: dict[str, tuple[str, Callable[[Any, Any], None]]] = {
    "ct_montage": ("CT: ILD patch montage", drive_ct),
    "corruption_explorer": ("Pathology: corruption explorer", drive_corruption),
    "zeroshot_labels": ("Zero-shot labels", drive_zeroshot),
    "retrieval": ("Retrieval", drive_retrieval),
    "slide_heatmap": ("Zero-shot labels", drive_slide),
}


def shoot(out_dir: Path, only: list[str] | None = None) -> list[Path]:
    import napari

    from napari_clipmed import api
    from napari_clipmed.commands.gui import WIDGETS, widget_class

    targets = dict(WIDGETS)
    saved: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for key, (display, drive) in DRIVERS.items():
        if only and key not in only:
            continue
        cls = widget_class(targets[display])
        if cls is None:
            print(f"skipping {key}: its widget module is not there yet")
            continue
        viewer = napari.Viewer(title=f"napari-clipmed: {display}", show=True)
        viewer.window._qt_window.resize(*WINDOW)
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=display, area="right")
        api.load_model(viewer, "tiny-random")
        if widget.model_panel is not None:
            widget.model_panel.model_name.value = "tiny-random"
        print(f"{key}: running ...", flush=True)
        try:
            drive(viewer, widget)
        except Exception as err:  # noqa: BLE001 - one widget's failure should not stop the others
            print(f"  {key}: could not drive the widget: {type(err).__name__}: {err}")
        path = out_dir / f"{key}.png"
        _save_small_png(viewer.window.screenshot(canvas_only=False, flash=False), path)
        print(f"  saved {path} ({path.stat().st_size / 1e3:.0f} kB)")
        saved.append(path)
        viewer.close()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "screenshots"))
    parser.add_argument("--only", nargs="*", choices=list(DRIVERS), help="just these widgets")
    args = parser.parse_args()
    shoot(Path(args.out), args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
