"""Slide zero-shot with the tiny random model: heat maps line up with tiles, MI-Zero pooling, atomic outputs.

References: the slide layer's placement (Geometry) maps heat pixels back to level-0 pixels; the
pooled score is recomputed from the exported tile table with pandas; the streamed embeddings are
compared with the model run on tiles read one by one; tifffile reads the written heat map.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_clipmed.errors import InputError
from napari_clipmed.io.slide import open_slide
from napari_clipmed.models.loader import load_model
from napari_clipmed.ops.geometry import Geometry
from napari_clipmed.ops.slide_common import SlideTiling, iter_embed_grid
from napari_clipmed.ops.slide_zeroshot import SlideZeroShotRequest, run
from napari_clipmed.pathology.slide_tiler import make_grid, read_tiles
from napari_clipmed.progress import run_generator

CLASSES = ["tumor", "stroma", "lymphocytes"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def result(tiny, slides: dict[str, Path]):
    return run(SlideZeroShotRequest(str(slides["pyramid"]), CLASSES, top_j=4, top_k=3), tiny)


def test_streamed_embeddings_equal_the_model_on_tiles_read_directly(tiny, slides: dict[str, Path]) -> None:
    with open_slide(slides["pyramid"]) as slide:
        grid = make_grid(slide, 0.5, 224)
        streamed = run_generator(iter_embed_grid(slide, grid, tiny, batch_size=7))
        direct = tiny.encode_images(read_tiles(slide, grid, range(len(grid))))
    np.testing.assert_allclose(streamed, direct, atol=1e-5)


def test_heat_pixels_map_back_to_their_tiles_level0_boxes(result) -> None:
    slide_geometry = Geometry(scale=(0.25, 0.25), translate=(10.0, -5.0), unit="µm")
    layers = result.to_layer_data(slide_geometry)
    heat, kwargs, kind = layers[1]
    assert kind == "image" and heat.shape == result.grid.grid_shape == (6, 6)
    heat_geometry = Geometry(scale=kwargs["scale"], translate=kwargs["translate"], unit="µm")
    frame = result.to_frame()
    for i in (0, 7, len(frame) - 1):
        r, c = frame.loc[i, ["grid_row", "grid_col"]]
        box = frame.loc[i, ["y0_px", "x0_px", "y1_px", "x1_px"]].to_numpy(float)
        # the heat pixel's centre and its two far corners, in the world, then in level-0 pixel-centre coordinates
        for offset, want in (((0, 0), (box[:2] + box[2:]) / 2 - 0.5), ((-0.5, -0.5), box[:2] - 0.5), ((0.5, 0.5), box[2:] - 0.5)):
            world = heat_geometry.to_world(np.array([r, c]) + offset)
            np.testing.assert_allclose(slide_geometry.to_pixels(world), want, atol=1e-6)
        assert heat[r, c] == pytest.approx(frame.loc[i, "p(stroma)"])
    shapes, skw, skind = layers[-1]
    assert skind == "shapes" and len(shapes) == 3 * len(CLASSES) == len(skw["features"])
    first = skw["features"].iloc[0]
    np.testing.assert_allclose(shapes[0][0], [first.y0_px - 0.5, first.x0_px - 0.5])


def test_slide_score_is_the_top_j_mean_of_tile_similarities(result) -> None:
    frame = result.to_frame()
    scores = result.slide_scores()
    pooled = {c: frame[f"sim({c})"].nlargest(4).mean() for c in CLASSES}
    assert scores["pooled_similarity"] == pytest.approx(pooled, abs=1e-6)
    logits = result.logit_scale * np.array([pooled[c] for c in CLASSES])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert list(scores["probability"].values()) == pytest.approx(expected.tolist(), abs=1e-5)
    assert scores["predicted"] == CLASSES[int(np.argmax(expected))]
    np.testing.assert_allclose(frame[[f"p({c})" for c in CLASSES]].sum(axis=1), 1.0, atol=1e-5)


def test_outputs_are_written_atomically_and_read_back(tiny, slides: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "carcinoma"
    req = SlideZeroShotRequest(str(slides["pyramid"]), CLASSES, top_j=4, top_k=2, out=str(out), table_format="parquet")
    res = run(req, tiny)
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json", "heatmap.tif", "scores.json", "tiles.parquet", "top_tiles", "top_tiles.csv",
    ]
    assert json.loads((out / "scores.json").read_text()) == json.loads(json.dumps(res.slide_scores()))
    config = json.loads((out / "config.json").read_text())
    assert config["target_mpp"] == 0.5 and config["tile"] == 224 and config["model"]
    pd.testing.assert_frame_equal(pd.read_parquet(out / "tiles.parquet"), res.to_frame())
    with tifffile.TiffFile(out / "heatmap.tif") as tif:
        np.testing.assert_array_equal(tif.series[0].asarray(), res.heatmap())
    assert len(list((out / "top_tiles").glob("*.png"))) == 2 * len(CLASSES)
    assert [p.name for p in tmp_path.iterdir()] == ["carcinoma"]  # no temporary sibling left


def test_failed_run_writes_nothing_and_bad_requests_are_refused(tiny, slides: dict[str, Path], tmp_path: Path) -> None:
    class Broken:
        def __getattr__(self, name):
            return getattr(tiny, name)

        def encode_images(self, images, **kwargs):
            raise RuntimeError("device lost")

    out = tmp_path / "slide"
    with pytest.raises(RuntimeError, match="device lost"):
        run(SlideZeroShotRequest(str(slides["pyramid"]), CLASSES, out=str(out)), Broken())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="no such slide"):
        SlideZeroShotRequest(str(tmp_path / "missing.svs"), CLASSES)
    with pytest.raises(InputError, match="µm per pixel"):
        SlideZeroShotRequest(str(slides["pyramid"]), CLASSES, tiling=SlideTiling(target_mpp=0))
    with pytest.raises(InputError, match="top_j"):
        SlideZeroShotRequest(str(slides["pyramid"]), CLASSES, top_j=0)
    with pytest.raises(InputError, match="at least two classes"):
        SlideZeroShotRequest(str(slides["pyramid"]), ["tumor"])


def test_top_tiles_take_the_legends_colours_and_a_failing_tile_turns_red(result) -> None:
    from dataclasses import replace

    from napari_clipmed.ops.layerdata import class_colors, rgba
    from napari_clipmed.ops.qc import FAIL_COLOUR, gate_slide_top_tiles, mark_layer_data

    _, kwargs, kind = result.to_layer_data()[-1]
    assert kind == "shapes"
    colours = class_colors(CLASSES)
    want = np.array([rgba(colours[c], 1.0) for c in kwargs["features"]["class"]])
    np.testing.assert_allclose(kwargs["edge_color"], want)

    first = int(result.ranking()["tile"].iloc[0])  # made flat: no detail left, the gate must refuse it
    flat = np.full_like(result.top_tiles[first], 200)
    damaged = replace(result, top_tiles={**result.top_tiles, first: flat})
    verdict = gate_slide_top_tiles(damaged)
    assert not verdict.passed[0] and verdict.passed[1:].all()
    _, marked, _ = mark_layer_data(damaged.to_layer_data(), verdict)[-1]
    np.testing.assert_allclose(marked["edge_color"][0], rgba(FAIL_COLOUR, 1.0))
    np.testing.assert_allclose(marked["edge_color"][1:], want[1:])
