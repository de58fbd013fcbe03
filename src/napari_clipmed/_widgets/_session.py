"""One loaded model per viewer, shared by every napari-clipmed widget docked in it.

The session is a plain object (no Qt widgets) kept in a weak map keyed by the viewer, so a
new viewer gets a fresh session and closing a viewer frees its model.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from psygnal import Signal

from napari_clipmed.errors import InputError

if TYPE_CHECKING:
    from napari_clipmed.models.model import ClipModel


def preload_triton() -> None:
    """Load Triton's LLVM with RTLD_DEEPBIND before torch pulls it in, once, on Linux.

    With software OpenGL (Mesa llvmpipe: Xvfb, VMs, remote desktops) napari's canvas loads
    Mesa's libLLVM; torchvision then imports torch._dynamo, which imports Triton, whose own LLVM
    binds to Mesa's symbols and the process segfaults. Binding Triton's library to its own symbols
    first avoids that; without Triton (CPU torch wheels) or once it is imported, this does nothing.
    """
    if not sys.platform.startswith("linux") or "triton" in sys.modules or not hasattr(os, "RTLD_DEEPBIND"):
        return
    try:
        if importlib.util.find_spec("triton") is None:
            return
    except (ImportError, ValueError):
        return
    flags = sys.getdlopenflags()
    try:
        sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
        importlib.import_module("triton._C.libtriton")
    except Exception:  # noqa: BLE001 - a broken Triton: torch treats it as absent later
        pass
    finally:
        sys.setdlopenflags(flags)


@dataclass(frozen=True)
class ModelChoice:
    """What the user picked: a registry name and, optionally, a checkpoint path."""

    name: str
    weights: str | None = None


def availability(choice: ModelChoice) -> str:
    """One line saying whether `choice` can be loaded and, if not, which file to put where.

    Cheap (no model is built, nothing is downloaded): shown in the model panel before Load.
    """
    from napari_clipmed.errors import ClipmedError
    from napari_clipmed.models.registry import UnknownModelError, get_spec
    from napari_clipmed.models.weights import default_weights_dir, is_offline, resolve_weights

    try:
        spec = get_spec(choice.name)
        path = resolve_weights(spec, choice.weights, allow_download=False)
    except UnknownModelError as err:
        return str(err)
    except ClipmedError as err:
        if choice.weights is None and spec.hub_id and not is_offline():
            gated = " (gated: accept its terms on the hub and set HF_TOKEN first)" if spec.gated else ""
            return (f"{spec.name}: not downloaded yet; Load fetches it from {spec.hub_id} "
                    f"into {default_weights_dir()}{gated}")
        return str(err)
    if path is None:
        return f"{spec.name}: needs no checkpoint; click Load. {spec.description}"
    return f"{spec.name}: checkpoint found at {path}; click Load"


class ModelSession:
    """Holds the viewer's model; loads it on a background thread."""

    changed = Signal(object)  # the new ClipModel, or None
    status = Signal(str)  # a one-line state for the model panels
    busy = Signal(bool)

    def __init__(self) -> None:
        preload_triton()  # before any model code imports torchvision (see its docstring)
        self.model: ClipModel | None = None
        self.choice: ModelChoice | None = None
        self.message = "no model loaded"
        self._worker = None

    @property
    def loading(self) -> bool:
        return self._worker is not None

    def require(self) -> ClipModel:
        """The loaded model, or an InputError telling the user to load one."""
        if self.model is None:
            raise InputError(f"load a model first (model panel at the top of the widget): {self.message}")
        return self.model

    def _set_status(self, message: str) -> None:
        self.message = message
        self.status.emit(message)

    def load(self, choice: ModelChoice) -> None:
        """Start loading `choice` in a worker; `changed` fires when it is ready."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error, show_info

        if self._worker is not None:
            return
        if self.model is not None and choice == self.choice:
            self._set_status(self._describe())
            return
        from napari_clipmed.models.loader import load_model

        worker = create_worker(load_model, choice.name, choice.weights or None, _start_thread=False, _ignore_errors=True)
        self._worker = worker
        self._set_status(f"loading {choice.name} ...")
        self.busy.emit(True)

        def done(model: ClipModel) -> None:
            self.model, self.choice = model, choice
            self._set_status(self._describe())
            self.changed.emit(model)
            show_info(f"napari-clipmed: loaded {choice.name} on {model.device_label}")

        def failed(err: Exception) -> None:
            self._set_status(f"could not load {choice.name}: {err}")
            show_error(f"napari-clipmed: {err}")

        def finished() -> None:
            self._worker = None
            self.busy.emit(False)

        worker.returned.connect(done)
        worker.errored.connect(failed)
        worker.finished.connect(finished)
        worker.start()

    def load_now(self, choice: ModelChoice) -> ClipModel:
        """Load synchronously (scripts and tests)."""
        from napari_clipmed.models.loader import load_model

        model = load_model(choice.name, choice.weights or None)
        self.model, self.choice = model, choice
        self._set_status(self._describe())
        self.changed.emit(model)
        return model

    def _describe(self) -> str:
        assert self.model is not None and self.choice is not None
        weights = f" ({self.model.weights_path.name})" if self.model.weights_path else ""
        return f"{self.choice.name}{weights} on {self.model.device_label}"


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: object) -> ModelSession:
    """The model session of `viewer` (created on first use)."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = ModelSession()
    return session
