"""Corrupt an RGB image (one corruption at one severity, or every severity side by side).

The source pixels are never changed: results are new arrays placed over (or just below) the
source. Large images are corrupted on a centred crop (see `layers.rgb_snapshot`), at full resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.ops.geometry import Geometry, SourceImage
from napari_clipmed.ops.layerdata import LayerData
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator


@dataclass(frozen=True, eq=False)
class CorruptRequest:
    """`kind` at `severity` (0..MAX_SEVERITY, fractions allowed) on an RGB uint8 `source`;
    `severities` (optional) makes a strip of every level instead."""

    source: SourceImage
    kind: str
    severity: float = 2.0
    seed: int | None = 0
    severities: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        from napari_clipmed.pathology.params import MAX_SEVERITY, get_corruption

        object.__setattr__(self, "kind", get_corruption(self.kind).name)
        levels = [self.severity] if self.severities is None else list(self.severities)
        if not levels:
            raise InputError("give at least one severity for the strip")
        for level in levels:
            if not 0.0 <= float(level) <= MAX_SEVERITY:
                raise InputError(f"severity must lie in 0..{MAX_SEVERITY}, got {level}")
        if self.severities is not None:
            object.__setattr__(self, "severities", tuple(float(s) for s in self.severities))
        pixels = np.asarray(self.source.pixels)
        if pixels.ndim != 3 or pixels.shape[-1] != 3 or pixels.dtype != np.uint8:
            raise InputError(f"'{self.source.name}' must be RGB uint8 pixels (H x W x 3), got {pixels.shape} {pixels.dtype}")


@dataclass(frozen=True, eq=False)
class CorruptResult:
    """The corrupted pixels and the layer kwargs that place and describe them."""

    pixels: np.ndarray
    kwargs: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.kwargs["name"])

    def to_frame(self) -> Any:
        """One row: the corruption's settings and parameter value."""
        import pandas as pd

        meta = dict(self.kwargs["metadata"]["corruption"])
        meta = {k: (str(v) if isinstance(v, (list, tuple)) else v) for k, v in meta.items()}
        return pd.DataFrame([meta])

    def save(self, folder: str | Path) -> dict[str, Path]:
        """<name>.png and corruption.json in `folder`, atomically."""
        from PIL import Image

        from napari_clipmed.io.atomic import atomic_path, write_json

        out = Path(folder)
        safe = "".join(ch if ch.isalnum() or ch in "-_. " else "_" for ch in self.name).strip() or "corrupted"
        with atomic_path(out / f"{safe}.png") as tmp:
            Image.fromarray(self.pixels).save(tmp, format="PNG")
        return {"image": out / f"{safe}.png", "config": write_json(out / "corruption.json", self.kwargs["metadata"])}

    def to_layer_data(self, geometry: Geometry | None = None) -> list[LayerData]:
        """One RGB image layer (placed over the source, or with `geometry` when given)."""
        kwargs = dict(self.kwargs)
        if geometry is not None:
            kwargs.update(geometry.kwargs())
        return [(self.pixels, kwargs, "image")]


def iter_run(request: CorruptRequest, model: object = None) -> ProgressGenerator[CorruptResult]:
    """The corrupted image (or the severity strip); needs no model."""
    if request.severities is None:
        yield Progress(0, 1, f"{corruption_tag(request.kind, request.severity)}")
        pixels = corrupt_source(request.source, request.kind, request.severity, request.seed)
        yield Progress(1, 1, "done")
        return CorruptResult(pixels, corrupted_kwargs(request.source, request.kind, request.severity, request.seed))
    strip, kwargs = yield from iter_severity_strip(request.source, request.kind, request.seed, request.severities)
    return CorruptResult(strip, kwargs)


def run(request: CorruptRequest, model: object = None) -> CorruptResult:
    """Plain-call twin of `iter_run`."""
    return run_generator(iter_run(request, model))


def corruption_tag(kind: str, severity: float) -> str:
    """'blur 2.5' (severity rounded to 0.1, as on the slider)."""
    return f"{kind} {round(float(severity), 1):g}"


def _corruption_meta(source: SourceImage, kind: str, severity: float, seed: int | None) -> dict[str, Any]:
    from napari_clipmed.pathology.params import get_corruption

    spec = get_corruption(kind)
    return {
        "corruption": {
            "source": source.name,
            "kind": spec.name,
            "severity": float(severity),
            "seed": seed,
            "parameter": spec.parameter,
            "value": spec.parameter_at(severity),
            "offset": list(source.offset),
            "cropped": source.cropped,
        }
    }


def corrupt_source(source: SourceImage, kind: str, severity: float, seed: int | None = 0) -> np.ndarray:
    """The corrupted pixels of `source` (a new array; `source.pixels` is left as is)."""
    from napari_clipmed.pathology.corrupt import corrupt

    return corrupt(source.pixels, kind, severity, seed=seed)


def corrupted_kwargs(source: SourceImage, kind: str, severity: float, seed: int | None = 0) -> dict[str, Any]:
    """Image-layer kwargs of a corrupted copy: name '<source> [kind severity]', same placement, metadata."""
    return {
        "name": f"{source.name} [{corruption_tag(kind, severity)}]",
        "rgb": True,
        "metadata": _corruption_meta(source, kind, severity, seed),
        **source.geometry.shifted(source.offset).kwargs(),
    }


def iter_severity_strip(
    source: SourceImage, kind: str, seed: int | None = 0, severities: Sequence[float] | None = None, gap: int = 16
) -> Any:
    """Generator: the image at each severity (default 0..MAX), side by side with white gaps; yields
    Progress per level and returns (strip, kwargs). The strip is placed just below the source."""
    from napari_clipmed.pathology.params import MAX_SEVERITY
    from napari_clipmed.progress import Progress

    levels = [float(s) for s in (severities if severities is not None else range(MAX_SEVERITY + 1))]
    h, w = source.pixels.shape[:2]
    strip = np.full((h, len(levels) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for i, severity in enumerate(levels):
        strip[:, i * (w + gap) : i * (w + gap) + w] = corrupt_source(source, kind, severity, seed)
        yield Progress(i + 1, len(levels), f"{corruption_tag(kind, severity)} done")
    meta = _corruption_meta(source, kind, levels[-1], seed)
    panel_cols = [i * (w + gap) for i in range(len(levels))]
    meta["corruption"] |= {"severity": None, "severities": levels, "panel_cols": panel_cols}
    below = source.geometry.shifted((source.offset[0] + h + max(gap, h // 20), source.offset[1]))
    kwargs = {
        "name": f"{source.name} [{kind} strip {levels[0]:g}-{levels[-1]:g}]",
        "rgb": True,
        "metadata": meta,
        **below.kwargs(),
    }
    return strip, kwargs
