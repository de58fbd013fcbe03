"""Retrieval widget: index a folder or CSV manifest of tiles (or load a saved index), query with a
layer or a drawn rectangle, and show the top-k hits as an image grid with similarity and label per cell.

Building, embedding the query and searching run in a worker (progress + cancel); layers are
only added in the result handler, so a cancelled or failed run leaves the viewer as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import FileEdit, PushButton, RadioButtons, SpinBox
from qtpy.QtWidgets import QLabel, QTableWidget, QTableWidgetItem

from napari_clipmed import layers
from napari_clipmed._widgets._base import ClipmedWidget, notify_info
from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.ops.retrieval import (
    GalleryBuild,
    IndexRequest,
    QueryRequest,
    RetrievalResult,
    iter_build_index,
    iter_query,
)

if TYPE_CHECKING:
    import napari
    import pandas as pd

    from napari_clipmed.retrieval import EmbeddingIndex

WHOLE, RECTANGLE = "whole image", "last rectangle"


def _is_image(layer: Any) -> bool:
    from napari.layers import Image

    return isinstance(layer, Image)


def _is_shapes(layer: Any) -> bool:
    from napari.layers import Shapes

    return isinstance(layer, Shapes)


def _path_value(edit: FileEdit) -> Path | None:
    value = edit.value
    text = "" if value is None else str(value)
    return None if text in ("", ".") else Path(text)


class RetrievalWidget(ClipmedWidget):
    """Index tiles, query with the current image or a rectangle, browse and export the top-k hits."""

    run_text = "Search"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer)
        self.index: EmbeddingIndex | None = None
        self.hits: pd.DataFrame | None = None
        self.result: RetrievalResult | None = None
        self.unreadable: list[tuple[str, str]] = []  # (path, reason) of files the last build skipped
        self.folder = FileEdit(
            label="tile folder", mode="d", tooltip="ImageFolder (one sub-folder per label) or a flat folder of tiles"
        )
        self.manifest = FileEdit(
            label="or manifest", mode="r", filter="*.csv",
            tooltip="CSV with columns path,label[,split]; used instead of the folder when chosen",
        )
        self.build_button = PushButton(text="Build index")
        self.slides_button = PushButton(text="Index slide layers", tooltip="tissue tiles of every slide layer, at 0.5 µm/px")
        self.index_file = FileEdit(label="index file", mode="r", filter="*.npz")
        self.load_button = PushButton(text="Load index")
        self.save_file = FileEdit(label="save index as", mode="w", filter="*.npz")
        self.save_button = PushButton(text="Save index")
        self.query_mode = RadioButtons(label="query", choices=[WHOLE, RECTANGLE], value=WHOLE, orientation="horizontal")
        self.image_layer = self.layer_combo("image", _is_image)
        self.shapes_layer = self.layer_combo("rectangles", _is_shapes)
        self.k = SpinBox(label="top k", value=8, min=1, max=500)
        self.csv_file = FileEdit(label="export to", mode="w", filter="*.csv")
        self.export_button = PushButton(text="Export CSV")
        self.form.extend(
            [self.folder, self.manifest, self.build_button, self.slides_button, self.index_file, self.load_button,
             self.save_file, self.save_button, self.query_mode, self.image_layer, self.shapes_layer, self.k]
        )
        self.index_status = QLabel("no index: build one from a folder or manifest, or load a saved one")
        self.index_status.setWordWrap(True)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["rank", "label", "similarity", "path"])
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        layout = self.layout()
        layout.insertWidget(layout.indexOf(self.form.native) + 1, self.index_status)
        layout.insertWidget(layout.count() - 1, self.table)
        for w in (self.csv_file, self.export_button):
            layout.insertWidget(layout.count() - 1, w.native)
        self.build_button.changed.connect(self.build_index)
        self.slides_button.changed.connect(self.index_slides)
        self.slide_index: Any = None  # ops.slide_index.SlideIndexResult of the slide layers
        self.load_button.changed.connect(self.load_index)
        self.save_button.changed.connect(self.save_index)
        self.export_button.changed.connect(self.export_csv)
        self.reset_choices()

    # --- index ------------------------------------------------------------------------------------
    def _set_index(self, index: EmbeddingIndex, origin: str) -> None:
        self.index = index
        labels = f", {len(set(index.labels.tolist()))} labels" if index.labels is not None else ", no labels"
        self.index_status.setText(f"index: {len(index)} tiles{labels}; model {index.model_id or 'unknown'} ({origin})")

    def build_index(self, *_: object) -> object | None:
        """Embed the tiles of the chosen manifest or folder (in a worker) into a new index."""
        try:
            model = self.session.require()
            source = _path_value(self.manifest) or _path_value(self.folder)
            if source is None:
                raise InputError(
                    "choose the tiles to index: a folder (ImageFolder or flat) or a CSV manifest (path,label)"
                )
            request = IndexRequest(source)
        except ClipmedError as err:
            self.fail(str(err))
            return None
        from napari_clipmed.models.cache import EmbeddingCache

        def done(build: GalleryBuild) -> None:
            self._set_index(build.index, f"built from {build.root}")
            self.unreadable = list(build.failed)
            if build.failed:
                notify_info(f"skipped {len(build.failed)} unreadable file(s), e.g. {build.failed[0][0]}")

        return self.run_job(
            lambda: iter_build_index(request, model, EmbeddingCache()), done, description=f"indexing {source} ..."
        )

    def index_slides(self, *_: object) -> object | None:
        """Embed the tissue tiles of every slide layer at the tiler's magnification (ops.slide_index)."""
        from napari_clipmed.ops.slide_index import SlideIndexRequest, iter_run

        try:
            model = self.session.require()
            slides = [layer for layer in self.viewer.layers if layers.is_slide_layer(layer)]
            if not slides:
                raise InputError("open a slide (SVS, TIFF, NDPI, ...) with napari-clipmed to index it")
            request = SlideIndexRequest(tuple(layer.metadata["path"] for layer in slides))
        except ClipmedError as err:
            self.fail(str(err))
            return None

        def done(result: Any) -> None:
            self.slide_index = result
            tiles = sum(len(e.grid) for e in result.entries)
            self.index_status.setText(
                f"slide index: {tiles:,} tissue tiles of {len(result.entries)} slide(s) at "
                f"{request.tiling.target_mpp:.2f} µm/px; query with a rectangle drawn on a slide"
            )

        return self.run_job(lambda: iter_run(request, model), done, description=f"indexing {len(slides)} slide(s) ...")

    def _run_slide(self, layer: Any, model: Any, k: int) -> object | None:
        """Query the slide index with the last rectangle drawn on a slide layer (at any zoom)."""
        if layer is None or not layers.is_slide_layer(layer):
            raise InputError("the slide index is queried with a rectangle drawn on a slide layer: pick that slide")
        box = layers.drawn_region(self.shapes_layer.value, layer)
        index, path = self.slide_index, layer.metadata["path"]
        geometries = {lyr.metadata["path"]: layers.slide_geometry(lyr) for lyr in self.viewer.layers if layers.is_slide_layer(lyr)}

        def show(hits: Any) -> None:
            layer_data = hits.to_layer_data(geometries)
            geometry = geometries[path]
            right = geometry.to_world((0.0, layer.metadata["level_shapes"][0][1] * 1.05))
            step = index.tiling.target_mpp  # hit tiles shown at their own magnification, in µm
            for _, kwargs, _ in layer_data:
                if kwargs["name"].startswith("slide hits"):  # the grid and its cell frames: beside the slide
                    kwargs |= {"scale": (step, step), "translate": (float(geometry.translate[0]), float(right[1]))}
            layers.add_layers(self.viewer, layer_data)
            frame = hits.to_frame()
            self.hits = frame.assign(query=layer.name, path=frame["slide"] + "#" + frame["tile"].astype(str), label="")
            self._fill_table(self.hits)

        return self.run_job(lambda: index.iter_query(model, path, box, k), show,
                            description=f"searching {k} tiles like the rectangle on '{layer.name}' ...")

    def load_index(self, *_: object) -> None:
        from napari_clipmed.retrieval import EmbeddingIndex

        path = _path_value(self.index_file)
        try:
            if path is None:
                raise InputError("choose an index file (.npz) to load")
            self._set_index(EmbeddingIndex.load(path), f"loaded from {path.name}")
        except ClipmedError as err:
            self.fail(str(err))

    def save_index(self, *_: object) -> Path | None:
        path = _path_value(self.save_file)
        try:
            if self.index is None:
                raise InputError("there is no index to save: build or load one first")
            if path is None:
                raise InputError("choose where to save the index (.npz)")
            saved = self.index.save(path)
        except (ClipmedError, OSError) as err:
            self.fail(str(err))
            return None
        self.controls.status.setText(f"index saved to {saved}")
        return saved

    # --- query ------------------------------------------------------------------------------------
    def request(self) -> QueryRequest:
        """The search request from the fields (InputError says which one is wrong)."""
        if self.index is None:
            raise InputError("build or load an index before searching")
        layer = self.image_layer.value
        if layer is None:
            raise InputError("add an image layer to query with")
        source = layers.image_snapshot(layer)
        shapes = None
        if self.query_mode.value != WHOLE:
            shapes = self.shapes_layer.value
            if shapes is None:
                raise InputError("add a Shapes layer and draw a rectangle to query with")
        return QueryRequest(self.index, (layers.query_region(source, shapes),), int(self.k.value))

    def run(self) -> object | None:
        """Embed the query, search the index and show the hits (in a worker)."""
        try:
            model = self.session.require()
            layer = self.image_layer.value
            if self.index is None and self.slide_index is None:
                raise InputError("build or load an index (or index the slide layers) before searching")
            if self.slide_index is not None and (self.index is None or layers.is_slide_layer(layer)):
                return self._run_slide(layer, model, int(self.k.value))
            if layer is not None and layers.is_slide_layer(layer):  # never copy a whole slide into memory
                raise InputError("to query with a region of a slide, index the slide layers first ('Index slide layers')")
            request = self.request()
            request.index.check_model(model.identity, "the queries")
        except ClipmedError as err:
            self.fail(str(err))
            return None
        query = request.queries[0]
        geometry = query.geometry

        def job() -> Any:  # runs in the worker thread
            result = yield from iter_query(request, model)
            return result, layers.build_layers(result.to_layer_data(geometry, quality_gate=True))  # tiles read off the GUI thread

        def show(out: tuple[RetrievalResult, list[Any]]) -> None:
            result, built = out
            layers.add_layers(self.viewer, built)
            self.result = result
            self.hits = built[0].metadata["hits"]  # the hits table with each grid cell's pixel box
            self._fill_table(self.hits)

        return self.run_job(job, show, description=f"searching the top {request.k} tiles for {query.name} ...")

    def _fill_table(self, frame: pd.DataFrame) -> None:
        self.table.setRowCount(len(frame))
        for i, row in enumerate(frame.itertuples(index=False)):
            for j, value in enumerate((str(row.rank), row.label, f"{row.similarity:.4f}", row.path)):
                self.table.setItem(i, j, QTableWidgetItem(value))
        self.table.resizeColumnsToContents()

    def export_csv(self, *_: object) -> Path | None:
        """Write the hits table to the chosen CSV file, atomically."""
        path = _path_value(self.csv_file)
        try:
            if self.result is None:
                raise InputError("there are no hits to export: run a search first")
            if path is None:
                raise InputError("choose a CSV file to export the hits to")
            written = self.result.save_csv(path)
        except (ClipmedError, OSError) as err:
            self.fail(str(err))
            return None
        self.controls.status.setText(f"hits written to {written}")
        return written
