"""Domain-adaptive pretraining: contrastive fine-tuning of a registry CLIP on (image, text) pairs.

Light on purpose (no torch import at package import). Entry points: `dapt.train.iter_train`
(generator) and `dapt.train.train` (plain call), `dapt.config.DaptConfig`, `dapt.data.read_manifest`.
`DaptConfig`, `DaptResult`, `iter_train`, `PairManifest` and `read_manifest` are also importable
from this package (lazily); `train` is not, since it is the name of the submodule.
"""

from __future__ import annotations

from napari_clipmed._lazy import lazy_getattr

_EXPORTS = {
    "DaptConfig": "napari_clipmed.dapt.config",
    "DaptResult": "napari_clipmed.dapt.train",
    "iter_train": "napari_clipmed.dapt.train",
    "PairManifest": "napari_clipmed.dapt.data",
    "read_manifest": "napari_clipmed.dapt.data",
}
__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
