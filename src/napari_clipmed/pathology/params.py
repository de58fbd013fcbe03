"""The corruption parameter table: one row per kind, values at the study's severities 1..4.

The robustness study (arXiv 2401.02651) corrupts H&E tiles with seven corruptions at four
severity levels but does not publish its parameter values; the ones here come from ImageNet-C
(Hendrycks & Dietterich, ICLR 2019) and from the pathology corruption benchmark of the same
lab (additive HSV shifts), as documented in `docs/corruptions.md`. Severity 0 is the identity
and fractional severities interpolate the parameter linearly, so a slider moves smoothly.
This module imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    import pandas

MAX_SEVERITY = 4


@dataclass(frozen=True)
class Corruption:
    """One corruption kind: what it does, its parameter and that parameter at severities 1..4."""

    name: str
    description: str
    parameter: str
    values: tuple[float, float, float, float]
    identity: float
    source: str

    def parameter_at(self, severity: float) -> float:
        """The parameter at `severity` (0 = identity), linear between the integer levels."""
        s = check_severity(severity)
        levels = (self.identity, *self.values)
        lo = min(int(math.floor(s)), MAX_SEVERITY - 1)
        frac = s - lo
        return float(levels[lo] + frac * (levels[lo + 1] - levels[lo]))


_HSV_SOURCE = (
    "additive HSV shift as in the lab's pathology corruption benchmark; "
    "steps of 0.05 chosen to span a visible but plausible scanner/stain drift"
)

CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption(
            "brightness",
            "Adds a constant to the HSV value (V) channel, clipped to [0, 1]; hue and saturation kept.",
            "V shift",
            (0.05, 0.10, 0.15, 0.20),
            0.0,
            _HSV_SOURCE + " (ImageNet-C brightness does the same with .1-.5)",
        ),
        Corruption(
            "contrast",
            "Scales each channel about its image mean: (x - mean) * c + mean, clipped to [0, 1].",
            "contrast factor c",
            (0.4, 0.3, 0.2, 0.1),
            1.0,
            "ImageNet-C contrast, severities 1-4 (c = .4/.3/.2/.1)",
        ),
        Corruption(
            "blur",
            "Gaussian blur of each channel, kernel truncated at 4 sigma, edges mirrored "
            "(scipy.ndimage.gaussian_filter's defaults).",
            "sigma (px)",
            (1.0, 2.0, 3.0, 4.0),
            0.0,
            "ImageNet-C gaussian_blur, severities 1-4 (sigma = 1/2/3/4)",
        ),
        Corruption(
            "resolution",
            "Box (area) downscale by a factor, then nearest-neighbour upscale back to the input size "
            "(Pillow BOX then NEAREST): a lower scanning resolution.",
            "scale factor",
            (0.6, 0.5, 0.4, 0.3),
            1.0,
            "ImageNet-C pixelate, severities 1-4 (factor = .6/.5/.4/.3)",
        ),
        Corruption(
            "saturation",
            "Adds a constant to the HSV saturation (S) channel, clipped to [0, 1].",
            "S shift",
            (0.05, 0.10, 0.15, 0.20),
            0.0,
            _HSV_SOURCE,
        ),
        Corruption(
            "hue",
            "Adds a constant to the HSV hue (H in turns), wrapping around the colour circle.",
            "H shift (turns)",
            (0.05, 0.10, 0.15, 0.20),
            0.0,
            _HSV_SOURCE,
        ),
        Corruption(
            "markup",
            "Procedural marker-pen ink: seeded smooth strokes of green, blue or black ink with soft "
            "edges, blended by Beer-Lambert absorbance so tissue shows through.",
            "ink coverage (fraction of the tile)",
            (0.05, 0.10, 0.20, 0.35),
            0.0,
            "our choice: green ink colour measured on the CMU-1 SVS; coverage levels chosen to span "
            "a pen mark at a tile edge (5 %) to a tile a third covered (35 %)",
        ),
    )
}

ALIASES: dict[str, str] = {
    "gaussian_blur": "blur",
    "pixelate": "resolution",
    "saturate": "saturation",
    "ink": "markup",
    "pen": "markup",
}


def list_corruptions() -> list[str]:
    """The corruption kinds, in the study's order."""
    return list(CORRUPTIONS)


def get_corruption(kind: str) -> Corruption:
    """The table row for `kind` (a few ImageNet-C names are accepted as aliases)."""
    if not isinstance(kind, str):
        raise InputError(f"corruption kind must be a string, one of {', '.join(CORRUPTIONS)}; got {kind!r}")
    key = kind.strip().lower().replace("-", "_").replace(" ", "_")
    key = ALIASES.get(key, key)
    if key not in CORRUPTIONS:
        raise InputError(f"unknown corruption {kind!r}; choose one of: {', '.join(CORRUPTIONS)}")
    return CORRUPTIONS[key]


def check_severity(severity: float) -> float:
    """`severity` as a float in [0, 4], or an InputError that says what is allowed."""
    if isinstance(severity, (bool, str, bytes)):
        raise InputError(f"severity must be a number from 0 to {MAX_SEVERITY}; got {severity!r}")
    try:
        value = float(severity)
    except (TypeError, ValueError) as err:
        raise InputError(f"severity must be a number from 0 to {MAX_SEVERITY}; got {severity!r}") from err
    if not math.isfinite(value) or value < 0 or value > MAX_SEVERITY:
        raise InputError(
            f"severity must be between 0 (no corruption) and {MAX_SEVERITY} (strongest); got {severity!r}"
        )
    return value


def parameter_at(kind: str, severity: float) -> float:
    """The parameter of `kind` at `severity`, interpolated linearly (severity 0 = identity)."""
    return get_corruption(kind).parameter_at(severity)


def table_frame() -> pandas.DataFrame:
    """The table as a DataFrame (one row per kind), for docs and the CLI."""
    import pandas as pd

    rows = [
        {
            "kind": c.name,
            "parameter": c.parameter,
            **{f"severity {i}": v for i, v in enumerate((c.identity, *c.values))},
            "description": c.description,
            "source": c.source,
        }
        for c in CORRUPTIONS.values()
    ]
    return pd.DataFrame(rows)
