"""Zero-shot labels widget: editable classes and templates (or a preset), run on the whole image as
tiles or on rectangles drawn in a Shapes layer; the predicted label and class probabilities of each
tile/rectangle land in a new Shapes layer (features, colour by class, text = label).

The user's layers are never modified: rectangles are copied into the output layer. Run it on a
corrupted layer (corruption explorer) to watch the labels change with severity.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, RadioButtons, SpinBox, TextEdit
from qtpy.QtWidgets import QLabel

from napari_clipmed import layers
from napari_clipmed._widgets._base import ClipmedWidget, notify_info
from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.ops.layerdata import class_colors
from napari_clipmed.ops.zeroshot import RECTANGLES, TILES, ZeroShotLabels, ZeroShotRequest, iter_run
from napari_clipmed.progress import Progress
from napari_clipmed.zeroshot import PromptSet, format_classes, list_presets, parse_classes

if TYPE_CHECKING:
    import napari

CUSTOM = "custom"


def _is_2d_image(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image) and layer.ndim == 2


def _is_shapes(layer: Any) -> bool:
    from napari.layers import Shapes

    return isinstance(layer, Shapes)


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
        # whole slides: tiles are read from the file at this magnification (see layers.is_slide_layer)
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
        colours = class_colors(names)
        self.legend.setText(
            " ".join(
                f'<span style="background-color:{c}">&nbsp;&nbsp;&nbsp;&nbsp;</span>&nbsp;{html.escape(n)}&nbsp;&nbsp;'
                for n, c in colours.items()
            )
        )

    # --- running ----------------------------------------------------------------------------------
    def request(self) -> ZeroShotRequest:
        """The run's request from the fields (InputError says which one is wrong)."""
        layer = self.image_layer.value
        if layer is None:
            raise InputError("add a 2-D image layer (RGB or grey) to label")
        prompts = PromptSet.parse(self.classes.value, self.templates.value, name=self.preset.value)
        source = layers.image_snapshot(layer)
        boxes = None
        if self.mode.value == RECTANGLES:
            shapes = self.shapes_layer.value
            if shapes is None:
                raise InputError("add a Shapes layer and draw rectangles on the image, or run on tiles")
            boxes = layers.shapes_to_boxes(shapes, source)
        return ZeroShotRequest(source, prompts, boxes, tile_size=int(self.tile_size.value),
                               stride=int(self.stride.value), tissue_only=bool(self.tissue_only.value),
                               quality_gate=bool(self.quality_gate.value), skip_failing=bool(self.skip_failing.value))

    def run(self) -> object | None:
        """Classify tiles (or the drawn rectangles) of the chosen image in a worker; add one Shapes layer."""
        try:
            model = self.session.require()
            layer = self.image_layer.value
            if layer is not None and layers.is_slide_layer(layer):
                prompts = PromptSet.parse(self.classes.value, self.templates.value, name=self.preset.value)
                return self._run_slide(layer, model, prompts)
            request = self.request()
        except ClipmedError as err:
            self.fail(str(err))
            return None

        def show(result: ZeroShotLabels) -> None:
            layers.add_layers(self.viewer, result.to_layer_data(request.source.geometry))
            note = result.quality_note()
            if note:
                notify_info(note)
            self._update_legend()

        return self.run_job(lambda: iter_run(request, model), show,
                            description=f"labelling '{request.source.name}' ({request.mode}) ...")

    def _run_slide(self, layer: Any, model: Any, prompts: PromptSet) -> object | None:
        """A whole slide: tissue tiles at the target magnification, streamed from the file (ops.slide_zeroshot)."""
        from napari_clipmed.ops.slide_common import SlideTiling
        from napari_clipmed.ops.slide_zeroshot import SlideZeroShotRequest
        from napari_clipmed.ops.slide_zeroshot import iter_run as iter_slide

        region = layers.drawn_region(self.shapes_layer.value, layer) if self.mode.value == RECTANGLES else None
        tiling = SlideTiling(
            float(self.target_mpp.value), int(self.tile_size.value), 0.5 if self.tissue_only.value else 0.0,
            layers.slide_mpp(layer, self.slide_mpp.value), region,
        )
        request = SlideZeroShotRequest(layer.metadata["path"], prompts, tiling)
        geometry = layers.slide_geometry(layer)

        use_gate, skip = bool(self.quality_gate.value) or bool(self.skip_failing.value), bool(self.skip_failing.value)

        def job() -> Any:  # worker thread: the slide, then the gate on its top tiles
            from napari_clipmed.ops.qc import gate_slide_top_tiles

            result = yield from iter_slide(request, model)
            verdict = None
            if use_gate:
                yield Progress(0, 1, "checking the quality of the top tiles")
                verdict = gate_slide_top_tiles(result)
            return result, verdict

        def show(outcome: tuple) -> None:
            from napari_clipmed.ops.qc import mark_layer_data

            result, verdict = outcome
            layer_data = result.to_layer_data(geometry)
            if isinstance(verdict, str):
                notify_info(f"quality gate not applied: {verdict}")
            elif verdict is not None:
                layer_data = mark_layer_data(layer_data, verdict, skip_failing=skip)
            layers.add_layers(self.viewer, layer_data)
            notify_info(f"'{layer.name}': {result.grid.describe()}; slide class (top-{result.top_j} mean): "
                        f"{result.slide_scores()['predicted']}")

        return self.run_job(job, show, description=f"slide '{layer.name}': finding tissue ...")
