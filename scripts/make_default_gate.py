"""Rebuild the shipped quality gate, `src/napari_clipmed/data/quality_gate.json`, from the real H&E samples.

Calibration tiles: 224 x 224 px tiles with at least half tissue (`tile_image`, Otsu tissue mask)
from level 0 of `cmu_small_region.svs` (H&E skin, 0.5 um/px, non-overlapping grid) and from
`he_carcinoma_tiatoolbox.png` (H&E carcinoma, grid step 112 px), as listed in ../shared/data/README.md.

Run: `PYTHONPATH=src .venv/bin/python scripts/make_default_gate.py [DATA_DIR]`
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from napari_clipmed.pathology.gate import DEFAULT_GATE
from napari_clipmed.pathology.gate_calibration import calibrate_gate
from napari_clipmed.pathology.tiles import read_slide_level, tile_image

ROOT = Path(__file__).resolve().parents[1]


def calibration_tiles(data: Path) -> np.ndarray:
    svs = tile_image(read_slide_level(data / "cmu_small_region.svs"), 224, min_tissue=0.5)
    png = tile_image(read_slide_level(data / "he_carcinoma_tiatoolbox.png"), 224, stride=112, min_tissue=0.5)
    return np.concatenate([svs.images, png.images])


def main() -> None:
    data = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "pathology"
    tiles = calibration_tiles(data)
    source = (f"{len(tiles)} H&E tiles of 224 x 224 px, at least half tissue: cmu_small_region.svs level 0 "
              "(skin, 0.5 um/px, CMU-1 crop, non-overlapping grid) and he_carcinoma_tiatoolbox.png (carcinoma, "
              "grid step 112 px); corrupted by clipmed's own blur and resolution at severities 1-4, seed 0")
    result = calibrate_gate(tiles, source=source, seed=0)
    out = ROOT / "src" / "napari_clipmed" / "data" / DEFAULT_GATE
    result.gate.save(out)
    print(result.to_frame().to_string(index=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
