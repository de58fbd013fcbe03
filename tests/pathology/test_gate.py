"""The quality gate on the real H&E samples: detection (AUROC from scikit-learn), false flags, real ink, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.color import rgb2hsv
from sklearn.metrics import roc_auc_score

from napari_clipmed.errors import InputError
from napari_clipmed.pathology.corrupt import corrupt
from napari_clipmed.pathology.gate import GATE_VERSION, Gate, load_gate
from napari_clipmed.pathology.gate_calibration import MIN_TILES, calibrate_gate
from napari_clipmed.pathology.quality import MEASURES, measure
from napari_clipmed.pathology.tiles import tile_image


def green_ink_fraction(tiles: np.ndarray) -> np.ndarray:
    """An independent ink reference: HSV hue 100-200 degrees (green-cyan) with some saturation (skimage)."""
    hsv = np.stack([rgb2hsv(t) for t in tiles])
    return ((hsv[..., 0] * 360 > 100) & (hsv[..., 0] * 360 < 200) & (hsv[..., 1] > 0.15)).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def clean_tissue(svs_level0: np.ndarray, png_image: np.ndarray) -> np.ndarray:
    """Tissue tiles on grids shifted from the ones the shipped gate was calibrated on, without real ink."""
    svs = tile_image(svs_level0[112:, 112:], 224, min_tissue=0.5)
    png = tile_image(png_image[56:, 56:], 224, stride=112, min_tissue=0.5)
    tiles = np.concatenate([svs.images, png.images])
    return tiles[green_ink_fraction(tiles) < 0.001]


def test_default_gate_detects_blur_and_resolution_with_auroc_and_few_false_flags(clean_tissue: np.ndarray) -> None:
    gate = Gate.default()
    assert len(clean_tissue) >= 60
    clean = measure(clean_tissue)
    verdict = gate.check(clean)
    assert 1.0 - verdict.pass_rate <= 0.05, verdict.reasons
    assigned = gate.info["assigned_bounds"]
    for kind in ("blur", "resolution"):
        name, side = assigned[kind].split()
        for severity in (2, 3, 4):  # every other tile corrupted: the scores stay paired with distinct tiles
            bad = measure(corrupt(clean_tissue[severity % 2 :: 2], kind, severity, seed=severity))
            y = np.r_[np.zeros(len(clean)), np.ones(len(bad))]
            score = np.r_[clean[name], bad[name]] * (-1 if side == "min" else 1)
            assert roc_auc_score(y, score) >= 0.95, (kind, severity)
            assert 1.0 - gate.check(bad).pass_rate >= 0.95, (kind, severity)


def test_real_green_ink_of_the_svs_is_found_and_ink_free_tissue_is_not_flagged(svs_level0: np.ndarray) -> None:
    tiles = tile_image(svs_level0, 224, min_tissue=0.0)
    reference = green_ink_fraction(tiles.images)
    verdict = Gate.default().check(measure(tiles.images))
    inked = reference > 0.02
    free = (reference < 0.001) & (tiles.tissue >= 0.5)
    assert inked.sum() >= 5 and free.sum() >= 15
    assert verdict.failed_by("ink")[inked].all()
    assert not verdict.failed_by("ink")[free].any()
    assert all("ink" in verdict.reasons[i] for i in np.flatnonzero(inked))


def test_reasons_name_each_violated_bound(he_tiles: np.ndarray) -> None:
    gate = Gate.default()
    dark = (he_tiles[:1] * 0.1).astype(np.uint8)
    verdict = gate.check(measure(dark))
    assert not verdict.passed[0]
    assert "under_exposed" in verdict.reasons[0] and ">" in verdict.reasons[0]
    frame = verdict.to_frame()
    assert list(frame.columns) == [*MEASURES, "passed", "reasons"]


def test_gate_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    gate = Gate.default()
    path = gate.save(tmp_path / "gate.json")
    assert load_gate(path) == gate
    data = json.loads(path.read_text())

    other = dict(data, version=GATE_VERSION + 1)
    (tmp_path / "v2.json").write_text(json.dumps(other))
    with pytest.raises(InputError, match="version 2.*qc-calibrate"):
        Gate.load(tmp_path / "v2.json")

    partial = dict(data, measures={k: v for k, v in data["measures"].items() if k not in ("ink", "tissue")})
    (tmp_path / "partial.json").write_text(json.dumps(partial))
    with pytest.raises(InputError, match="lacks bounds for: ink, tissue"):
        Gate.load(tmp_path / "partial.json")

    (tmp_path / "other.json").write_text(json.dumps({"classes": ["a", "b"]}))
    with pytest.raises(InputError, match="not a napari-clipmed quality gate"):
        Gate.load(tmp_path / "other.json")

    crossed = json.loads(path.read_text())
    crossed["measures"]["focus"] = {"min": 2.0, "max": 1.0}
    (tmp_path / "crossed.json").write_text(json.dumps(crossed))
    with pytest.raises(InputError, match="focus.*min 2.0 above max 1.0"):
        Gate.load(tmp_path / "crossed.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read the gate file"):
        Gate.load(tmp_path / "broken.json")


def test_calibration_meets_its_stated_rates_on_real_tiles(png_image: np.ndarray, svs_level0: np.ndarray) -> None:
    tiles = np.concatenate([
        tile_image(png_image, 128, min_tissue=0.5).images[:30],
        tile_image(svs_level0[800:2400, 600:1800], 128, min_tissue=0.8).images[:20],
    ])
    assert len(tiles) == 50
    result = calibrate_gate(tiles, sensitivity=0.95, max_false_flag=0.05, seed=1)
    assert result.false_flag <= 0.05
    info = result.gate.info
    assert all(v >= 0.95 for v in info["sensitivity_achieved"].values())
    for kind in ("blur", "resolution"):
        assert all(result.detection[kind][s] >= 0.9 for s in (2, 3, 4))
    frame = result.to_frame()
    assert set(frame["corruption"]) == {"clean", "blur", "resolution"}


def test_calibration_refuses_too_few_tiles(he_tiles: np.ndarray) -> None:
    with pytest.raises(InputError, match=f"at least {MIN_TILES} clean tiles; got 6"):
        calibrate_gate(he_tiles)
