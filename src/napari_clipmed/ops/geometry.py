"""Where a layer lies in the world: ``world = pixel * scale + translate`` per spatial axis, in `unit`.

A `Geometry` is the plain-data snapshot of a napari layer's placement (read by
`napari_clipmed.layers` on the GUI thread). Operations take one and return layer data placed with
it, so result layers overlay their source exactly. Rotate, shear and affine are not modelled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_clipmed.errors import InputError


@dataclass(frozen=True)
class Geometry:
    """Pixel -> world mapping of a layer's spatial axes (row, column order; (z, y, x) for volumes).

    `unit` is what one world unit is ("mm" for CT, "µm" for slides, "" when unknown); `shape` is
    the source's spatial size in pixels (empty when not known), used to place layers beside it.
    """

    scale: tuple[float, ...] = (1.0, 1.0)
    translate: tuple[float, ...] = (0.0, 0.0)
    unit: str = ""
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        scale = tuple(float(s) for s in self.scale)
        translate = tuple(float(t) for t in self.translate)
        if len(scale) != len(translate) or (self.shape and len(self.shape) != len(scale)):
            raise InputError(
                f"a geometry needs one scale, translate (and shape) value per axis, got scale {scale}, "
                f"translate {translate}, shape {self.shape}"
            )
        if not all(np.isfinite(scale)) or min(scale, default=1.0) <= 0:
            raise InputError(f"a layer's scale must be positive and finite, got {scale}")
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "translate", translate)
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @property
    def ndim(self) -> int:
        return len(self.scale)

    def last(self, n: int) -> Geometry:
        """The geometry of the last `n` axes (e.g. the in-plane axes of a slice)."""
        if not 1 <= n <= self.ndim:
            raise InputError(f"cannot take the last {n} axes of a {self.ndim}-axis geometry")
        return replace(self, scale=self.scale[-n:], translate=self.translate[-n:], shape=self.shape[-n:])

    def to_world(self, pixels: Any) -> np.ndarray:
        return np.asarray(pixels, dtype=float) * np.asarray(self.scale) + np.asarray(self.translate)

    def to_pixels(self, world: Any) -> np.ndarray:
        return (np.asarray(world, dtype=float) - np.asarray(self.translate)) / np.asarray(self.scale)

    def shifted(self, offset: Sequence[float]) -> Geometry:
        """The geometry of a crop whose first pixel is `offset` (pixels) of this layer."""
        return replace(self, translate=tuple(float(v) for v in self.to_world(offset)))

    def kwargs(self) -> dict[str, tuple[float, ...]]:
        """``scale`` and ``translate`` as napari layer keyword arguments."""
        return {"scale": self.scale, "translate": self.translate}
