"""Zero-shot labels widget: editable classes and templates (or a preset), run on the whole image as
tiles or on rectangles drawn in a Shapes layer; the predicted label and class probabilities of each
tile/rectangle land in a new Shapes layer (features, colour by class, text = label).

The user's layers are never modified: rectangles are copied into the output layer. Run it on a
corrupted layer (corruption explorer) to watch the labels change with severity.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, RadioButtons, SpinBox, TextEdit
from qtpy.QtWidgets import QLabel

from napari_clipmed._widgets import _path_layers as pl
from napari_clipmed._widgets._base import ClipmedWidget, notify_info
from napari_clipmed._widgets._slide import add_layer_data, drawn_region, is_slide_layer, slide_geometry, slide_mpp
from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.progress import Progress
from napari_clipmed.zeroshot import PromptSet, format_classes, list_presets, parse_classes

if TYPE_CHECKING:
    import napari

TILES, RECTANGLES = "tiles", "rectangles"
CUSTOM = "custom"


def _is_2d_image(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image) and layer.ndim == 2


def _is_shapes(layer: Any) -> bool:
    from napari.layers import Shapes

    return isinstance(layer, Shapes)


def image_tiles(pixels: np.ndarray, tile: int, stride: int, tissue_only: bool, min_tissue: float = 0.5) -> np.ndarray:
    """Pixel boxes (row0, col0, row1, col1) of the full tiles of `pixels` on a `stride` grid; with
    `tissue_only`, only tiles at least `min_tissue` inside the tissue mask."""
    from napari_clipmed.pathology.tiles import tile_image

    rgb = pl.display_uint8(pixels)
    mask = None if tissue_only else np.ones(rgb.shape[:2], dtype=bool)
    tiles = tile_image(rgb, tile, stride, min_tissue=min_tissue if tissue_only else 0.0, mask=mask)
    corners = tiles.coords.reshape(-1, 2)
    return np.concatenate([corners, corners + tile], axis=1).astype(np.int64)


def gate_top_tiles(result: Any) -> Any:
    """The quality gate on the slide's top tiles (their pixels are in the result), in `ranking()` order,
    or the reason it could not be applied (worker thread)."""
    from napari_clipmed.ops.qc import gate_images

    tiles = [result.top_tiles[int(t)] for t in result.ranking()["tile"]]
    try:
        return gate_images(tiles) if tiles else None
    except InputError as err:
        return str(err)


class ZeroShotLabelsWidget(ClipmedWidget):
    """Label tiles or drawn rectangles of an image with a zero-shot CLIP classifier."""

    run_text = "Label"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self._filling = False
        self.image_layer = self.layer_combo("image", _is_2d_image)
        self.preset = ComboBox(label="preset", choices=[*list_presets(), CUSTOM], value=CUSTOM)
        self.classes = TextEdit(
            label="classes", tooltip="one class per line; 'name: synonym 1; synonym 2' for several names"
        )
        self.templates = TextEdit(
            label="templates", tooltip="one prompt template per line, with {} where the class name goes"
        )
        self.mode = RadioButtons(label="run on", choices=[TILES, RECTANGLES], value=TILES, orientation="horizontal")
        self.tile_size = SpinBox(label="tile size (px)", value=224, min=8, max=8192)
        self.stride = SpinBox(label="stride (px)", value=224, min=8, max=8192)
        self.tissue_only = CheckBox(label="tissue tiles only", value=True)
        self.shapes_layer = self.layer_combo("rectangles", _is_shapes)
        self.quality_gate = CheckBox(label="mark tiles failing the quality gate", value=True,
                                     tooltip="focus, resolution, ink, exposure, saturation, tissue (docs/quality.md); "
                                     "failing tiles get a thick red outline, their measures go in the features")
        self.skip_failing = CheckBox(label="skip failing tiles", value=False,
                                     tooltip="leave tiles that fail the gate unlabelled ('uncertain'), saying why")
        # whole slides: tiles are read from the file at this magnification (see _widgets/_slide.py)
        self.target_mpp = FloatSpinBox(label="slide tiles (µm/px)", value=0.5, min=0.05, max=50.0, step=0.05)
        self.slide_mpp = FloatSpinBox(label="slide µm/px (0: file)", value=0.0, min=0.0, max=50.0, step=0.01,
                                      tooltip="the slide's own pixel size, when its file does not say")
        self.form.extend(
            [self.image_layer, self.preset, self.classes, self.templates, self.mode, self.tile_size, self.stride,
             self.tissue_only, self.shapes_layer, self.target_mpp, self.slide_mpp, self.quality_gate,
             self.skip_failing]
        )
        self.legend = QLabel("")
        self.legend.setWordWrap(True)
        layout = self.layout()
        layout.insertWidget(layout.indexOf(self.form.native) + 1, self.legend)
        self.preset.changed.connect(self._fill_preset)
        # QTextEdit.textChanged carries no value, so magicgui's TextEdit.changed never fires: use Qt's signal
        self.classes.native.textChanged.connect(self._edited)
        self.templates.native.textChanged.connect(self._edited)
        presets = list_presets()
        self.preset.value = presets[0] if presets else CUSTOM
        self.reset_choices()

    # --- prompts ----------------------------------------------------------------------------------
    def _fill_preset(self, name: str) -> None:
        if name == CUSTOM:
            return
        try:
            prompts = PromptSet.parse(name)
        except ClipmedError as err:
            self.fail(str(err))
            return
        self._filling = True
        try:
            self.classes.value = format_classes(prompts.classes)
            self.templates.value = "\n".join(prompts.templates)
        finally:
            self._filling = False
        self._update_legend()

    def _edited(self, *_: object) -> None:
        if not self._filling and self.preset.value != CUSTOM:
            self._filling = True
            try:
                self.preset.value = CUSTOM  # the user changed a preset: it is now their own prompt set
            finally:
                self._filling = False
        self._update_legend()

    def _update_legend(self) -> None:
        try:
            names = list(parse_classes(self.classes.value))
        except InputError:
            names = []
        colours = pl.class_colors(names)
        self.legend.setText(
            " ".join(
                f'<span style="background-color:{c}">&nbsp;&nbsp;&nbsp;&nbsp;</span>&nbsp;{html.escape(n)}&nbsp;&nbsp;'
                for n, c in colours.items()
            )
        )

    # --- running ----------------------------------------------------------------------------------
    def run(self) -> object | None:
        """Classify tiles (or the drawn rectangles) of the chosen image in a worker; add one Shapes layer."""
        from napari_clipmed.zeroshot import ZeroShotClassifier, iter_classify_images

        try:
            model = self.session.require()
            layer = self.image_layer.value
            if layer is None:
                raise InputError("add a 2-D image layer (RGB or grey) to label")
            prompts = PromptSet.parse(self.classes.value, self.templates.value, name=self.preset.value)
            if is_slide_layer(layer):
                return self._run_slide(layer, model, prompts)
            source = pl.image_source(layer)
            mode = self.mode.value
            boxes: np.ndarray | None = None
            if mode == RECTANGLES:
                shapes = self.shapes_layer.value
                if shapes is None:
                    raise InputError("add a Shapes layer and draw rectangles on the image, or run on tiles")
                boxes = pl.shapes_to_boxes(shapes, source)
            tile, stride, tissue_only = int(self.tile_size.value), int(self.stride.value), bool(self.tissue_only.value)
            use_gate = bool(self.quality_gate.value) or bool(self.skip_failing.value)
            skip = bool(self.skip_failing.value)
        except ClipmedError as err:
            self.fail(str(err))
            return None

        def job():  # runs in the worker thread
            yield Progress(0, 1, "embedding the class prompts")
            classifier = ZeroShotClassifier.from_prompts(model, prompts)
            found = boxes
            if found is None:
                yield Progress(0, 1, "finding tissue tiles")
                found = image_tiles(source.pixels, tile, stride, tissue_only)
                if len(found) == 0:
                    where = "with tissue " if tissue_only else ""
                    raise InputError(
                        f"no {tile} x {tile} tile {where}fits in '{source.name}' "
                        f"({source.full_shape[0]} x {source.full_shape[1]} px); lower the tile size"
                        + (" or untick 'tissue tiles only'" if tissue_only else "")
                    )
            crops = pl.crop_boxes(source.pixels, found)
            result = yield from iter_classify_images(model, crops, classifier)
            verdict = None
            if use_gate:
                from napari_clipmed.ops.qc import gate_images

                yield Progress(0, 1, "checking tile quality")
                try:
                    verdict = gate_images(crops)
                except InputError as err:  # e.g. rectangles too small to measure: label them, say so
                    verdict = str(err)
            return found, result, verdict

        def show(outcome: tuple) -> None:
            found, result, verdict = outcome
            what = f"{mode} {tile}px" if mode == TILES else mode
            data, kwargs = pl.zeroshot_shapes(
                found,
                result.classes,
                result.probabilities,
                source.geometry,
                name=f"{source.name} labels [{what}]",
                metadata={
                    "source": source.name,
                    "mode": mode,
                    "prompts": {"classes": {k: list(v) for k, v in prompts.classes.items()},
                                "templates": list(prompts.templates), "preset": prompts.name},
                    "model": getattr(model.spec, "name", ""),
                    "tile_size": tile if mode == TILES else None,
                    "stride": stride if mode == TILES else None,
                },
            )
            if isinstance(verdict, str):
                notify_info(f"quality gate not applied: {verdict}")
            elif verdict is not None:
                from napari_clipmed.ops.qc import mark_failing

                kwargs = mark_failing(kwargs, verdict, skip_failing=skip)
                failed = int((~verdict.passed).sum())
                if failed:
                    notify_info(f"{failed} of {len(verdict)} tiles failed the quality gate"
                                + (" and were left unlabelled ('uncertain')" if skip else " (red outline)")
                                + "; see quality_reasons in the layer's features")
            self.viewer.add_shapes(data, **kwargs)
            self._update_legend()

        return self.run_job(job, show, description=f"labelling '{source.name}' ({mode}) ...")

    def _run_slide(self, layer: Any, model: Any, prompts: PromptSet) -> object | None:
        """A whole slide: tissue tiles at the target magnification, streamed from the file (ops.slide_zeroshot)."""
        from napari_clipmed.ops.slide_common import SlideTiling
        from napari_clipmed.ops.slide_zeroshot import SlideZeroShotRequest, iter_run

        region = drawn_region(self.shapes_layer.value, layer) if self.mode.value == RECTANGLES else None
        tiling = SlideTiling(
            float(self.target_mpp.value), int(self.tile_size.value), 0.5 if self.tissue_only.value else 0.0,
            slide_mpp(layer, self.slide_mpp.value), region,
        )
        request = SlideZeroShotRequest(layer.metadata["path"], prompts, tiling)
        geometry = slide_geometry(layer)

        use_gate, skip = bool(self.quality_gate.value) or bool(self.skip_failing.value), bool(self.skip_failing.value)

        def job():  # worker thread: the slide, then the gate on its top tiles
            result = yield from iter_run(request, model)
            verdict = None
            if use_gate:
                yield Progress(0, 1, "checking the quality of the top tiles")
                verdict = gate_top_tiles(result)
            return result, verdict

        def show(outcome: tuple) -> None:
            from napari_clipmed.ops.qc import mark_failing

            result, verdict = outcome
            layers = result.to_layer_data(geometry)
            if isinstance(verdict, str):
                notify_info(f"quality gate not applied: {verdict}")
            elif verdict is not None:
                layers = [(d, mark_failing(k, verdict, skip_failing=skip), kind) if kind == "shapes" else (d, k, kind)
                          for d, k, kind in layers]
            add_layer_data(self.viewer, layers)
            notify_info(f"'{layer.name}': {result.grid.describe()}; slide class (top-{result.top_j} mean): "
                        f"{result.slide_scores()['predicted']}")

        return self.run_job(job, show, description=f"slide '{layer.name}': finding tissue ...")
