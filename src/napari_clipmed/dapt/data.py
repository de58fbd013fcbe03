"""(image, text) pairs for DAPT: the CSV manifest, image reading, captions and text views.

Manifest columns (case-insensitive): `image` (a path; relative paths are taken from the CSV's
folder), `text` (report text or a caption), `label` (a class name), `split` (`train` / `val`).
The mode follows from the columns present:

- ``image-text``: `image` + `text` (montage + report); `label`, if present, drives zero-shot validation;
- ``image-label``: `image` + `label`: captions come from prompt templates ("a CT image of {}.");
- ``text-only``: `text` alone: two views of each report (halves of its sentences) are the positives.

Every row is checked before training: all problems of one kind are reported in one error.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from napari_clipmed.errors import InputError
from napari_clipmed.models.images import group_by_shape, preprocess_batch, stack_to_tensor, to_hwc
from napari_clipmed.models.registry import ModelSpec

Mode = Literal["image-text", "image-label", "text-only"]
SPLITS = ("train", "val")
_MAX_LISTED = 20


@dataclass(frozen=True, eq=False)
class PairManifest:
    """The validated rows of a manifest; `images`/`texts`/`labels`/`splits` are None when absent."""

    mode: Mode
    images: tuple[Path, ...] | None
    texts: tuple[str, ...] | None
    labels: tuple[str, ...] | None
    splits: tuple[str, ...] | None
    source: Path | None = None

    def __len__(self) -> int:
        column = self.images or self.texts or self.labels or ()
        return len(column)

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels (empty without a `label` column)."""
        return sorted(set(self.labels)) if self.labels else []

    @property
    def fingerprint(self) -> str:
        """Content hash of the rows: a resumed run must train on the same data."""
        digest = hashlib.blake2b(digest_size=16)
        for column in (self.mode, self.images, self.texts, self.labels, self.splits):
            digest.update(repr(tuple(map(str, column)) if isinstance(column, tuple) else column).encode())
        return digest.hexdigest()

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        columns = {"image": self.images, "text": self.texts, "label": self.labels, "split": self.splits}
        return pd.DataFrame({k: [str(x) for x in v] for k, v in columns.items() if v is not None})


def _listing(items: Sequence[str]) -> str:
    shown = "\n  ".join(items[:_MAX_LISTED])
    more = f"\n  ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"\n  {shown}{more}"


def _column(frame: object, name: str, source: str) -> tuple[str, ...]:
    values = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip() for v in frame[name]]
    blank = [str(i + 2) for i, v in enumerate(values) if not v]  # +2: header line, 1-based
    if blank:
        raise InputError(f"{source}: the '{name}' column is empty on line(s) {', '.join(blank[:_MAX_LISTED])}"
                         + (f" and {len(blank) - _MAX_LISTED} more" if len(blank) > _MAX_LISTED else ""))
    return tuple(values)


def read_manifest(manifest: str | os.PathLike[str] | object, root: str | os.PathLike[str] | None = None) -> PairManifest:
    """Read and validate a manifest (CSV path or pandas DataFrame; `root` resolves relative image paths).

    Raises `InputError` for a missing/unreadable file, missing columns, empty cells, unknown
    split names, and - listing all of them at once - missing or unreadable image files.
    """
    import pandas as pd

    if isinstance(manifest, pd.DataFrame):
        frame, source, base = manifest.copy(), "manifest", Path(root) if root is not None else Path.cwd()
        path = None
    else:
        path = Path(manifest)
        source = str(path)
        if not path.is_file():
            raise InputError(f"manifest {path} not found")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as err:  # noqa: BLE001 - any parser failure means the same to the user
            raise InputError(f"cannot read manifest {path} as CSV: {err}") from None
        base = Path(root) if root is not None else path.parent
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if len(frame) == 0:
        raise InputError(f"{source} has no rows")
    has = {name: name in frame.columns for name in ("image", "text", "label", "split")}
    if not (has["text"] or has["label"]):
        raise InputError(f"{source} needs a 'text' or a 'label' column (it has: {', '.join(frame.columns)})")
    if not has["image"] and not has["text"]:
        raise InputError(f"{source} has labels but no 'image' column: text-only training needs a 'text' column")
    mode: Mode = "text-only" if not has["image"] else ("image-text" if has["text"] else "image-label")
    texts = _column(frame, "text", source) if has["text"] else None
    labels = _column(frame, "label", source) if has["label"] else None
    splits = None
    if has["split"]:
        splits = tuple(s.lower() for s in _column(frame, "split", source))
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise InputError(f"{source}: unknown split value(s) {bad}; use 'train' or 'val'")
    images = None
    if has["image"]:
        images = tuple(p if p.is_absolute() else base / p for p in map(Path, _column(frame, "image", source)))
        check_images(images, source)
    return PairManifest(mode, images, texts, labels, splits, path)


def check_images(paths: Sequence[Path], source: str = "manifest") -> None:
    """Raise one `InputError` listing every missing file, then one listing every unreadable image."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise InputError(f"{source}: {len(missing)} of {len(paths)} image files do not exist:" + _listing(missing))
    unreadable = []
    for index, path in enumerate(paths):
        try:
            shape, dtype = image_header(path)
            to_hwc(np.broadcast_to(np.zeros((), dtype), shape), index)  # layout/channel checks, no pixel read
        except (InputError, OSError, ValueError, SyntaxError) as err:
            unreadable.append(f"{path} ({str(err).splitlines()[0] if str(err) else type(err).__name__})")
    if unreadable:
        raise InputError(f"{source}: {len(unreadable)} images cannot be read:" + _listing(unreadable))


def _pil_dtype(mode: str) -> tuple[np.dtype, int]:
    table = {"L": (np.uint8, 1), "RGB": (np.uint8, 3), "RGBA": (np.uint8, 4), "1": (np.bool_, 1), "F": (np.float32, 1)}
    if mode.startswith("I;16"):
        return np.dtype(np.uint16), 1
    if mode in table:
        dtype, channels = table[mode]
        return np.dtype(dtype), channels
    return np.dtype(np.uint8), 3  # palette, CMYK, LA, ...: converted to RGB on read


def image_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the array `read_image` returns, read from the header only."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, mmap_mode="r")
        return tuple(array.shape), array.dtype
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return tuple(page.shape), np.dtype(page.dtype)
    from PIL import Image

    with Image.open(path) as image:
        dtype, channels = _pil_dtype(image.mode)
        if image.mode == "I":
            raise InputError("32-bit integer images are not supported; save as 8- or 16-bit")
        width, height = image.size
    return ((height, width) if channels == 1 else (height, width, channels)), dtype


def read_image(path: Path) -> np.ndarray:
    """Pixels of one image file (PNG/JPEG/... via Pillow, TIFF via tifffile, .npy via numpy)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path)
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path, key=0)
    from PIL import Image

    with Image.open(path) as image:
        if image.mode not in ("L", "RGB", "RGBA", "1", "F") and not image.mode.startswith("I;16"):
            image = image.convert("RGB")
        return np.array(image)


class ImageStore:
    """Reads manifest images on demand and keeps them in memory up to `budget_bytes`."""

    def __init__(self, paths: Sequence[Path], budget_bytes: int = 1 << 30) -> None:
        self.paths = list(paths)
        self.budget = budget_bytes
        self._cache: dict[int, np.ndarray] = {}
        self._used = 0

    def get(self, index: int) -> np.ndarray:
        if index in self._cache:
            return self._cache[index]
        try:
            image = to_hwc(read_image(self.paths[index]), index)
        except Exception as err:  # noqa: BLE001 - a file that passed the header check but cannot be decoded
            if isinstance(err, InputError):
                raise
            raise InputError(
                f"cannot read image {self.paths[index]} ({type(err).__name__}: {str(err)[:150]}); "
                "fix or remove it from the manifest, then rerun to resume"
            ) from None
        if self._used + image.nbytes <= self.budget:
            self._cache[index] = image
            self._used += image.nbytes
        return image

    def many(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [self.get(int(i)) for i in indices]


def split_indices(manifest: PairManifest, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices: the `split` column if present, else a seeded random split."""
    n = len(manifest)
    if manifest.splits is not None:
        splits = np.asarray(manifest.splits)
        train, val = np.flatnonzero(splits == "train"), np.flatnonzero(splits == "val")
    else:
        order = np.random.default_rng(seed).permutation(n)
        n_val = int(round(n * val_fraction))
        val, train = np.sort(order[:n_val]), np.sort(order[n_val:])
    if len(train) < 2:
        raise InputError(f"DAPT needs at least 2 training pairs; the manifest leaves {len(train)} for training")
    return train, val


def epoch_batches(indices: np.ndarray, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of `batch` rows for one epoch (seeded by seed and epoch; last partial batch dropped)."""
    order = indices[np.random.default_rng([seed, epoch]).permutation(len(indices))]
    if len(order) <= batch:
        return [order]
    return [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]


def captions(manifest: PairManifest, rows: Sequence[int], templates: Sequence[str], rng: np.random.Generator | None) -> list[str]:
    """Training text of `rows`: the `text` column, or a template filled with the label (random template
    per row when `rng` is given, else the first)."""
    if manifest.texts is not None:
        return [manifest.texts[i] for i in rows]
    assert manifest.labels is not None
    picks = rng.integers(len(templates), size=len(rows)) if rng is not None else np.zeros(len(rows), int)
    return [templates[t].format(manifest.labels[i]) for t, i in zip(picks, rows)]


def pair_keys(manifest: PairManifest, rows: Sequence[int]) -> list[str]:
    """Rows with the same key are positives for each other: the label when captions come from
    templates (every caption of a class means the same), else the text itself (exact duplicates)."""
    if manifest.mode == "image-label":
        return [manifest.labels[i] for i in rows]
    return [manifest.texts[i] for i in rows]


_SENTENCE_END = re.compile(r"(?<=[.;!?])\s+|\n+")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def text_views(text: str, rng: np.random.Generator, word_dropout: float = 0.15) -> tuple[str, str]:
    """Two views of one report for the text-only objective: a random half of its sentences and the
    other half; a one-sentence report gives two copies with random words dropped."""
    sentences = split_sentences(text)
    if len(sentences) >= 2:
        order = rng.permutation(len(sentences))
        half = len(sentences) // 2
        first, second = sorted(order[:half]), sorted(order[half:])
        return " ".join(sentences[i] for i in first), " ".join(sentences[i] for i in second)
    words = text.split()

    def dropped() -> str:
        keep = rng.random(len(words)) >= word_dropout
        if not keep.any():
            keep[rng.integers(len(words))] = True
        return " ".join(w for w, k in zip(words, keep) if k)

    return dropped(), dropped()


def _random_crop(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random crop of 80-100% of the area, aspect ratio 3/4..4/3, then a coin-flip horizontal flip."""
    _, _, height, width = tensor.shape
    u = torch.rand(4, generator=generator).tolist()
    area = (0.8 + 0.2 * u[0]) * height * width
    ratio = float(np.exp(np.log(3 / 4) + u[1] * (np.log(4 / 3) - np.log(3 / 4))))
    h = max(2, min(height, round((area / ratio) ** 0.5)))
    w = max(2, min(width, round((area * ratio) ** 0.5)))
    top = int(u[2] * (height - h + 1)) if height > h else 0
    left = int(u[3] * (width - w + 1)) if width > w else 0
    tensor = tensor[:, :, top : top + h, left : left + w]
    if torch.rand(1, generator=generator).item() < 0.5:
        tensor = tensor.flip(-1)
    return tensor


def images_to_tensor(
    images: Sequence[np.ndarray],
    spec: ModelSpec,
    device: torch.device,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """N x 3 x S x S model input: the inference preprocessing, plus light augmentation when a
    `generator` is given. Images may differ in size and layout (as `encode_images` accepts)."""
    images = [to_hwc(image, i) for i, image in enumerate(images)]
    out: list[torch.Tensor | None] = [None] * len(images)
    for indices in group_by_shape(images).values():
        tensor = stack_to_tensor([images[i] for i in indices], device)
        if generator is None:
            pixels = preprocess_batch(tensor, spec.image_size, spec.mean, spec.std)
            for j, i in enumerate(indices):
                out[i] = pixels[j]
            continue
        for j, i in enumerate(indices):
            crop = _random_crop(tensor[j : j + 1], generator)
            out[i] = preprocess_batch(crop, spec.image_size, spec.mean, spec.std)[0]
    return torch.stack(out)  # type: ignore[arg-type]
