"""Domain-adaptive pretraining: contrastive fine-tuning of a registry CLIP on (image, text) pairs.

Light on purpose (no torch import here): use `napari_clipmed.dapt.train.iter_train` /
`train` (the plain call), `napari_clipmed.dapt.config.DaptConfig` and `napari_clipmed.dapt.data.read_manifest`;
the same names are importable from this package lazily.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DaptConfig": "napari_clipmed.dapt.config",
    "DaptResult": "napari_clipmed.dapt.train",
    "iter_train": "napari_clipmed.dapt.train",
    "PairManifest": "napari_clipmed.dapt.data",
    "read_manifest": "napari_clipmed.dapt.data",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
