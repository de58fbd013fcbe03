"""Retrieval widget driven like a user: index a folder of real H&E tiles, query, export, errors, cancel.

References: the hits are checked against a brute-force search written here (embeddings of the
tile files by `model.encode_images`, cosine similarity with numpy), and a query equal to a
gallery tile must retrieve that file first with similarity 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip  # noqa: F401  - load torch's triton before Qt's OpenGL stack (their LLVMs clash: segfault)
import pandas as pd
import pytest
import tifffile
from gui_support import SHARED_DATA, load_tiny, notification_messages, wait_done
from PIL import Image
from qtpy.QtCore import Qt

from napari_clipmed._widgets.retrieval import RECTANGLE, RetrievalWidget
from napari_clipmed.models.cache import EmbeddingCache
from napari_clipmed.retrieval import EmbeddingIndex

DATA = SHARED_DATA / "pathology"
TILE = 64


@pytest.fixture(scope="module")
def sources() -> dict[str, np.ndarray]:
    he = np.asarray(Image.open(DATA / "he_carcinoma_tiatoolbox.png").convert("RGB"))
    with tifffile.TiffFile(DATA / "cmu_small_region.svs") as tif:
        skin = tif.pages[0].asarray()[:, :, :3]
    return {"carcinoma": he[:512, :512].copy(), "skin": skin[800:1312, 1000:1512].copy()}


def _tile_boxes() -> list[tuple[int, int]]:
    return [(r, c) for r in (0, 128, 256) for c in (64, 256)]


@pytest.fixture
def gallery(tmp_path: Path, sources: dict[str, np.ndarray]) -> Path:
    """ImageFolder: 6 carcinoma + 6 skin tiles of 64 x 64, plus one unreadable file."""
    root = tmp_path / "gallery"
    for label, image in sources.items():
        (root / label).mkdir(parents=True)
        for i, (r, c) in enumerate(_tile_boxes()):
            Image.fromarray(image[r : r + TILE, c : c + TILE]).save(root / label / f"{label}_{i}.png")
    (root / "skin" / "broken.png").write_bytes(b"not a png")
    return root


@pytest.fixture
def widget(viewer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> RetrievalWidget:
    monkeypatch.setenv("CLIPMED_CACHE_DIR", str(tmp_path / "cache"))
    w = RetrievalWidget(viewer)
    viewer.window.add_dock_widget(w)
    return w








def _build(qtbot, w: RetrievalWidget, folder: Path) -> None:
    w.folder.value = folder
    w.build_button.native.click()  # as a user would
    wait_done(qtbot, w, w.worker)
    assert w.last_error is None, w.last_error


def test_build_query_export(qtbot, widget: RetrievalWidget, gallery: Path, tmp_path: Path) -> None:
    model = load_tiny(widget)
    _build(qtbot, widget, gallery)
    assert [Path(p).name for p, _ in widget.unreadable] == ["broken.png"]  # reported, not fatal
    assert any("skipped 1 unreadable" in m for m in notification_messages())
    index = widget.index
    assert index is not None and len(index) == 12
    assert sorted(set(index.labels.tolist())) == ["carcinoma", "skin"]
    assert "broken.png" not in " ".join(index.ids.tolist())
    assert len(EmbeddingCache().for_signature(model.signature)) == 12  # the model's cache was used

    query_file = gallery / "skin" / "skin_3.png"
    query = np.asarray(Image.open(query_file))
    layer = widget.viewer.add_image(query.copy(), name="query tile", rgb=True)
    widget.image_layer.value = layer
    widget.k.value = 5
    n_layers = len(widget.viewer.layers)
    qtbot.mouseClick(widget.controls.run_button, Qt.MouseButton.LeftButton)
    wait_done(qtbot, widget, widget.worker)
    assert widget.last_error is None, widget.last_error
    assert len(widget.viewer.layers) == n_layers + 2
    grid_layer, labels_layer = widget.viewer.layers[-2], widget.viewer.layers[-1]
    assert grid_layer.rgb and grid_layer.data.dtype == np.uint8 and grid_layer.name == "hits: query tile"
    hits = grid_layer.metadata["hits"]
    assert list(hits["rank"]) == [1, 2, 3, 4, 5]
    assert Path(hits["path"].iloc[0]) == query_file and hits["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-5)

    # independent brute-force reference over the files on disk
    files = sorted(p for p in gallery.rglob("*_*.png"))
    emb = model.encode_images([np.asarray(Image.open(p)) for p in files])
    sims = emb @ model.encode_images([query])[0]
    order = np.argsort(-sims, kind="stable")[:5]
    np.testing.assert_allclose(hits["similarity"], sims[order], atol=1e-5)
    assert list(hits["label"]) == [files[i].parent.name for i in order]
    # each grid cell shows its tile; the overlay carries the same table as features
    r0, c0, r1, c1 = hits.loc[1, ["cell_row0", "cell_col0", "cell_row1", "cell_col1"]]
    expected = np.asarray(Image.open(hits["path"].iloc[1]).resize((r1 - r0, c1 - c0), Image.Resampling.BILINEAR))
    assert np.abs(grid_layer.data[r0:r1, c0:c1].astype(int) - expected).mean() < 2
    shown = labels_layer.features.reset_index(drop=True)
    pd.testing.assert_frame_equal(shown[list(hits.columns)], hits, check_dtype=False)
    assert {"quality_focus", "quality_passed", "quality_reasons"} <= set(shown.columns)  # the gate on each hit
    assert widget.table.rowCount() == 5 and widget.table.item(0, 1).text() == "skin"

    widget.csv_file.value = tmp_path / "hits.csv"
    widget.export_button.native.click()
    frame = pd.read_csv(tmp_path / "hits.csv")
    assert list(frame.columns) == ["query", "rank", "index", "path", "label", "similarity"]
    np.testing.assert_allclose(frame["similarity"], hits["similarity"], atol=1e-6)
    assert set(frame["query"]) == {"query tile"}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    # save and load the index; an index of another model is refused at search time
    widget.save_file.value = tmp_path / "tiles"
    saved = widget.save_index()
    assert saved == tmp_path / "tiles.npz"
    original = widget.index
    widget.index = None
    widget.index_file.value = saved
    widget.load_index()
    np.testing.assert_array_equal(widget.index.embeddings, original.embeddings)
    assert widget.index.model_id == original.model_id and list(widget.index.ids) == list(original.ids)

    other = EmbeddingIndex(original.embeddings, labels=original.labels, ids=original.ids, model_id="plip@0123456789ab")
    widget.index_file.value = other.save(tmp_path / "other.npz")
    widget.load_index()
    widget.viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="q", rgb=True)
    n_layers = len(widget.viewer.layers)
    assert widget.run() is None
    assert "plip@0123456789ab" in widget.last_error and "rebuild the index" in widget.last_error
    assert widget.last_error in notification_messages()[-1]
    assert len(widget.viewer.layers) == n_layers


def test_rectangle_query_and_cancel(qtbot, widget: RetrievalWidget, gallery: Path, sources) -> None:
    load_tiny(widget)
    _build(qtbot, widget, gallery)
    viewer = widget.viewer
    image = viewer.add_image(sources["carcinoma"].copy(), name="slide", rgb=True, scale=(0.5, 0.5), translate=(10, 20))
    r, c = _tile_boxes()[4]  # gallery tile carcinoma_4 sits at pixels [r:r+64, c:c+64]
    decoy = np.array([[0, 0], [0, 30], [30, 30], [30, 0]], dtype=float)
    target = np.array([[r, c], [r, c + TILE], [r + TILE, c + TILE], [r + TILE, c]], dtype=float) * 0.5 + [10, 20]
    shapes = viewer.add_shapes([decoy, target], shape_type="rectangle", name="roi")
    before = [s.copy() for s in shapes.data]
    widget.image_layer.value, widget.shapes_layer.value = image, shapes
    widget.query_mode.value = RECTANGLE
    widget.k.value = 3
    wait_done(qtbot, widget, widget.run())
    assert widget.last_error is None, widget.last_error
    hits = viewer.layers[-2].metadata["hits"]
    assert Path(hits["path"].iloc[0]).name == "carcinoma_4.png"
    assert hits["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-5)
    assert hits["query"].iloc[0] == f"slide [{r}:{r + TILE}, {c}:{c + TILE}]"
    for a, b in zip(shapes.data, before):  # the user's rectangles are untouched
        np.testing.assert_array_equal(a, b)

    # cancelling a search or a build leaves the viewer and the index as they were
    n_layers, index = len(viewer.layers), widget.index
    worker = widget.run()
    widget.cancel()
    wait_done(qtbot, widget, worker)
    assert len(viewer.layers) == n_layers and widget.controls.status.text().startswith("cancelled")
    worker = widget.build_index()
    widget.cancel()
    wait_done(qtbot, widget, worker)
    assert widget.index is index and widget.last_error is None


def test_bad_inputs_notify_and_add_nothing(qtbot, widget: RetrievalWidget, gallery: Path, tmp_path: Path) -> None:
    viewer = widget.viewer
    viewer.add_image(np.zeros((32, 32, 3), np.uint8), name="q", rgb=True)
    n_layers = len(viewer.layers)
    widget.folder.value = gallery
    assert widget.build_index() is None  # no model loaded
    assert "load a model first" in widget.last_error and widget.last_error in notification_messages()[-1]

    load_tiny(widget)
    empty = tmp_path / "empty"
    empty.mkdir()
    widget.folder.value = empty
    assert widget.build_index() is None  # refused when the request is built, before any worker starts
    assert "holds no images" in widget.last_error and widget.index is None

    assert widget.run() is None
    assert "build or load an index" in widget.last_error
    _build(qtbot, widget, gallery)
    widget.k.value = 13
    assert widget.run() is None
    assert "k=13 is larger than the gallery: it has 12 items" in widget.last_error
    widget.query_mode.value = RECTANGLE
    widget.k.value = 2
    assert widget.run() is None
    assert "Shapes layer" in widget.last_error
    widget.csv_file.value = tmp_path / "x.csv"
    assert widget.export_csv() is None and "no hits" in widget.last_error
    assert len(viewer.layers) == n_layers and not (tmp_path / "x.csv").exists()


def test_index_from_a_manifest(qtbot, widget: RetrievalWidget, gallery: Path, tmp_path: Path) -> None:
    """A CSV manifest (path,label; relative paths) chosen in the widget wins over the folder field."""
    load_tiny(widget)
    rows = ["path,label,split"]
    for i in range(4):
        rows += [f"gallery/carcinoma/carcinoma_{i}.png,tumour,test", f"gallery/skin/skin_{i}.png,normal,test"]
    manifest = tmp_path / "tiles.csv"
    manifest.write_text("\n".join(rows) + "\n")
    widget.folder.value = gallery  # 12 readable tiles: not what gets indexed
    widget.manifest.value = manifest
    widget.build_button.native.click()
    wait_done(qtbot, widget, widget.worker)
    assert widget.last_error is None, widget.last_error
    index = widget.index
    assert len(index) == 8 and sorted(set(index.labels.tolist())) == ["normal", "tumour"]
    assert Path(index.ids[0]).name == "carcinoma_0.png" and index.labels[0] == "tumour"
    np.testing.assert_allclose(index.embeddings[0], widget.session.model.encode_images(
        [np.asarray(Image.open(gallery / "carcinoma" / "carcinoma_0.png").convert("RGB"))])[0], atol=1e-5)
    widget.manifest.value = tmp_path / "nothing.txt"
    (tmp_path / "nothing.txt").write_text("x")
    assert widget.build_index() is None and "csv manifest" in widget.last_error


def test_flat_folder_index_and_grid_without_viewer(tiny_model, tmp_path: Path, sources) -> None:
    from napari_clipmed.ops.retrieval import IndexRequest, build_index, hits_frame, hits_grid

    flat = tmp_path / "flat"
    flat.mkdir()
    for i, (r, c) in enumerate(_tile_boxes()[:4]):
        Image.fromarray(sources["skin"][r : r + TILE, c : c + TILE]).save(flat / f"t{i}.png")
    build = build_index(IndexRequest(flat), tiny_model)
    assert build.index.labels is None and len(build.index) == 4 and not build.labelled
    hits = build.index.search(build.index.embeddings[2], 3)
    frame = hits_frame(hits, "q")
    assert list(frame["label"]) == ["", "", ""] and Path(frame["path"][0]).name == "t2.png"
    grid, kwargs = hits_grid([np.zeros((10, 20, 3), np.uint8), None, None], frame, cell=32, gap=2)
    assert grid.shape == (2 * 32 + 2, 2 * 32 + 2, 3)  # 3 cells on a 2 x 2 grid
    assert (grid[:32, 34:66] == 128).all()  # a missing file is a grey cell
    assert (grid[8:24, :32] == 0).all() and (grid[:8, :32] == 255).all()  # a 10 x 20 tile fits 16 x 32, centred
