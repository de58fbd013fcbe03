"""Zero-shot classification with prompt-template ensembles, and the editable prompt presets.

A class is described by one or more names; each template ("an H&E image of {}.") is filled with
each name, the text embeddings are averaged and re-normalised (the standard CLIP recipe), and an
image's class probabilities are the softmax of `logit_scale` times its cosine similarities.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, Union

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    from napari_clipmed.models.cache import EmbeddingCache
    from napari_clipmed.models.model import ClipModel

DEFAULT_TEMPLATES: tuple[str, ...] = ("an H&E image of {}.", "a histopathology image of {}.")
ClassSpec = Sequence[str] | Mapping[str, Sequence[str] | str]
DOCUMENT_SUFFIXES = (".yaml", ".yml", ".json")
# What `PromptSet.parse` reads: a PromptSet, a mapping, a list of class names, a preset, a file or class text.
PromptSource: TypeAlias = Union["PromptSet", Mapping[str, Any], Sequence[str], str, "os.PathLike[str]"]


def check_templates(templates: Sequence[str], source: str = "templates") -> tuple[str, ...]:
    """The non-empty templates, each with exactly one `{}` (where the class name goes); else one InputError."""
    temps = tuple(t for t in templates if t.strip())
    if not temps:
        raise InputError(f"{source}: at least one prompt template is needed, e.g. 'an H&E image of {{}}.'")
    for t in temps:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as err:
            raise InputError(f"{source}: template {t!r} has unbalanced braces ({err})") from None
        if fields != [""]:
            raise InputError(
                f"{source}: template {t!r} needs a {{}} where the class name goes (exactly one, and no other braces)"
            )
    return temps


def _class_key(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.casefold())


def check_class_names(names: Sequence[str], source: str = "classes") -> None:
    """Refuse class names that differ only in case, spaces or punctuation (one InputError naming them)."""
    seen: dict[str, str] = {}
    for name in names:
        key = _class_key(name)
        if not key:
            raise InputError(f"{source}: class name {name!r} has no letters or digits")
        if key in seen:
            raise InputError(f"{source}: classes {seen[key]!r} and {name!r} differ only in case or punctuation")
        seen[key] = name


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
        if not isinstance(classes, (Mapping, Sequence)) or (
            isinstance(classes, Mapping) and not all(isinstance(v, (str, list, tuple)) for v in classes.values())
        ):
            raise InputError(f"classes must be a list of names or a mapping class -> name(s), got {classes!r}")
        if isinstance(classes, Mapping):
            table = {str(k): (v,) if isinstance(v, str) else tuple(v) for k, v in classes.items()}
        else:
            table = {str(c): (str(c),) for c in classes}
        table = {k.strip(): tuple(n.strip() for n in v if n.strip()) for k, v in table.items() if k.strip()}
        check_class_names(list(table))
        if len(table) < 2:
            raise InputError(f"zero-shot classification needs at least two classes, got {list(table) or 'none'}")
        empty = [k for k, v in table.items() if not v]
        if empty:
            raise InputError(f"classes without any name: {', '.join(empty)}")
        temps = check_templates(templates or DEFAULT_TEMPLATES)
        return cls(classes=table, templates=temps, name=name)

    @classmethod
    def parse(
        cls,
        source: PromptSource,
        templates: Sequence[str] | str | None = None,
        *,
        name: str | None = None,
        presets: Mapping[str, ClassSpec] | None = None,
    ) -> PromptSet:
        """The one prompt syntax, used identically by the widgets, `api` and the CLI.

        `source` may be:
        - a `PromptSet` (returned as is, or with `templates` swapped in);
        - a mapping: a document ``{classes: ..., templates: [...], name: ..., description: ...}`` or
          directly class -> name(s);
        - a list of class names;
        - a string: a preset name (the bundled presets, or a key of `presets`, e.g. the CT class
          sets), a ``.yaml``/``.yml``/``.json`` file holding a mapping as above, inline JSON/YAML
          starting with ``{``, or class text: one class per line (or, on a single line, separated
          by commas), each ``name`` or ``name: synonym 1; synonym 2``.

        `templates` (a list, or text: one per line, or ``;``-separated on one line) replaces the
        source's templates. Every mistake is one `InputError` that says what to fix.
        """
        if isinstance(source, PromptSet):
            if templates is None and name is None:
                return source
            made = cls.from_spec(source.classes, _template_list(templates) or source.templates, name or source.name)
            return replace(made, description=source.description)
        if isinstance(source, Mapping):
            return cls._from_document(source, templates, name, "the prompt mapping")
        if isinstance(source, os.PathLike):
            source = os.fspath(source)
        if not isinstance(source, str):
            return cls.from_spec([str(c) for c in source], _template_list(templates), name or "custom")
        text = source.strip()
        table = {**{p: None for p in list_presets()}, **dict(presets or {})}
        if text in table:
            preset = table[text]
            if preset is None:
                return cls._from_file(_preset_dir() / f"{text}.yaml", templates, name)
            return cls._from_document({"classes": preset, "name": text}, templates, name, f"preset {text!r}")
        if Path(text).suffix.lower() in DOCUMENT_SUFFIXES and "\n" not in text:
            return cls._from_file(Path(text), templates, name)
        if text.startswith("{"):
            return cls._from_document(_load_yaml(text, "the inline prompts"), templates, name, "the inline prompts")
        entries = text.splitlines() if "\n" in text else text.split(",")
        if len([e for e in entries if e.strip()]) == 1 and ":" not in text:
            raise InputError(
                f"unknown preset {text!r} (presets: {', '.join(table)}); or give a YAML/JSON file, or two or "
                "more classes (one per line, or separated by commas)"
            )
        return cls.from_spec(parse_classes(entries), _template_list(templates), name or "custom")

    @classmethod
    def _from_file(
        cls, path: Path, templates: Sequence[str] | str | None, name: str | None
    ) -> PromptSet:
        if not path.is_file():
            raise InputError(f"prompt file not found: {path}")
        data = _load_yaml(path.read_text(encoding="utf-8"), str(path))
        return cls._from_document(data, templates, name or path.stem, str(path), default_name=path.stem)

    @classmethod
    def _from_document(
        cls,
        data: object,
        templates: Sequence[str] | str | None,
        name: str | None,
        what: str,
        default_name: str = "custom",
    ) -> PromptSet:
        if not isinstance(data, Mapping):
            raise InputError(f"{what} must be a mapping of classes to names (or have a 'classes:' section)")
        if "classes" not in data and "templates" in data:
            raise InputError(f"{what} has templates but no 'classes:' section")
        doc: Mapping[str, Any] = data if "classes" in data else {"classes": data}
        given: Sequence[str] | None = _template_list(templates)
        made = cls.from_spec(
            doc["classes"],
            given if given is not None else doc.get("templates"),
            name or str(doc.get("name", default_name)),
        )
        return replace(made, description=str(doc.get("description", "")))

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
    """A bundled preset by name, or a YAML/JSON prompt file (`PromptSet.parse` of either)."""
    text = os.fspath(name_or_path)
    if text not in list_presets() and Path(text).suffix.lower() not in DOCUMENT_SUFFIXES:
        raise InputError(f"unknown preset {text!r}; bundled presets: {', '.join(list_presets())}")
    return PromptSet.parse(text)


def parse_classes(text: str | Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Class text: one class per line (or per list item), ``name`` or ``name: synonym 1; synonym 2``.

    Blank lines and lines starting with ``#`` are skipped; a class listed twice is an error.
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)
    classes: dict[str, tuple[str, ...]] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        name = name.strip()
        if not name:
            raise InputError(f"classes, line {number}: a class needs a name before the ':'")
        if name in classes:
            raise InputError(f"class '{name}' is listed twice; give each class one line")
        classes[name] = tuple(s.strip() for s in rest.split(";") if s.strip()) if rest.strip() else (name,)
    return classes


def format_classes(classes: Mapping[str, Sequence[str]]) -> str:
    """The class text `parse_classes` reads back (one class per line)."""
    lines = []
    for name, names in classes.items():
        lines.append(name if tuple(names) == (name,) else f"{name}: {'; '.join(names)}")
    return "\n".join(lines)


def _template_list(templates: Sequence[str] | str | None) -> tuple[str, ...] | None:
    """Templates from a list, or text (one per line, or ``;``-separated on one line); None when none given."""
    if templates is None:
        return None
    if isinstance(templates, str):
        parts = templates.splitlines() if "\n" in templates.strip() else templates.split(";")
    else:
        parts = list(templates)
    found = tuple(t.strip() for t in parts if t.strip())
    if not found:
        raise InputError("add at least one prompt template, e.g. 'an H&E image of {}.'")
    return found


def _load_yaml(text: str, what: str) -> object:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InputError(f"{what} is not valid YAML/JSON: {str(err).splitlines()[0]}") from None


@dataclass
class ZeroShotClassifier:
    """Class text embeddings of one model; turns image embeddings into class probabilities."""

    prompts: PromptSet
    class_embeddings: np.ndarray  # (C, D), rows L2-normalised
    logit_scale: float
    model_signature: str = ""
    scoring: str = "softmax"  # the model's rule: softmax over classes, or sigmoid per class (SigLIP)
    logit_bias: float = 0.0
    temperature: float = 1.0  # probabilities of logits / T; fitted by `calibration.calibrate_temperature`

    @classmethod
    def from_prompts(
        cls, model: ClipModel, classes: ClassSpec | PromptSet, templates: Sequence[str] | None = None
    ) -> ZeroShotClassifier:
        """Embed every prompt of every class with `model` and average per class."""
        prompts = classes if isinstance(classes, PromptSet) else PromptSet.from_spec(classes, templates)
        rows = []
        for name in prompts.class_names:
            emb = model.encode_texts(prompts.prompts_for(name)).mean(axis=0)
            rows.append(emb / max(np.linalg.norm(emb), 1e-12))
        return cls(prompts, np.stack(rows).astype(np.float32), model.logit_scale, model.signature,
                   getattr(model, "scoring", "softmax"), getattr(model, "logit_bias", 0.0))

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
        return self.logit_scale * self.scores(image_embeddings) + self.logit_bias

    def predict_proba(self, image_embeddings: np.ndarray) -> np.ndarray:
        """(N, C) probabilities by the model's rule: softmax over classes (rows sum to 1) or, for
        sigmoid models, each class's own probability (rows need not sum to 1); logits divided by
        the fitted temperature first."""
        from napari_clipmed.calibration import softmax

        logits = self.logits(image_embeddings).astype(np.float64)
        if self.scoring == "sigmoid":
            return (1.0 / (1.0 + np.exp(-logits / self.temperature))).astype(np.float32)
        return softmax(logits, self.temperature).astype(np.float32)

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
    model: ClipModel,
    images: Sequence[np.ndarray] | np.ndarray,
    classifier: ZeroShotClassifier,
    *,
    ids: Sequence[str] | None = None,
    batch_size: int = 64,
    cache: EmbeddingCache | None = None,
) -> ProgressGenerator[ZeroShotResult]:
    """Encode `images` and classify them; yields Progress per batch."""
    embeddings = yield from model.iter_encode_images(images, batch_size=batch_size, cache=cache)
    probs = classifier.predict_proba(embeddings)
    yield Progress(len(probs), len(probs), "classified")
    return ZeroShotResult(classifier.classes, probs, list(ids) if ids is not None else [])


def classify_images(model: ClipModel, images, classes: ClassSpec | PromptSet, templates=None, **kwargs) -> ZeroShotResult:
    """Plain-call form: build the classifier and classify `images`."""
    classifier = ZeroShotClassifier.from_prompts(model, classes, templates)
    return run_generator(iter_classify_images(model, images, classifier, **kwargs))
