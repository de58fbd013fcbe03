"""Zero-shot ILD steps: score patches against finding prompts, pick the top k apart in space, classify a montage.

Prompts are plain data (editable dicts: class -> one or more phrasings, filled into templates
and averaged per class, the CLIP ensembling recipe). A patch's relevance score is the
probability mass its zero-shot softmax puts on the abnormal findings (1 - P(normal)), or its
largest class probability when no class is marked normal.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.ct.montage import Montage
from napari_clipmed.ct.patches import Patches
from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    from napari_clipmed.models.model import ClipModel

# Findings a chest CT patch is scored against (Fleischner glossary terms, plus normal lung).
ILD_PATCH_PROMPTS: dict[str, tuple[str, ...]] = {
    "honeycombing": ("honeycombing", "clustered cystic airspaces of honeycomb lung"),
    "reticulation": ("reticulation", "reticular opacities of interstitial fibrosis"),
    "ground-glass opacity": ("ground-glass opacity", "hazy ground-glass attenuation"),
    "traction bronchiectasis": ("traction bronchiectasis", "dilated airways from fibrotic traction"),
    "consolidation": ("consolidation", "dense airspace consolidation"),
    "emphysema": ("emphysema", "low-attenuation areas of emphysema"),
    "normal lung parenchyma": ("normal lung parenchyma", "healthy lung tissue"),
}
PATCH_TEMPLATES: tuple[str, ...] = ("a chest CT image of {}.", "a lung CT patch showing {}.")
NORMAL_CLASSES: tuple[str, ...] = ("normal lung parenchyma",)

# Montage-level class sets (editable; pass your own dict to classify_montage).
ILD_CLASS_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "ild": {
        "ILD": ("interstitial lung disease", "pulmonary fibrosis"),
        "no ILD": ("normal lungs", "healthy lung parenchyma without fibrosis"),
    },
    "uip": {
        "UIP pattern": ("usual interstitial pneumonia with basal subpleural honeycombing",
                        "a UIP pattern of pulmonary fibrosis"),
        "other": ("non-UIP interstitial lung disease", "nonspecific interstitial pneumonia"),
    },
}
CLASS_TEMPLATES: tuple[str, ...] = ("a montage of chest CT patches showing {}.", "a CT image of {}.")


@dataclass(eq=False)
class PatchScores:
    """Zero-shot scores of every patch: per-class cosine similarities and probabilities, one relevance score."""

    classes: list[str]
    embeddings: np.ndarray  # (N, D) image embeddings, L2-normalised
    similarities: np.ndarray  # (N, C) cosine
    probabilities: np.ndarray  # (N, C) softmax(logit_scale * cosine)
    score: np.ndarray  # (N,) relevance used for top-k
    normal_classes: tuple[str, ...] = NORMAL_CLASSES

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        frame = pd.DataFrame(self.probabilities, columns=[f"p_{c}" for c in self.classes])
        frame.insert(0, "score", self.score)
        return frame


def iter_score_patches(
    model: ClipModel,
    patches: Patches,
    prompts: Mapping[str, Sequence[str] | str] | None = None,
    templates: Sequence[str] | None = None,
    normal_classes: Sequence[str] = NORMAL_CLASSES,
    batch_size: int = 64,
) -> ProgressGenerator[PatchScores]:
    """Encode all patches in batches (yields Progress per batch) and score them against `prompts`."""
    from napari_clipmed.zeroshot import ZeroShotClassifier

    if len(patches) == 0:
        raise InputError("no patches to score")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    classifier = ZeroShotClassifier.from_prompts(model, dict(prompts or ILD_PATCH_PROMPTS), list(templates or PATCH_TEMPLATES))
    unknown = [c for c in normal_classes if c not in classifier.classes]
    if unknown:
        raise InputError(f"normal class(es) {unknown} are not among the prompt classes {classifier.classes}")
    size = int(model.spec.image_size)
    total = len(patches)
    embeddings = np.empty((total, int(model.embed_dim)), dtype=np.float32)
    yield Progress(0, total, f"scoring {total} patches")
    for idx, images in patches.iter_images(batch_size=batch_size, size=size):
        embeddings[idx] = model.encode_images(images, batch_size=batch_size)
        yield Progress(int(idx[-1]) + 1, total, f"scored {int(idx[-1]) + 1} of {total} patches")
    sims = classifier.scores(embeddings)
    probs = classifier.predict_proba(embeddings)
    normal = [classifier.classes.index(c) for c in normal_classes]
    score = 1.0 - probs[:, normal].sum(axis=1) if normal else probs.max(axis=1)
    return PatchScores(classifier.classes, embeddings, sims, probs, score.astype(np.float64), tuple(normal_classes))


def score_patches(model: ClipModel, patches: Patches, prompts: Mapping[str, Sequence[str] | str] | None = None,
                  **kwargs: object) -> PatchScores:
    """Plain-call twin of `iter_score_patches`."""
    return run_generator(iter_score_patches(model, patches, prompts, **kwargs))  # type: ignore[arg-type]


def select_top_k(scores: Sequence[float] | np.ndarray, patches: Patches, k: int, min_distance_mm: float) -> np.ndarray:
    """Indices of up to `k` patches, best first, no two centres closer than `min_distance_mm` (3-D, in mm).

    Greedy non-maximum suppression: take the best remaining patch, drop every patch within
    `min_distance_mm` of it, repeat. Fewer than `k` come back when the lung has no more room.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (len(patches),):
        raise InputError(f"need one score per patch ({len(patches)}), got shape {s.shape}")
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    if min_distance_mm < 0:
        raise InputError(f"min_distance_mm must be >= 0, got {min_distance_mm}")
    centres = patches.centre_mm
    order = np.argsort(-s, kind="stable")  # ties: lower index first
    alive = np.ones(len(s), dtype=bool)
    alive[np.isnan(s)] = False
    chosen: list[int] = []
    for i in order:
        if not alive[i]:
            continue
        chosen.append(int(i))
        if len(chosen) == k:
            break
        d2 = ((centres - centres[i]) ** 2).sum(axis=1)
        alive &= d2 >= min_distance_mm**2
    return np.asarray(chosen, dtype=np.int64)


def square_image(image: np.ndarray) -> np.ndarray:
    """Pad an (H, W, 3) image with black to a square, centred, so a CLIP centre crop keeps all of it."""
    h, w = image.shape[:2]
    side = max(h, w)
    out = np.zeros((side, side, image.shape[2]), dtype=image.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = image
    return out


def classify_montage(
    model: ClipModel,
    montage: Montage | np.ndarray,
    class_prompts: Mapping[str, Sequence[str] | str] | None = None,
    templates: Sequence[str] | None = None,
) -> dict[str, float]:
    """Zero-shot class probabilities of the montage (default classes: ILD vs no ILD)."""
    from napari_clipmed.zeroshot import ZeroShotClassifier

    image = montage.image if isinstance(montage, Montage) else np.asarray(montage)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"a montage is an (H, W, 3) image, got shape {image.shape}")
    classes = dict(class_prompts or ILD_CLASS_PRESETS["ild"])
    classifier = ZeroShotClassifier.from_prompts(model, classes, list(templates or CLASS_TEMPLATES))
    embedding = model.encode_images([square_image(image)])
    probs = classifier.predict_proba(embedding)[0]
    return {name: float(p) for name, p in zip(classifier.classes, probs)}
