"""Where a model's checkpoint is: an explicit path, the weights folder, or the hub when online.

All of it happens in `resolve_weights`; when nothing is found it raises one
`WeightsNotFoundError` that names the model, the file expected and the folder to put it in.
Downloads make a bundle (`models.bundle.pull`) in the weights folder, which later loads offline;
download errors are caught here, so no traceback from inside a download library reaches the user.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_clipmed.errors import ClipmedError, GatedModelError, WeightsNotFoundError
from napari_clipmed.models.registry import ModelSpec

WEIGHTS_DIR_ENV = "CLIPMED_WEIGHTS_DIR"
OFFLINE_ENVS = ("CLIPMED_OFFLINE", "HF_HUB_OFFLINE")


def default_weights_dir() -> Path:
    """The weights folder: `$CLIPMED_WEIGHTS_DIR`, else a per-user cache folder."""
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-clipmed")) / "weights"


def is_offline() -> bool:
    """True when the user asked for no downloads (`CLIPMED_OFFLINE=1` or `HF_HUB_OFFLINE=1`)."""
    return any(os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"} for name in OFFLINE_ENVS)


def _explain(spec: ModelSpec, folder: Path, reason: str) -> str:
    if spec.weights_file:
        where = f"put the checkpoint at {folder / spec.weights_file}"
        if spec.weights_format == "hf_clip":
            where += " (a Hugging Face CLIPModel folder with config.json and model.safetensors or pytorch_model.bin, or one of those files)"
        elif not Path(spec.weights_file).suffix:
            where = (f"put its bundle folder at {folder / spec.weights_file} (`clipmed models pull {spec.name} "
                     f"--to {folder / spec.weights_file}` on a connected machine makes one)")
    else:
        where = "pass the checkpoint file explicitly (weights=PATH, or --weights PATH on the command line)"
    hub = f"; online it is downloaded from {spec.hub_id}" if spec.hub_id else ""
    return (
        f"no weights for model {spec.name!r}: {reason}. To use it, {where}, "
        f"or set {WEIGHTS_DIR_ENV} to a folder holding it{hub}."
    )


def _find_in_folder(spec: ModelSpec, folder: Path) -> Path | None:
    if not spec.weights_file:
        return None
    candidate = folder / spec.weights_file
    if candidate.exists():
        return candidate
    # A hub download lands in a per-model subfolder of the weights folder.
    sub = folder / spec.name
    if sub.is_dir() and any(sub.iterdir()):
        return sub
    return None


def _download(spec: ModelSpec, folder: Path) -> Path:
    """Pull `spec` into a bundle at `folder/spec.name`; any failure becomes one `WeightsNotFoundError`."""
    from napari_clipmed.models.bundle import pull

    target = folder / spec.name
    try:
        pull(spec, target)
    except GatedModelError:
        raise
    except ClipmedError as err:
        reason = f"it is not in {folder} and downloading {spec.hub_id} failed ({err})"
        raise WeightsNotFoundError(_explain(spec, folder, reason)) from None
    return target


def resolve_weights(
    spec: ModelSpec,
    path: str | os.PathLike[str] | None = None,
    *,
    weights_dir: str | os.PathLike[str] | None = None,
    allow_download: bool = True,
) -> Path | None:
    """The checkpoint to load for `spec`, or None for a model that needs no weights.

    Order: `path` (must exist), then the weights folder, then the hub (unless offline).
    """
    folder = Path(weights_dir).expanduser() if weights_dir else default_weights_dir()
    if path is not None:
        explicit = Path(path).expanduser()
        if not explicit.exists():
            raise WeightsNotFoundError(_explain(spec, folder, f"the file {explicit} does not exist"))
        return explicit
    if not spec.needs_weights:
        return None
    found = _find_in_folder(spec, folder)
    if found is not None:
        return found
    if not spec.hub_id:
        raise WeightsNotFoundError(_explain(spec, folder, f"it is not in {folder} and has no download source"))
    if not allow_download or is_offline():
        raise WeightsNotFoundError(_explain(spec, folder, f"it is not in {folder} and downloads are off"))
    return _download(spec, folder)
