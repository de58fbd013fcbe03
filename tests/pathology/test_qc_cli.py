"""`clipmed qc` / `clipmed qc-calibrate` and the qc operation on real H&E tiles and the real SVS."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_clipmed.cli import main
from napari_clipmed.ops.geometry import Geometry
from napari_clipmed.ops.qc import QcRequest, run
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.pathology.gate import Gate
from napari_clipmed.pathology.quality import MEASURES
from napari_clipmed.pathology.tiles import tile_image

from .conftest import SVS


@pytest.fixture(scope="module")
def tile_dir(png_image: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight clean carcinoma tiles and one blurred at severity 3."""
    folder = tmp_path_factory.mktemp("qc-tiles")
    tiles = tile_image(png_image, 160, min_tissue=0.5).images[:8]
    for i, tile in enumerate(tiles):
        Image.fromarray(tile).save(folder / f"clean_{i}.png")
    Image.fromarray(corrupt(tiles[0], "blur", 3)).save(folder / "blurred.png")
    return folder


def test_qc_writes_measures_and_verdicts_for_a_tile_folder(tile_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["qc", str(tile_dir), "--out", str(tmp_path / "qc"), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "qc" / "qc.csv", keep_default_na=False)
    assert list(table.columns) == ["id", *MEASURES, "passed", "reasons"]
    verdict = dict(zip(table["id"].map(lambda p: Path(p).stem), table["passed"]))
    assert not verdict.pop("blurred")
    assert all(verdict.values())
    reason = table.loc[table["id"].str.endswith("blurred.png"), "reasons"].item()
    assert reason.startswith("focus ") and " < " in reason
    summary = json.loads((tmp_path / "qc" / "qc.json").read_text())
    assert summary["tiles"] == 9 and summary["passed"] == 8 and summary["failed_by"] == {"focus": 1}
    assert "8 of 9 tiles passed" in capsys.readouterr().out


def test_qc_cuts_a_slide_and_flags_its_real_ink(tmp_path: Path) -> None:
    assert main(["qc", str(SVS), "--out", str(tmp_path / "svs"), "--quiet"]) == 0
    table = pd.read_csv(tmp_path / "svs" / "qc.csv", keep_default_na=False)
    assert {"row", "col"} <= set(table.columns) and len(table) > 20
    inked = table[table["reasons"].str.contains("ink")]
    assert 3 <= len(inked) < len(table) / 2


def test_grayscale_and_16_bit_tiles_are_converted_and_said_so(he_tiles: np.ndarray, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(he_tiles[3].mean(axis=2).astype(np.uint8)).save(folder / "grey.png")
    Image.fromarray(he_tiles[4][..., 1].astype(np.uint16) * 257).save(folder / "wide.png")
    assert main(["qc", str(folder), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: 2 grayscale tile(s) repeated to RGB as the encoder does" in out  # the 16-bit one is grey too
    assert "note: 1 16-bit tile(s) scaled by 1/65535 as the encoder does" in out


def test_bad_gate_file_is_one_line_and_writes_nothing(tile_dir: Path, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "gate.json"
    data = Gate.default().to_dict()
    del data["measures"]["ink"]
    bad.write_text(json.dumps(data))
    assert main(["qc", str(tile_dir), "--gate", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks bounds for: ink" in err[0]
    assert not (tmp_path / "o").exists()


def test_qc_calibrate_writes_a_gate_that_qc_reads(png_image: np.ndarray, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "clean"
    folder.mkdir()
    for i, tile in enumerate(tile_image(png_image, 128, stride=96, min_tissue=0.5).images[:24]):
        Image.fromarray(tile).save(folder / f"t{i:02d}.png")
    gate_path = tmp_path / "gate.json"
    assert main(["qc-calibrate", str(folder), "--out", str(gate_path), "--quiet"]) == 0
    gate = Gate.load(gate_path)
    assert gate.info["tiles"] == 24 and gate.info["false_flag_clean"] <= 0.05
    assert "clean tiles flagged" in capsys.readouterr().out
    assert main(["qc", str(folder), "--gate", str(gate_path), "--out", str(tmp_path / "qc"), "--quiet"]) == 0

    few = tmp_path / "few"
    few.mkdir()
    for i in range(5):
        Image.fromarray(png_image[:128, i * 128 : (i + 1) * 128]).save(few / f"t{i}.png")
    assert main(["qc-calibrate", str(few), "--out", str(tmp_path / "g2.json"), "--quiet"]) == 2
    assert "at least 20 clean tiles; got 5" in capsys.readouterr().err
    assert not (tmp_path / "g2.json").exists()


def test_qc_result_layer_outlines_tiles_by_verdict(svs_level0: np.ndarray) -> None:
    tiles = tile_image(svs_level0[:1120, 1120:2240], 224, min_tissue=0.0)
    result = run(QcRequest(tuple(tiles.images), Gate.default(), coords=tiles.coords, tile_size=224))
    [(boxes, kwargs, kind)] = result.to_layer_data(Geometry(scale=(0.5, 0.5), translate=(10.0, 0.0), unit="µm"))
    assert kind == "shapes" and len(boxes) == len(tiles)
    assert kwargs["scale"] == (0.5, 0.5) and kwargs["translate"] == (10.0, 0.0)
    colours = np.array(kwargs["edge_color"])
    assert set(colours[result.verdict.passed]) <= {"#2ca02c"} and set(colours[~result.verdict.passed]) <= {"#d62728"}
    assert list(kwargs["features"]["passed"]) == list(result.verdict.passed)
    np.testing.assert_array_equal(boxes[1][0], tiles.coords[1])


def test_mark_failing_outlines_and_skips_on_plain_layer_kwargs(he_tiles: np.ndarray) -> None:
    import pandas as pd

    from napari_clipmed.ops.qc import gate_images, mark_failing

    tiles = [he_tiles[3], corrupt(he_tiles[4], "blur", 4)]
    verdict = gate_images(tiles)
    assert list(verdict.passed) == [True, False]
    kwargs = {"features": pd.DataFrame({"label": ["tumour", "stroma"]}), "edge_color": "#56B4E9", "edge_width": 2.0,
              "face_color": np.ones((2, 4)) * 0.5}
    marked = mark_failing(kwargs, verdict, skip_failing=True)
    assert list(marked["features"]["label"]) == ["tumour", "uncertain"]
    assert marked["features"]["abstain_reason"][1].startswith("failed the quality gate: focus")
    assert marked["edge_width"] == [2.0, 6.0] and marked["face_color"][1, 3] == 0.0
    assert kwargs["features"]["label"][1] == "stroma"  # the input kwargs are not changed


def test_zeroshot_leaves_tiles_failing_the_gate_uncertain(tile_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds.csv"
    assert main(["zeroshot", "--data", str(tile_dir), "--model", "tiny-random", "--classes", "tumour,stroma",
                 "--gate", "default", "--out", str(out), "--quiet", "--no-cache"]) == 0
    frame = pd.read_csv(out, keep_default_na=False).set_index(pd.read_csv(out)["path"].map(lambda p: Path(p).stem))
    assert frame.loc["blurred", "decision"] == "uncertain"
    assert frame.loc["blurred", "abstain_reason"] == "failed the quality gate"
    assert frame.loc["blurred", "quality_reasons"].startswith("focus")
    clean = frame.drop(index="blurred")
    assert (clean["decision"] == clean["predicted"]).all() and clean["quality_passed"].all()
