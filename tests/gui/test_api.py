"""Scripted API for the pathology operations (the CT one is tested with its widget in test_ct_montage.py).

References: the core functions called directly (`corrupt`, `classify_images`) and cosine
similarities computed here from embeddings of the hit tiles read back from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from napari_clipmed import api


@pytest.fixture
def he(viewer: Any) -> Any:
    (layer,) = viewer.open_sample("napari-clipmed", "he_carcinoma")
    return layer


def test_corrupt_layer_matches_the_core(viewer: Any, he: Any) -> None:
    from napari_clipmed.pathology.corrupt import corrupt

    before = np.array(he.data, copy=True)
    new = api.corrupt_layer(viewer, he, "hue", 3.0, seed=1)
    np.testing.assert_array_equal(new.data, corrupt(before, "hue", 3.0, seed=1))
    assert new.rgb and new.name == "H&E carcinoma [hue 3]"
    np.testing.assert_array_equal(he.data, before)
    assert not np.array_equal(new.data, before)


def test_zeroshot_labels_on_rectangles_and_tiles(viewer: Any, he: Any, tiny_model: Any) -> None:
    from napari_clipmed.zeroshot import classify_images

    api.load_model(viewer, "tiny-random")
    boxes = [(100, 120, 300, 360), (500, 500, 700, 640)]
    rects = [np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], float) for r0, c0, r1, c1 in boxes]
    shapes = viewer.add_shapes(rects, shape_type="rectangle", name="rois")
    classes = {"tumour": ("tumor cells",), "stroma": ("stroma",), "lymphocytes": ("lymphocytes",)}
    result = api.zeroshot_labels(viewer, he, classes, templates=["an H&E image of {}."], shapes_layer=shapes)
    crops = [he.data[r0:r1, c0:c1] for r0, c0, r1, c1 in boxes]
    ref = classify_images(tiny_model, crops, classes, ["an H&E image of {}."])
    np.testing.assert_allclose(result.probabilities, ref.probabilities, atol=1e-5)
    labels = viewer.layers[-1]
    assert len(labels.data) == 2
    assert list(labels.features["label"]) == ref.predicted

    tiles = api.zeroshot_labels(viewer, he, preset="osteosarcoma", tile_size=250, tissue_only=False)
    assert tiles.probabilities.shape[0] == 16  # a 1000 px image holds 4 x 4 tiles of 250 px
    np.testing.assert_allclose(tiles.probabilities.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="either classes or a preset"):
        api.zeroshot_labels(viewer, he)


def test_retrieve_finds_the_identical_tile(viewer: Any, he: Any, tiny_model: Any, tmp_path: Path) -> None:
    from napari_clipmed.ops.retrieval import IndexRequest, build_index

    api.load_model(viewer, "tiny-random")
    for label, (r, c) in {"a": (0, 0), "b": (300, 300), "c": (600, 100)}.items():
        folder = tmp_path / "gallery" / label
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.ascontiguousarray(he.data[r + 60 * i : r + 60 * i + 128, c : c + 128])).save(
                folder / f"{label}{i}.png")
    index = build_index(IndexRequest(tmp_path / "gallery"), tiny_model).index
    rect = np.array([[300, 300], [300, 428], [428, 428], [428, 300]], float)  # exactly tile b0
    shapes = viewer.add_shapes([rect], shape_type="rectangle", name="query")
    frame = api.retrieve(viewer, he, index, k=4, shapes_layer=shapes)
    assert list(frame["rank"]) == [1, 2, 3, 4]
    assert Path(frame["path"].iloc[0]).name == "b0.png" and frame["label"].iloc[0] == "b"
    query = tiny_model.encode_images([np.ascontiguousarray(he.data[300:428, 300:428])])[0]
    hits = tiny_model.encode_images([np.asarray(Image.open(p).convert("RGB")) for p in frame["path"]])
    np.testing.assert_allclose(frame["similarity"], hits @ query, atol=1e-4)
    assert frame["similarity"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    assert [layer.name for layer in viewer.layers][-2:] == [f"hits: {frame['query'].iloc[0]}",
                                                           f"hits: {frame['query'].iloc[0]} labels"]


def test_quality_gate_outlines_tiles_by_verdict(viewer: Any, he: Any) -> None:
    from napari_clipmed.pathology.corrupt import corrupt

    blurred = viewer.add_image(corrupt(np.asarray(he.data)[:, :256], "blur", 4.0), name="blurred", rgb=True,
                               scale=(0.5, 0.5))
    result = api.quality_gate(viewer, blurred, tile_size=128)
    layer = viewer.layers[-1]
    assert layer.name == "blurred quality [128px]" and tuple(layer.scale) == (0.5, 0.5)
    assert len(layer.features) == len(result.verdict) and not result.verdict.passed.any()
    assert layer.features["reasons"].str.contains("focus").all()
    assert np.allclose(layer.edge_color, [0.839, 0.153, 0.157, 1.0], atol=0.01)
