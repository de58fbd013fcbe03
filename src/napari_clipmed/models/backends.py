"""Model backends: who builds a registry model's network. open_clip is built in; others plug in.

A backend turns a `ModelSpec` and its weights into a torch module the encoder can run. Everything
else (batching, preprocessing, device, precision, embedding cache, zero-shot, retrieval indexes,
widgets, commands) is napari-clipmed's and works unchanged for any backend. The protocol:

- **preprocessing spec**: the `ModelSpec` fields `image_size`, `mean`, `std`, `resize` (``crop``:
  shorter side to `image_size` and centre crop; ``squash``: both sides to `image_size`) and
  `interpolation` (``bicubic`` / ``bilinear``). The encoder feeds the module pixels already
  preprocessed this way: float32, N x 3 x `image_size` x `image_size`.
- ``backend.load(spec, weights, device) -> BackendNetwork``: `weights` is the resolved file or
  folder (a bundle, see `models.bundle`), or None for a model that needs none. It must not open a
  network connection. The returned `module` has ``encode_image(pixels) -> (N, D)`` and
  ``encode_text(tokens) -> (N, D)`` (any scale: the encoder L2-normalises), a ``logit_scale``
  parameter (log of the scale) and, for sigmoid scoring, a ``logit_bias``. The `tokenizer` maps a
  list of strings to an (N, L) LongTensor and has a ``context_length``; with ``count_tokens(text)``
  a prompt longer than the context is refused instead of cut.
- **scoring rule**: `spec.scoring`: ``softmax`` over classes (CLIP) or ``sigmoid`` per class
  (SigLIP: ``sigmoid(scale * cosine + bias)``); the zero-shot classifier follows it.
- ``backend.models``: the `ModelSpec`s it provides (their `backend` field is its name); they join
  the registry when the backend is registered.

Third-party packages register a backend with an entry point in the ``napari_clipmed.backends``
group, e.g. in pyproject.toml::

    [project.entry-points."napari_clipmed.backends"]
    conch = "clipmed_conch:backend"

The object named is a backend or a zero-argument callable returning one. Entry points are read
once, on the first registry lookup; one that fails to import is reported (with its error) when a
model of it is asked for and by `clipmed models`, and never breaks the other models.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from napari_clipmed.errors import BackendError
from napari_clipmed.models.registry import MODELS, ModelSpec

if TYPE_CHECKING:
    import torch

ENTRY_POINT_GROUP = "napari_clipmed.backends"
BUILTIN_BACKENDS: dict[str, str] = {"hf_siglip": "napari_clipmed.models.hf_siglip:BACKEND"}
OPEN_CLIP = "open_clip"  # built by `models.loader` itself


@dataclass
class BackendNetwork:
    """What a backend's `load` returns: the network, its tokenizer, and the spec it was built for.

    `spec` may differ from the one asked for (e.g. image size read from the checkpoint's config).
    """

    module: Any  # torch.nn.Module with encode_image, encode_text, logit_scale [, logit_bias]
    tokenizer: Any
    spec: ModelSpec


@runtime_checkable
class Backend(Protocol):
    """The protocol a model backend implements (see the module docstring)."""

    name: str
    models: Sequence[ModelSpec]

    def load(self, spec: ModelSpec, weights: Path | None, device: torch.device) -> BackendNetwork: ...


_BACKENDS: dict[str, Backend] = {}
_BROKEN: dict[str, str] = {}  # entry-point name -> why it failed
_discovered = False


def register_backend(backend: Backend, *, overwrite: bool = False) -> Backend:
    """Add `backend` and register its models (each must name this backend)."""
    if not isinstance(backend, Backend):
        raise BackendError(f"{backend!r} is not a model backend (it needs name, models and load(spec, weights, device))")
    if backend.name in _BACKENDS and not overwrite and _BACKENDS[backend.name] is not backend:
        raise BackendError(f"a backend named {backend.name!r} is already registered")
    for spec in backend.models:
        if spec.backend != backend.name:
            raise BackendError(f"backend {backend.name!r} provides model {spec.name!r} whose backend is {spec.backend!r}")
        if spec.name in MODELS and MODELS[spec.name].backend != backend.name:
            raise BackendError(f"backend {backend.name!r}: a model named {spec.name!r} is already registered")
    _BACKENDS[backend.name] = backend
    _BROKEN.pop(backend.name, None)
    for spec in backend.models:
        MODELS[spec.name] = spec
    return backend


def _load_entry_point(ep: Any) -> None:
    try:
        obj = ep.load()
        if not isinstance(obj, Backend) and callable(obj):
            obj = obj()
        register_backend(obj)
    except Exception as err:  # noqa: BLE001 - a broken plug-in must not break the others
        detail = str(err).splitlines()[0][:200] if str(err) else "no details"
        _BROKEN[ep.name] = (
            f"the model backend {ep.name!r} (entry point {ep.value} in group {ENTRY_POINT_GROUP}) failed to load: "
            f"{type(err).__name__}: {detail}"
        )


def discover_backends() -> None:
    """Read the ``napari_clipmed.backends`` entry points (once per process)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _load_entry_point(ep)


def rediscover_backends() -> None:
    """Read the entry points again (after installing a backend package in a running session)."""
    global _discovered
    _discovered = False
    discover_backends()


def broken_backends() -> dict[str, str]:
    """Backends whose entry point failed to load: name -> the reason, as shown to the user."""
    discover_backends()
    return dict(_BROKEN)


def get_backend(name: str) -> Backend:
    """The backend called `name` (built in, registered, or from an entry point)."""
    discover_backends()
    if name in _BACKENDS:
        return _BACKENDS[name]
    if name in BUILTIN_BACKENDS:
        module, _, attr = BUILTIN_BACKENDS[name].partition(":")
        return register_backend(getattr(importlib.import_module(module), attr))
    if name in _BROKEN:
        raise BackendError(_BROKEN[name])
    known = [OPEN_CLIP, *BUILTIN_BACKENDS, *_BACKENDS]
    raise BackendError(f"unknown model backend {name!r}; known backends: {', '.join(dict.fromkeys(known))}")
