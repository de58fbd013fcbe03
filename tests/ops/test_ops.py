"""The headless operations: each Request refuses a mistake with one clear message, each Result
matches the core called directly, saves atomically and gives plain layer-data tuples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_clipmed.errors import InputError
from napari_clipmed.models.loader import load_model
from napari_clipmed.ops import corrupt as corrupt_op
from napari_clipmed.ops import retrieval as retrieval_op
from napari_clipmed.ops import zeroshot as zeroshot_op
from napari_clipmed.ops.geometry import Geometry, SourceImage


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def test_zeroshot_matches_direct_classification(tiny, image: np.ndarray, tmp_path: Path) -> None:
    from napari_clipmed.zeroshot import classify_images

    source = SourceImage.of_array(image, "img", Geometry((0.5, 0.5), (10.0, 0.0), "µm"))
    request = zeroshot_op.ZeroShotRequest(source, "a, b, c", tile_size=32, tissue_only=False)
    result = zeroshot_op.run(request, tiny)
    assert len(result.boxes) == 3 * 4 and result.model == tiny.identity
    crops = [image[r0:r1, c0:c1] for r0, c0, r1, c1 in result.boxes]
    ref = classify_images(tiny, crops, ["a", "b", "c"])
    np.testing.assert_allclose(result.probabilities, ref.probabilities, atol=1e-6)
    assert list(result.to_frame()["label"].astype(str)) == ref.predicted
    ((data, kwargs, kind),) = result.to_layer_data(source.geometry)
    assert kind == "shapes" and len(data) == 12 and kwargs["scale"] == (0.5, 0.5)
    files = result.save(tmp_path / "out")
    pd.testing.assert_frame_equal(pd.read_csv(files["labels"]), result.to_frame().astype({"label": str}),
                                  check_dtype=False)
    assert json.loads(files["config"].read_text())["prompts"]["classes"] == {"a": ["a"], "b": ["b"], "c": ["c"]}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tile_size": 4}, "tile size must be at least"),
        ({"stride": 0}, "stride must be at least 1"),
        ({"boxes": np.array([[0, 0, 200, 10]])}, "lies outside"),
        ({"boxes": np.zeros((0, 4))}, "no rectangles"),
        ({"prompts": "only"}, "unknown preset"),
    ],
)
def test_zeroshot_request_mistakes(image: np.ndarray, kwargs: dict, message: str) -> None:
    args = {"prompts": "a, b"} | kwargs
    with pytest.raises(InputError, match=message):
        zeroshot_op.ZeroShotRequest(SourceImage.of_array(image), **args)


def test_corrupt_matches_the_core_and_refuses_mistakes(image: np.ndarray) -> None:
    from napari_clipmed.pathology.corrupt import corrupt

    source = SourceImage.of_array(image, "he")
    result = corrupt_op.run(corrupt_op.CorruptRequest(source, "hue", 3.0, seed=1))
    np.testing.assert_array_equal(result.pixels, corrupt(image, "hue", 3.0, seed=1))
    ((pixels, kwargs, kind),) = result.to_layer_data()
    assert kind == "image" and kwargs["name"] == "he [hue 3]" and pixels is result.pixels
    strip = corrupt_op.run(corrupt_op.CorruptRequest(source, "blur", severities=(0.0, 2.0)))
    assert strip.pixels.shape == (96, 2 * 128 + 16, 3)
    with pytest.raises(InputError, match="severity must lie in 0..4"):
        corrupt_op.CorruptRequest(source, "blur", 5.0)
    with pytest.raises(InputError, match="blur"):
        corrupt_op.CorruptRequest(source, "nope", 1.0)


def test_retrieval_index_query_and_identity(tiny, image: np.ndarray, tmp_path: Path) -> None:
    folder = tmp_path / "g"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.ascontiguousarray(image[:, 16 * i : 16 * i + 64])).save(folder / f"t{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        build = retrieval_op.build_index(retrieval_op.IndexRequest(folder, chunk=2), tiny)
    assert len(build.index) == 4 and build.index.model_id == tiny.identity and len(build.failed) == 1
    saved = build.save(tmp_path / "index.npz")
    query = SourceImage.of_array(np.ascontiguousarray(image[:, 32:96]), "q")
    result = retrieval_op.query(retrieval_op.QueryRequest(saved, (query,), 2), tiny)  # type: ignore[arg-type]
    frame = result.to_frame()
    assert Path(frame["path"][0]).name == "t2.png" and frame["similarity"][0] == pytest.approx(1.0, abs=1e-5)
    assert [kind for *_, kind in result.to_layer_data(Geometry(shape=(96, 64)))] == ["image", "shapes"]
    with pytest.raises(InputError, match="k=5 is larger than the gallery: it has 4 items"):
        retrieval_op.QueryRequest(build.index, (query,), 5)
    with pytest.raises(InputError, match="does not exist"):
        retrieval_op.IndexRequest(tmp_path / "missing")


def test_ct_request_validates_the_run_configuration() -> None:
    from napari_clipmed.ct.io import CTVolume
    from napari_clipmed.ops.ct_montage import CTMontageRequest, montage_config

    volume = CTVolume.from_array(np.full((8, 64, 64), -800, np.int16), spacing=(3.0, 1.0, 1.0))
    with pytest.raises(InputError, match="k .* must be at least 1"):
        CTMontageRequest.from_fields(volume, k=0)
    with pytest.raises(InputError, match="the lung mask has shape"):
        CTMontageRequest(volume, montage_config(), np.zeros((2, 2, 2), bool))
    with pytest.raises(InputError, match="normal class"):
        montage_config(normal_classes="nothing like it")
    with pytest.raises(InputError, match="larger than the axial slice"):
        CTMontageRequest.from_fields(volume, patch_size_mm=100.0)
    assert montage_config(class_prompts="UIP vs other").class_prompts == montage_config(class_prompts="uip").class_prompts
