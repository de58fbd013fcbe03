"""Pathology tools: the study's corruptions of H&E tiles, and tiling of slides into tiles.

Importing this package is cheap (no torch); the names below load their module on first use:
`corrupt`, `CORRUPTIONS`, `list_corruptions`, `parameter_at`, `ink_layer`, `tissue_mask`,
`tile_image`, `read_slide_level`, `Tiles`; whole slides: `detect_tissue`, `ink_mask`, `TissueMask`,
`make_grid`, `TileGrid`, `iter_tile_batches`.
"""

from __future__ import annotations

from napari_clipmed._lazy import lazy_getattr

_EXPORTS = {
    "corrupt": "napari_clipmed.pathology.corrupt",
    "CORRUPTIONS": "napari_clipmed.pathology.params",
    "Corruption": "napari_clipmed.pathology.params",
    "list_corruptions": "napari_clipmed.pathology.params",
    "parameter_at": "napari_clipmed.pathology.params",
    "ink_layer": "napari_clipmed.pathology.markup",
    "coverage_range": "napari_clipmed.pathology.markup",
    "InkLayer": "napari_clipmed.pathology.markup",
    "tissue_mask": "napari_clipmed.pathology.tissue",
    "ink_mask": "napari_clipmed.pathology.tissue",
    "detect_tissue": "napari_clipmed.pathology.tissue",
    "TissueMask": "napari_clipmed.pathology.tissue",
    "make_grid": "napari_clipmed.pathology.slide_tiler",
    "TileGrid": "napari_clipmed.pathology.slide_tiler",
    "iter_tile_batches": "napari_clipmed.pathology.slide_tiler",
    "tile_image": "napari_clipmed.pathology.tiles",
    "read_slide_level": "napari_clipmed.pathology.tiles",
    "Tiles": "napari_clipmed.pathology.tiles",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
