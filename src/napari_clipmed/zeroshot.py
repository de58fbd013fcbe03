"""Zero-shot classification with prompt-template ensembles, and the editable prompt presets.

A class is described by one or more names; each template ("an H&E image of {}.") is filled with
each name, the text embeddings are averaged and re-normalised (the standard CLIP recipe), and an
image's class probabilities are the softmax of `logit_scale` times its cosine similarities.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

DEFAULT_TEMPLATES: tuple[str, ...] = ("an H&E image of {}.", "a histopathology image of {}.")
ClassSpec = Sequence[str] | Mapping[str, Sequence[str] | str]


@dataclass(frozen=True)
class PromptSet:
    """Classes (each with one or more names) and the templates that turn names into prompts."""

    classes: dict[str, tuple[str, ...]]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    name: str = "custom"
    description: str = ""

    @classmethod
    def from_spec(cls, classes: ClassSpec, templates: Sequence[str] | None = None, name: str = "custom") -> PromptSet:
        """Build from a list of class names or a mapping class -> name(s)."""
        if isinstance(classes, str):
            classes = [c.strip() for c in classes.split(",")]
        if isinstance(classes, Mapping):
            table = {str(k): (v,) if isinstance(v, str) else tuple(v) for k, v in classes.items()}
        else:
            table = {str(c): (str(c),) for c in classes}
        table = {k.strip(): tuple(n.strip() for n in v if n.strip()) for k, v in table.items() if k.strip()}
        if len(table) < 2:
            raise InputError(f"zero-shot classification needs at least two classes, got {list(table) or 'none'}")
        empty = [k for k, v in table.items() if not v]
        if empty:
            raise InputError(f"classes without any name: {', '.join(empty)}")
        temps = tuple(t for t in (templates or DEFAULT_TEMPLATES) if t.strip())
        if not temps:
            raise InputError("at least one prompt template is needed, e.g. 'an H&E image of {}.'")
        bad = [t for t in temps if "{}" not in t]
        if bad:
            raise InputError(f"every template needs a {{}} where the class name goes; these lack it: {bad}")
        return cls(classes=table, templates=temps, name=name)

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def prompts_for(self, class_name: str) -> list[str]:
        return [t.format(n) for n in self.classes[class_name] for t in self.templates]


def _preset_dir() -> Path:
    return Path(str(resources.files("napari_clipmed") / "data" / "presets"))


def list_presets() -> list[str]:
    """Names of the bundled presets (files in `napari_clipmed/data/presets/`)."""
    return sorted(p.stem for p in _preset_dir().glob("*.yaml"))


def load_preset(name_or_path: str | os.PathLike[str]) -> PromptSet:
    """A bundled preset by name, or any YAML file with `classes:` and `templates:`."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = _preset_dir() / f"{name_or_path}.yaml"
    if not path.is_file():
        raise InputError(f"unknown preset {str(name_or_path)!r}; bundled presets: {', '.join(list_presets())}")
    data = yaml.safe_load(path.read_text()) or {}
    if "classes" not in data:
        raise InputError(f"preset file {path} has no 'classes:' section")
    prompts = PromptSet.from_spec(data["classes"], data.get("templates"), name=data.get("name", path.stem))
    return PromptSet(prompts.classes, prompts.templates, prompts.name, data.get("description", ""))


@dataclass
class ZeroShotClassifier:
    """Class text embeddings of one model; turns image embeddings into class probabilities."""

    prompts: PromptSet
    class_embeddings: np.ndarray  # (C, D), rows L2-normalised
    logit_scale: float
    model_signature: str = ""
    temperature: float = 1.0  # softmax(logits / T); fitted by `calibration.calibrate_temperature`

    @classmethod
    def from_prompts(
        cls, model: object, classes: ClassSpec | PromptSet, templates: Sequence[str] | None = None
    ) -> ZeroShotClassifier:
        """Embed every prompt of every class with `model` and average per class."""
        prompts = classes if isinstance(classes, PromptSet) else PromptSet.from_spec(classes, templates)
        rows = []
        for name in prompts.class_names:
            emb = model.encode_texts(prompts.prompts_for(name)).mean(axis=0)
            rows.append(emb / max(np.linalg.norm(emb), 1e-12))
        return cls(prompts, np.stack(rows).astype(np.float32), model.logit_scale, getattr(model, "signature", ""))

    @property
    def classes(self) -> list[str]:
        return self.prompts.class_names

    def _check(self, image_embeddings: np.ndarray) -> np.ndarray:
        emb = np.asarray(image_embeddings, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != self.class_embeddings.shape[1]:
            raise InputError(
                f"image embeddings of shape {emb.shape} do not match this classifier's "
                f"{self.class_embeddings.shape[1]}-d text embeddings (were they made by another model?)"
            )
        return emb

    def scores(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N, C) cosine similarities."""
        return self._check(image_embeddings) @ self.class_embeddings.T

    def logits(self, image_embeddings: np.ndarray) -> np.ndarray:
        return self.logit_scale * self.scores(image_embeddings)

    def predict_proba(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N, C) softmax probabilities."""
        logits = self.logits(image_embeddings).astype(np.float64) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N,) index of the most probable class."""
        return np.argmax(self.scores(image_embeddings), axis=1)


@dataclass
class ZeroShotResult:
    """Per-image probabilities and predicted labels."""

    classes: list[str]
    probabilities: np.ndarray  # (N, C)
    ids: list[str] = field(default_factory=list)

    @property
    def predicted_index(self) -> np.ndarray:
        return np.argmax(self.probabilities, axis=1)

    @property
    def predicted(self) -> list[str]:
        return [self.classes[i] for i in self.predicted_index]

    def to_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        from napari_clipmed.calibration import confidence_columns

        frame = pd.DataFrame(self.probabilities, columns=[f"p({c})" for c in self.classes])
        for i, (name, values) in enumerate(confidence_columns(self.probabilities).items()):
            frame.insert(i, name, values)
        frame.insert(0, "predicted", self.predicted)
        if self.ids:
            frame.insert(0, "id", self.ids)
        return frame


def iter_classify_images(
    model: object,
    images: Sequence[np.ndarray] | np.ndarray,
    classifier: ZeroShotClassifier,
    *,
    ids: Sequence[str] | None = None,
    batch_size: int = 64,
    cache: object | None = None,
) -> ProgressGenerator[ZeroShotResult]:
    """Encode `images` and classify them; yields Progress per batch."""
    embeddings = yield from model.iter_encode_images(images, batch_size=batch_size, cache=cache)
    probs = classifier.predict_proba(embeddings)
    yield Progress(len(probs), len(probs), "classified")
    return ZeroShotResult(classifier.classes, probs, list(ids) if ids is not None else [])


def classify_images(model: object, images, classes: ClassSpec | PromptSet, templates=None, **kwargs) -> ZeroShotResult:
    """Plain-call form: build the classifier and classify `images`."""
    classifier = ZeroShotClassifier.from_prompts(model, classes, templates)
    return run_generator(iter_classify_images(model, images, classifier, **kwargs))
