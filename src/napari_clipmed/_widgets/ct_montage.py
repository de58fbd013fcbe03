"""CT ILD patch montage widget: score lung patches of a CT volume with CLIP, show the top k and the verdict.

The operation (`napari_clipmed.ops.ct_montage`) runs in a worker: lung mask, patches of a
physical size, zero-shot scores against ILD finding prompts, top k spread out in 3-D, a montage
and its zero-shot class probabilities (ILD vs no ILD, or UIP vs other). The widget adds the
chosen patch boxes (Shapes, on their slices) and the montage (RGB Image), fills a probability
table and a patch table; picking a row, or clicking a montage cell, goes to that patch.

With the coarse-to-fine search (the default) the montage, boxes and tables appear after the first
round and are updated in place as later rounds finish, marked "refining (round 2 of <= 4)"; a
cancelled run keeps its last complete round on screen, named partial, and writes nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtWidgets import QAbstractItemView, QPlainTextEdit, QTableWidget, QTableWidgetItem, QTabWidget

from napari_clipmed import layers
from napari_clipmed._widgets._base import ClipmedWidget, notify_info
from napari_clipmed._widgets._progressive import ProgressiveLayers
from napari_clipmed.ct.io import CTWarning
from napari_clipmed.ct.pipeline import MontageRound
from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.ops import ct_montage as op
from napari_clipmed.progress import Progress
from napari_clipmed.zeroshot import format_classes, parse_classes

if TYPE_CHECKING:
    import napari

    from napari_clipmed.ct.pipeline import CTMontageConfig

@dataclass(frozen=True)
class RoundShown(Progress):
    """A finished search round on its way to the GUI thread: its result and layer data."""

    output: Any = None
    layer_data: Any = None


PATCH_COLUMNS: tuple[tuple[str, str], ...] = (
    ("rank", "#"), ("prompt", "top finding"), ("score", "score"), ("slice", "slice"),
    ("z_mm", "z mm"), ("y_mm", "y mm"), ("x_mm", "x mm"),
)


def _is_image(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


def _is_labels(layer: Any) -> bool:
    from napari.layers import Labels

    return isinstance(layer, Labels)


class CTMontageWidget(ClipmedWidget):
    """Find the k lung patches that look most like ILD findings and classify their montage."""

    default_model = "openai-vit-b-16"
    run_text = "Build montage"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from napari_clipmed.ct.ild import ILD_PATCH_PROMPTS, NORMAL_CLASSES

        super().__init__(viewer)
        self.result: op.CTMontageOutput | None = None
        self.boxes_layer: Any = None
        self.montage_layer: Any = None
        self._source: Any = None
        self._table_frame: Any = None
        self._shown = ProgressiveLayers(viewer)  # this run's layers, updated in place round by round

        self.image = self.layer_combo("CT volume", _is_image)
        self.mask = ComboBox(label="lung mask", nullable=True, value=None, tooltip=(
            "Optional Labels layer (non-zero = lung) to use instead of the automatic lung mask"),
            choices=lambda _w: [(layer.name, layer) for layer in self.viewer.layers if _is_labels(layer)])
        self._layer_combos.append(self.mask)
        self.patch_size = FloatSpinBox(label="patch size (mm)", value=32.0, min=2.0, max=200.0, step=2.0)
        self.stride = FloatSpinBox(label="stride (mm)", value=16.0, min=1.0, max=200.0, step=2.0)
        self.k = SpinBox(label="k (patches)", value=16, min=0, max=256, tooltip="patches in the montage")
        self.min_distance = FloatSpinBox(label="min distance (mm)", value=32.0, min=0.0, max=500.0, step=2.0,
                                         tooltip="no two chosen patch centres closer than this (3-D)")
        self.normal = LineEdit(label="normal finding", value=", ".join(NORMAL_CLASSES), tooltip=(
            "patch prompt(s) that mean normal lung (comma-separated); a patch's score is 1 - P(normal)"))
        self.class_set = ComboBox(label="classes", choices=[*op.CLASS_SET_NAMES, "custom"],
                                  value="ILD vs no ILD")
        self.search = ComboBox(label="search", choices=["coarse-to-fine", "exhaustive"], value="coarse-to-fine",
                               tooltip="coarse-to-fine: a first montage from a coarse grid in a fraction of the time, "
                               "refined round by round; exhaustive: score every patch")
        self.form.extend([self.image, self.mask, self.patch_size, self.stride, self.k, self.min_distance,
                          self.normal, self.class_set, self.search])

        self.patch_prompts = QPlainTextEdit(format_classes(dict(ILD_PATCH_PROMPTS)))
        self.patch_prompts.setToolTip("one finding per line: 'name' or 'name: phrasing 1; phrasing 2'")
        self.class_prompts = QPlainTextEdit(format_classes(op.ct_prompts("ILD vs no ILD")))
        self.class_prompts.setToolTip("montage classes, one per line: 'name: phrasing 1; phrasing 2'")
        self.prompt_tabs = QTabWidget()
        self.prompt_tabs.addTab(self.patch_prompts, "ILD patch prompts")
        self.prompt_tabs.addTab(self.class_prompts, "montage classes")
        self.prompt_tabs.setMaximumHeight(150)
        self.form.native.layout().addWidget(self.prompt_tabs)
        self.class_set.changed.connect(self._on_class_set)
        self.class_prompts.textChanged.connect(self._on_class_text_edited)

        self.prob_table = QTableWidget(0, 2)
        self.prob_table.setHorizontalHeaderLabels(["class", "probability"])
        self.prob_table.setFixedHeight(84)
        self.prob_table.horizontalHeader().setStretchLastSection(True)
        self.patch_table = QTableWidget(0, len(PATCH_COLUMNS))
        self.patch_table.setHorizontalHeaderLabels([title for _, title in PATCH_COLUMNS])
        self.patch_table.setMinimumHeight(220)
        for table in (self.prob_table, self.patch_table):
            table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
            table.verticalHeader().setVisible(False)
        self.patch_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.patch_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.patch_table.itemSelectionChanged.connect(self._on_row_selected)
        main = self.layout()
        main.insertWidget(main.count() - 1, self.prob_table)
        main.insertWidget(main.count() - 1, self.patch_table)

    # --- inputs ----------------------------------------------------------------------------------
    def _on_class_set(self, name: str) -> None:
        if name != "custom":
            self.class_prompts.blockSignals(True)
            self.class_prompts.setPlainText(format_classes(op.ct_prompts(name)))
            self.class_prompts.blockSignals(False)

    def _on_class_text_edited(self) -> None:
        if self.class_set.value != "custom":
            with self.class_set.changed.blocked():
                self.class_set.value = "custom"

    def config(self) -> CTMontageConfig:
        """The run's `CTMontageConfig` from the fields (InputError says which one is wrong)."""
        return op.montage_config(
            patch_size_mm=self.patch_size.value,
            stride_mm=self.stride.value,
            k=self.k.value,
            min_distance_mm=self.min_distance.value,
            patch_prompts=parse_classes(self.patch_prompts.toPlainText()),
            normal_classes=self.normal.value,
            class_prompts=parse_classes(self.class_prompts.toPlainText()),
            search=self.search.value,
        )

    # --- run ---------------------------------------------------------------------------------------
    def run(self) -> object | None:
        """Check the inputs and start the montage in a worker (None and a notification when refused)."""
        layer = self.image.value
        try:
            if layer is None:
                raise InputError("open a CT volume first (File > Open, or File > Open Sample > Chest CT)")
            config = self.config()
            model = self.session.require()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CTWarning)  # shown below as a notification instead
                volume = layers.volume_snapshot(layer)
            mask = None if self.mask.value is None else layers.mask_snapshot(self.mask.value, volume.shape)
            request = op.CTMontageRequest(volume, config, mask)
        except ClipmedError as err:
            self.fail(str(err))
            return None
        for note in volume.notes:
            notify_info(f"{layer.name}: {note}")
        geometry = layers.volume_geometry(layer)
        self._shown = ProgressiveLayers(self.viewer)  # a new run gets new layers; the last run's stay
        name = str(volume.source or "CT")

        def job() -> Any:
            first = True
            gen = op.iter_run(request, model)
            while True:
                try:
                    step = next(gen)
                except StopIteration as stop:
                    output = stop.value
                    break
                if isinstance(step, MontageRound) and step.result is not None:
                    partial = op.CTMontageOutput(step.result, name)
                    # layer data (tables, shapes) made off the GUI thread; the first round's layers are built
                    # when added: building napari layers here would hold the GIL while the rounds flow
                    yield RoundShown(step.done, step.total, step.message, partial, partial.to_layer_data(geometry))
                    first = False
                else:
                    yield step
            data = output.to_layer_data(geometry)
            return output, data, layers.build_layers(data) if first else None

        def show(out: tuple[op.CTMontageOutput, list[Any], list[Any] | None]) -> None:
            self.show_result(out[0], geometry, out[2], out[1])

        worker = self.run_job(job, show, description=f"scoring lung patches of {layer.name} ...")
        if worker is not None:
            worker.yielded.connect(lambda step: self._show_round(step, geometry))
            worker.aborted.connect(self._keep_partial)
        return worker

    def _show_round(self, step: Any, geometry: Any) -> None:
        """A round finished: show its montage, boxes and tables (added once, then updated in place)."""
        if not isinstance(step, RoundShown) or self._cancel_requested:
            return
        r = step.output
        marker = f" (refining: round {r.search_round} of <= {r.max_rounds})"
        self.show_result(r, geometry, None, step.layer_data, suffix=marker)
        self.controls.status.setText(f"refining (round {r.search_round} of <= {r.max_rounds}): "
                                     f"{r.patches_scored} of {len(r.patches)} patches scored")

    def _keep_partial(self) -> None:
        """Cancelled: the last complete round stays on screen, named partial; nothing is written."""
        if self.result is None or not self._shown.alive() or not self.result.partial:
            return
        r = self.result
        self._shown.mark(f" (partial: round {r.search_round} of <= {r.max_rounds}, cancelled)")
        self.controls.status.setText(f"cancelled: showing round {r.search_round}'s partial result "
                                     f"({r.patches_scored} of {len(r.patches)} patches scored); nothing was saved")

    # --- results -----------------------------------------------------------------------------------
    def show_result(self, result: op.CTMontageOutput, geometry: Any, built: list[Any] | None = None,
                    layer_data: list[Any] | None = None, suffix: str = "") -> None:
        """Show a (partial or final) result: add the montage and patch boxes layers (built in the worker
        when given) the first time, update them in place after; fill the tables (GUI thread)."""
        self.result, self._source = result, geometry
        data = layer_data if layer_data is not None else result.to_layer_data(geometry)
        self._table_frame = next(kwargs["features"] for _, kwargs, kind in data if kind == "shapes")
        added = self._shown.show(data, built, suffix=suffix, then=lambda: self._fill_tables(result))
        if not result.partial:
            self._shown.flush()  # the final result: complete when the run reports done
        if added:
            self._release_montage()  # the last run's montage layer stays, without our click callback
            self.montage_layer, self.boxes_layer = self._shown.layers
            self.montage_layer.mouse_drag_callbacks.append(self._on_montage_click)  # selected: a click reaches it

    def _release_montage(self) -> None:
        """Take the montage-click callback off the montage layer (a new result, or the widget closing)."""
        layer = self.montage_layer
        if layer is not None and self._on_montage_click in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_montage_click)

    def _disconnect(self, *_: object) -> None:
        super()._disconnect()
        self._release_montage()

    def _fill_tables(self, result: op.CTMontageOutput) -> None:
        probs = result.probability_table()
        self.prob_table.setRowCount(len(probs))
        for i, (name, p) in enumerate(probs):
            self.prob_table.setItem(i, 0, QTableWidgetItem(name))
            self.prob_table.setItem(i, 1, QTableWidgetItem(f"{p:.3f}"))
        frame = self._table_frame
        self.patch_table.blockSignals(True)
        self.patch_table.setRowCount(len(frame))
        for i, row in enumerate(frame.itertuples(index=False)):
            values = row._asdict()
            for j, (col, _) in enumerate(PATCH_COLUMNS):
                value = values[col]
                text = str(int(value) + 1) if col == "rank" else (
                    f"{value:.3f}" if col == "score" else f"{value:.0f}" if col.endswith("_mm") else str(value))
                self.patch_table.setItem(i, j, QTableWidgetItem(text))
        self.patch_table.resizeColumnsToContents()
        self.patch_table.blockSignals(False)

    def go_to(self, rank: int) -> None:
        """Show patch `rank` (0 = best): its slice, centred, selected in the boxes layer and the table."""
        if self._table_frame is None or not 0 <= rank < len(self._table_frame):
            return
        layers.go_to_patch(self.viewer, self._table_frame, rank, self._source)
        if self.boxes_layer is not None and self.boxes_layer in self.viewer.layers:
            self.boxes_layer.selected_data = {rank}
        if self.patch_table.currentRow() != rank:
            self.patch_table.selectRow(rank)

    def _on_row_selected(self) -> None:
        rows = self.patch_table.selectionModel().selectedRows()
        if rows:
            self.go_to(rows[0].row())

    def _on_montage_click(self, layer: Any, event: Any) -> None:
        montage = layer.metadata.get("montage")
        if montage is None:
            return
        y, x = layer.world_to_data(event.position)[-2:]
        rank = montage.cell_at(y, x)
        if rank is not None and layer is self.montage_layer:
            self.go_to(rank)
