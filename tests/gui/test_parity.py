"""One route from a layer to a result: the widget, `napari_clipmed.api` and the CLI give the same
result on the same input and model (tiny random CLIP), for CT montage, zero-shot labels and
retrieval; an index saved by the CLI loads in the widget and in `api`, and the other way round.

Each front end is driven as its user would: widget fields and its Run button, api calls on the
viewer's layers, `clipmed ...` command lines on files holding the same pixels. (`tiny_model` is
requested first so torch loads the way the GUI tests need, before the CLI loads its own copy.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from gui_support import SHARED_DATA, wait_done
from PIL import Image

from napari_clipmed import api
from napari_clipmed.cli import main
from napari_clipmed.zeroshot import DEFAULT_TEMPLATES

HE = SHARED_DATA / "pathology" / "he_carcinoma_tiatoolbox.png"
CLASSES = ["tumour", "stroma", "lymphocytes"]


@pytest.fixture(scope="module")
def he() -> np.ndarray:
    return np.asarray(Image.open(HE).convert("RGB"))[:336, :336].copy()


def test_zeroshot_labels_widget_api_cli(viewer: Any, qtbot: Any, tiny_model: Any, he: np.ndarray, tmp_path: Path) -> None:
    from napari_clipmed._widgets.zeroshot_labels import ZeroShotLabelsWidget

    png = tmp_path / "he.png"
    Image.fromarray(he).save(png)
    assert main(["label", str(png), "--model", "tiny-random", "--classes", ", ".join(CLASSES), "--tile-size", "112",
                 "--all-tiles", "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli = pd.read_csv(tmp_path / "cli" / "labels.csv")
    config = json.loads((tmp_path / "cli" / "config.json").read_text())

    layer = viewer.add_image(he.copy(), name="he", rgb=True)
    api.load_model(viewer, "tiny-random")
    by_api = api.zeroshot_labels(viewer, layer, ", ".join(CLASSES), tile_size=112, tissue_only=False).to_frame()

    widget = ZeroShotLabelsWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.classes.value = "\n".join(CLASSES)
    widget.templates.value = "\n".join(DEFAULT_TEMPLATES)
    widget.tile_size.value, widget.stride.value, widget.tissue_only.value = 112, 112, False
    wait_done(qtbot, widget, widget.run())
    assert widget.last_error is None, widget.last_error
    by_widget = viewer.layers[-1].features

    assert len(cli) == 9  # 336 px = 3 x 3 tiles of 112 px
    columns = ["row0", "col0", "row1", "col1", "label", *[f"p({c})" for c in CLASSES]]
    for frame in (by_api, by_widget):
        np.testing.assert_array_equal(frame[columns[:4]].to_numpy(), cli[columns[:4]].to_numpy())
        assert [str(x) for x in frame["label"]] == list(cli["label"])
        np.testing.assert_allclose(frame[columns[5:]].to_numpy(), cli[columns[5:]].to_numpy(), atol=1e-5)
    assert config["model"] == api.current_model(viewer).identity


def _gallery(root: Path, he: np.ndarray) -> Path:
    for label, (r, c) in {"tumour": (0, 0), "stroma": (150, 150)}.items():
        (root / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.ascontiguousarray(he[r + 40 * i : r + 40 * i + 96, c : c + 96])).save(
                root / label / f"{label}{i}.png")
    return root


def test_retrieval_widget_api_cli_and_index_interop(viewer: Any, qtbot: Any, tiny_model: Any, he: np.ndarray,
                                                    tmp_path: Path) -> None:
    from napari_clipmed._widgets.retrieval import RetrievalWidget

    gallery = _gallery(tmp_path / "gallery", he)
    query = np.ascontiguousarray(he[100:196, 60:156])
    Image.fromarray(query).save(tmp_path / "query.png")
    cli_index = tmp_path / "cli-index.npz"
    assert main(["retrieve", "--gallery", str(gallery), "--query", str(tmp_path / "query.png"), "--model",
                 "tiny-random", "--k", "4", "--out", str(tmp_path / "cli.csv"), "--save-index", str(cli_index),
                 "--quiet", "--no-cache"]) == 0
    cli = pd.read_csv(tmp_path / "cli.csv")

    layer = viewer.add_image(query.copy(), name="query", rgb=True)
    api.load_model(viewer, "tiny-random")
    by_api = api.retrieve(viewer, layer, cli_index, k=4)  # the CLI's index, in api

    widget = RetrievalWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.index_file.value = cli_index  # the CLI's index, in the widget
    widget.load_index()
    assert widget.index is not None and widget.last_error is None, widget.last_error
    widget.image_layer.value, widget.k.value = layer, 4
    wait_done(qtbot, widget, widget.run())
    assert widget.last_error is None, widget.last_error
    by_widget = widget.hits

    for frame in (by_api, by_widget):
        assert list(frame["path"]) == list(cli["path"]) and list(frame["label"]) == list(cli["label"])
        np.testing.assert_allclose(frame["similarity"], cli["similarity"], atol=1e-5)

    # the widget's own index, saved, answers the CLI the same way
    widget.folder.value = gallery
    wait_done(qtbot, widget, widget.build_index())
    widget.save_file.value = tmp_path / "widget-index.npz"
    saved = widget.save_index()
    assert saved is not None and widget.last_error is None, widget.last_error
    assert main(["retrieve", "--gallery", str(saved), "--query", str(tmp_path / "query.png"), "--model",
                 "tiny-random", "--k", "4", "--out", str(tmp_path / "from-widget.csv"), "--quiet", "--no-cache"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "from-widget.csv"), cli, atol=1e-5)


def test_ct_montage_widget_api_cli(viewer: Any, qtbot: Any, tiny_model: Any, ct_crop: Any, tmp_path: Path) -> None:
    import SimpleITK as sitk

    from napari_clipmed._widgets.ct_montage import CTMontageWidget

    path = tmp_path / "crop.nii.gz"
    sitk.WriteImage(ct_crop.to_sitk(), str(path))
    assert main(["ct-montage", str(path), "--model", "tiny-random", "--k", "5", "--stride-mm", "24",
                 "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    cli_scores = json.loads((tmp_path / "cli" / "scores.json").read_text())
    cli_cells = pd.read_csv(tmp_path / "cli" / "montage.csv")

    (layer,) = viewer.open(str(path), plugin="napari-clipmed")
    api.load_model(viewer, "tiny-random")
    by_api = api.ct_montage(viewer, layer, k=5, stride_mm=24.0, add_layers=False)
    by_api_c2f = api.ct_montage(viewer, layer, k=5, stride_mm=24.0, search="coarse-to-fine", add_layers=False)
    assert by_api_c2f.patches_scored < by_api.patches_scored == len(by_api.patches)

    widget = CTMontageWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.image.value = layer
    widget.k.value, widget.stride.value = 5, 24.0
    widget.search.value = "exhaustive"  # as the CLI and api default
    wait_done(qtbot, widget, widget.run(), timeout=120_000)
    assert widget.last_error is None, widget.last_error

    for result in (by_api, widget.result):
        assert result.probabilities == pytest.approx(cli_scores["probabilities"], abs=1e-5)
        cells = result.result.to_frame()
        np.testing.assert_array_equal(cells[["slice", "row", "col"]].to_numpy(), cli_cells[["slice", "row", "col"]].to_numpy())
        np.testing.assert_allclose(cells["score"], cli_cells["score"], atol=1e-5)

    # closing the widget takes its click callback off the montage layer it added
    montage = widget.montage_layer
    assert widget._on_montage_click in montage.mouse_drag_callbacks
    widget.close()
    assert widget._on_montage_click not in montage.mouse_drag_callbacks
