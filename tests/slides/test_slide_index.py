"""Slide retrieval: several slides indexed at the target magnification, a rectangle query, resumable outputs.

Reference: a query drawn exactly on an indexed tile is read by the same path at the same
magnification, so that tile must come back first with cosine similarity 1 (to float rounding).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_clipmed.errors import InputError
from napari_clipmed.models.loader import load_model
from napari_clipmed.ops.slide_common import SlideTiling
from napari_clipmed.ops.slide_index import SlideEmbeddings, SlideIndexRequest, run


def test_index_two_slides_query_a_rectangle_and_resume(slides: dict[str, Path], tmp_path: Path) -> None:
    model = load_model("tiny-random", device="cpu")
    request = SlideIndexRequest((str(slides["pyramid"]), str(slides["svs"])), SlideTiling(batch_size=16), out=str(tmp_path))
    result = run(request, model)
    frame = result.to_frame()
    assert [len(e.grid) for e in result.entries] == [36, len(frame) - 36]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["carcinoma", "cmu_small_region"]
    svs = result.entries[1]
    box = tuple(svs.grid.boxes[5])
    hits = result.query(model, str(slides["svs"]), box, k=6)
    table = hits.to_frame()
    assert table.loc[0, "slide"] == str(slides["svs"]) and table.loc[0, "tile"] == 5
    assert table.loc[0, "similarity"] == pytest.approx(1.0, abs=1e-4)
    assert table["similarity"].is_monotonic_decreasing and len(table) == 6
    layers = hits.to_layer_data()
    kinds = [kind for _, _, kind in layers]
    assert kinds.count("image") == 1 and kinds[-1] == "shapes"
    on_svs = next(kw for _, kw, kind in layers if kind == "shapes" and kw["name"].startswith("cmu_small_region"))
    assert on_svs["scale"] == pytest.approx((svs.grid.slide_mpp,) * 2)
    grid_image, cells = hits.grid()
    np.testing.assert_array_equal(grid_image[cells[0, 0] : cells[0, 2], cells[0, 1] : cells[0, 3]], hits.tiles[0])

    # resume: a finished slide is loaded, not encoded again
    class NoEncoding:
        def __getattr__(self, name):
            return getattr(model, name)

        def encode_images(self, images, **kwargs):
            raise AssertionError("a finished slide was encoded again")

    again = run(request, NoEncoding())
    np.testing.assert_array_equal(again.entries[0].embeddings, result.entries[0].embeddings)
    loaded = SlideEmbeddings.load(tmp_path / "carcinoma")
    np.testing.assert_array_equal(loaded.grid.boxes, result.entries[0].grid.boxes)


def test_bad_index_requests(slides: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least one slide"):
        SlideIndexRequest(())
    with pytest.raises(InputError, match="distinct names"):
        SlideIndexRequest((str(slides["pyramid"]), str(slides["pyramid"])))
    with pytest.raises(InputError, match="no such slide"):
        SlideIndexRequest((str(tmp_path / "nope.svs"),))
