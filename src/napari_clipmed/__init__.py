"""napari-clipmed: CLIP vision-language models for medical images in napari.

Importing the package is cheap: it pulls in neither torch, napari nor Qt.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
