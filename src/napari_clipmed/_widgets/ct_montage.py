"""CT ILD patch montage widget: score lung patches of a CT volume with CLIP, show the top k and the verdict.

The core (`napari_clipmed.ct.pipeline.iter_run_ct_montage`) runs in a worker: lung mask, patches of a
physical size, zero-shot scores against ILD finding prompts, top k spread out in 3-D, a montage
and its zero-shot class probabilities (ILD vs no ILD, or UIP vs other). The widget adds the
chosen patch boxes (Shapes, on their slices) and the montage (RGB Image), fills a probability
table and a patch table; picking a row, or clicking a montage cell, goes to that patch.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from magicgui.widgets import ComboBox, FloatSpinBox, LineEdit, SpinBox
from qtpy.QtWidgets import QAbstractItemView, QPlainTextEdit, QTableWidget, QTableWidgetItem, QTabWidget

from napari_clipmed._widgets import _layers
from napari_clipmed._widgets._base import ClipmedWidget, notify_info
from napari_clipmed.ct.io import CTWarning
from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.zeroshot import format_classes, parse_classes

if TYPE_CHECKING:
    import napari

    from napari_clipmed.ct.pipeline import CTMontageResult

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
        self.result: CTMontageResult | None = None
        self.boxes_layer: Any = None
        self.montage_layer: Any = None
        self._source: Any = None
        self._table_frame: Any = None

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
        self.class_set = ComboBox(label="classes", choices=[*_layers.CLASS_SET_NAMES, "custom"],
                                  value="ILD vs no ILD")
        self.form.extend([self.image, self.mask, self.patch_size, self.stride, self.k, self.min_distance,
                          self.normal, self.class_set])

        self.patch_prompts = QPlainTextEdit(format_classes(dict(ILD_PATCH_PROMPTS)))
        self.patch_prompts.setToolTip("one finding per line: 'name' or 'name: phrasing 1; phrasing 2'")
        self.class_prompts = QPlainTextEdit(format_classes(_layers.class_prompts_for("ILD vs no ILD")))
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
            self.class_prompts.setPlainText(format_classes(_layers.class_prompts_for(name)))
            self.class_prompts.blockSignals(False)

    def _on_class_text_edited(self) -> None:
        if self.class_set.value != "custom":
            with self.class_set.changed.blocked():
                self.class_set.value = "custom"

    def config(self) -> Any:
        """The run's `CTMontageConfig` from the fields (InputError says which one is wrong)."""
        normals = tuple(n.strip() for n in self.normal.value.split(",") if n.strip())
        return _layers.montage_config(
            patch_size_mm=self.patch_size.value,
            stride_mm=self.stride.value,
            k=self.k.value,
            min_distance_mm=self.min_distance.value,
            patch_prompts=parse_classes(self.patch_prompts.toPlainText()),
            normal_classes=normals,
            class_prompts=parse_classes(self.class_prompts.toPlainText()),
        )

    # --- run ---------------------------------------------------------------------------------------
    def run(self) -> object | None:
        """Check the inputs and start the montage in a worker (None and a notification when refused)."""
        from napari_clipmed.ct.pipeline import iter_run_ct_montage

        layer = self.image.value
        try:
            if layer is None:
                raise InputError("open a CT volume first (File > Open, or File > Open Sample > Chest CT)")
            config = self.config()
            model = self.session.require()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CTWarning)  # shown below as a notification instead
                volume = _layers.volume_from_layer(layer)
            mask = self._mask_for(volume.shape)
        except ClipmedError as err:
            self.fail(str(err))
            return None
        for note in volume.notes:
            notify_info(f"{layer.name}: {note}")

        geometry = _layers.VolumeGeometry.of(layer)

        def job() -> Any:
            result = yield from iter_run_ct_montage(volume, model, config, mask)
            return result, _layers.montage_layers(result, geometry)  # built off the GUI thread

        def show(out: tuple[CTMontageResult, tuple[Any, Any]]) -> None:
            self.show_result(out[0], layer, out[1])

        return self.run_job(job, show, description=f"scoring lung patches of {layer.name} ...")

    def _mask_for(self, shape: tuple[int, ...]) -> Any:
        import numpy as np

        labels = self.mask.value
        if labels is None:
            return None
        data = np.asarray(labels.data)
        if data.shape != tuple(shape):
            raise InputError(f"lung mask '{labels.name}' has shape {data.shape}, the CT volume {tuple(shape)}")
        return data != 0

    # --- results -----------------------------------------------------------------------------------
    def show_result(self, result: CTMontageResult, source: Any, layers: tuple[Any, Any] | None = None) -> None:
        """Add the layers (built in the worker when given) and fill the tables (GUI thread)."""
        self.result, self._source = result, _layers.VolumeGeometry.of(source)
        self.boxes_layer, self.montage_layer = _layers.add_montage_layers(self.viewer, result, source, layers)
        self.montage_layer.mouse_drag_callbacks.append(self._on_montage_click)
        self._table_frame = self.boxes_layer.features
        self._fill_tables(result)
        self.viewer.layers.selection.active = self.montage_layer  # so a click on a cell reaches it

    def _fill_tables(self, result: CTMontageResult) -> None:
        probs = _layers.probability_table(result)
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
        _layers.go_to_patch(self.viewer, self._table_frame, rank, self._source)
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
