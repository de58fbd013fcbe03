"""Single runs on a tile set: reading its tiles, and zero-shot classification with metrics.

These are the building blocks of the robustness grid and of `clipmed zeroshot` (indexing a gallery is `ops.retrieval`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed import metrics
from napari_clipmed.datasets import TileSet, iter_read_images
from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, ProgressGenerator

if TYPE_CHECKING:
    import pandas as pd

    from napari_clipmed.models.cache import EmbeddingCache
    from napari_clipmed.models.model import ClipModel
    from napari_clipmed.zeroshot import PromptSet


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def tileset_prompts(
    class_names: Sequence[str],
    preset: str | None = None,
    templates: Sequence[str] | None = None,
) -> tuple[PromptSet, np.ndarray]:
    """The prompt set for a tile set and, per tile-set class, its column among the prompt classes.

    With a preset, every tile-set class must match a preset class (case, `_` and `-` ignored);
    the preset's other classes stay as options the model may (wrongly) choose. Without one, the
    class names themselves are the prompts (`_` read as a space).
    """
    from napari_clipmed.zeroshot import PromptSet

    if preset is not None:
        prompts = PromptSet.parse(preset, templates or None)
    else:
        prompts = PromptSet.from_spec({c: c.replace("_", " ") for c in class_names}, templates, name="tile-set classes")
    return prompts, prompt_columns(class_names, prompts)


def prompt_columns(class_names: Sequence[str], prompts: PromptSet) -> np.ndarray:
    """For each tile-set class, the index of the matching prompt class (case, `_`, `-` ignored)."""
    lookup = {_norm(c): i for i, c in enumerate(prompts.class_names)}
    missing = [c for c in class_names if _norm(c) not in lookup]
    if missing:
        raise InputError(
            f"tile-set classes not among the prompt classes of '{prompts.name}': {', '.join(missing)}; "
            f"those are: {', '.join(prompts.class_names)} (rename the folders or edit the preset)"
        )
    return np.array([lookup[_norm(c)] for c in class_names], dtype=np.int64)


@dataclass
class LoadedTiles:
    """The readable tiles of a tile set (as arrays) and the files that could not be read."""

    tileset: TileSet  # only the readable tiles
    images: list[np.ndarray]
    failed: list[tuple[str, str]] = field(default_factory=list)


def iter_load_tiles(tileset: TileSet) -> ProgressGenerator[LoadedTiles]:
    """Read every tile; unreadable ones are dropped (and reported, with a warning)."""
    read = yield from iter_read_images(tileset.paths)
    if not read.images:
        raise InputError(f"none of the {len(tileset)} images could be read (first: {read.failed[0][0]}: {read.failed[0][1]})")
    return LoadedTiles(tileset.subset(read.indices), read.images, read.failed)


@dataclass
class ZeroShotEvaluation:
    """Per-tile predictions of one model, and the metrics when the true labels are known."""

    model: str
    classes: list[str]
    probabilities: np.ndarray  # (N, C) over `classes`
    paths: list[str]
    true: list[str] | None = None
    scores: dict[str, float] = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per tile: path[, label], predicted, probability, margin, entropy, p(<class>)..."""
        import pandas as pd

        from napari_clipmed.calibration import confidence_columns

        frame = pd.DataFrame(self.probabilities, columns=[f"p({c})" for c in self.classes])
        for i, (name, values) in enumerate(confidence_columns(self.probabilities).items()):
            frame.insert(i, name, values)
        frame.insert(0, "predicted", [self.classes[i] for i in np.argmax(self.probabilities, axis=1)])
        if self.true is not None:
            frame.insert(0, "label", self.true)
        frame.insert(0, "path", self.paths)
        return frame


def zeroshot_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """The robustness study's classification metrics (labels as prompt-class columns)."""
    return {
        "zeroshot_accuracy": metrics.accuracy(y_true, y_pred),
        "zeroshot_balanced_accuracy": metrics.balanced_accuracy(y_true, y_pred),
        "zeroshot_f1_weighted": metrics.f1(y_true, y_pred, "weighted"),
    }


def iter_zeroshot_tiles(
    model: ClipModel,
    tiles: LoadedTiles,
    prompts: PromptSet,
    columns: np.ndarray | None = None,
    *,
    batch_size: int = 64,
    cache: EmbeddingCache | None = None,
    temperature: float = 1.0,
) -> ProgressGenerator[ZeroShotEvaluation]:
    """Classify `tiles` zero-shot (softmax at `temperature`); with `columns` (tile class -> prompt column) also score them."""
    from dataclasses import replace

    from napari_clipmed.zeroshot import ZeroShotClassifier

    classifier = replace(ZeroShotClassifier.from_prompts(model, prompts), temperature=temperature)
    emb = yield from model.iter_encode_images(tiles.images, batch_size=batch_size, cache=cache)
    probs = classifier.predict_proba(emb)
    ts = tiles.tileset
    result = ZeroShotEvaluation(model.spec.name, classifier.classes, probs, [str(p) for p in ts.paths])
    if columns is not None:
        result.true = list(ts.label_names)
        result.scores = zeroshot_scores(columns[ts.labels], np.argmax(probs, axis=1))
    yield Progress(len(probs), len(probs), "classified")
    return result
