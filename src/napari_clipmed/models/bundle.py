"""Weights bundles: one folder per model with everything it needs offline, vouched for by a manifest.

A bundle is made on a connected machine (`pull`, `clipmed models pull NAME --to DIR`), copied to
the offline one, checked there (`verify`, `clipmed models verify DIR`) and loaded like any weights
folder (`load_model(NAME, weights=DIR)`, or DIR placed in the weights folder under the model's name).

    DIR/manifest.json          model, backend, source, revision, licence, gated, fetch time, and
                               for every file: path, size, sha256 and where it came from
    DIR/<the model's files>    as published: open_clip_config.json + open_clip weights (open_clip
                               models), config.json + weights + tokenizer files (transformers models),
                               or the one checkpoint file
    DIR/text/                  a Hugging Face text tower's config.json and tokenizer files
                               (BiomedCLIP, QuiltNet-B-16-PMB), which the published config names
                               by hub id only

Loading a bundle opens no network connection: every config and tokenizer is read from DIR.
`pull` builds the bundle in a temporary sibling folder and renames it into place, so a failed or
interrupted pull leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from napari_clipmed.errors import (
    BundleError,
    ClipmedError,
    GatedModelError,
    WeightsNotFoundError,
)
from napari_clipmed.models.folders import (
    OPEN_CLIP_CONFIG,
    TEXT_DIR,
    TEXT_TOWER_FILES,
    hf_text_tower,
)
from napari_clipmed.models.registry import ModelSpec, get_spec
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

MANIFEST = "manifest.json"
BUNDLE_FORMAT = "napari-clipmed-bundle"
BUNDLE_VERSION = 1

# Files taken from a hub repository, by kind of repository; weights: the first one present.
_OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                      "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
_HF_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
_HF_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_HF_EXTRA = ("preprocessor_config.json", "generation_config.json")


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle: its path inside the bundle, size, sha256 and origin (``REPO@REVISION/FILE``)."""

    path: str
    size: int
    sha256: str
    source: str


@dataclass(frozen=True)
class Manifest:
    """What a bundle holds and where it came from."""

    model: str
    backend: str
    source: str
    revision: str
    licence: str
    gated: bool
    fetched: str  # ISO 8601, UTC
    files: tuple[BundleFile, ...]

    def to_json(self) -> str:
        data = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION} | asdict(self)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != BUNDLE_FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {BUNDLE_FORMAT!r}")
            files = tuple(BundleFile(**entry) for entry in data["files"])
            fields = {k: data[k] for k in ("model", "backend", "source", "revision", "licence", "gated", "fetched")}
            return cls(files=files, **fields)
        except (ValueError, KeyError, TypeError) as err:
            raise BundleError(f"{where} is not a napari-clipmed bundle manifest ({err})") from None


def is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def read_manifest(folder: str | os.PathLike[str]) -> Manifest:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a bundle: it has no {MANIFEST} (make one with `clipmed models pull`)")
    return Manifest.from_json(path.read_text(), path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(folder: Path, manifest: Manifest, *, hashes: bool) -> None:
    """Raise `BundleError` for the first file that is missing, of the wrong size or (with `hashes`) altered."""
    for entry in manifest.files:
        path = folder / entry.path
        if not path.is_file():
            raise BundleError(f"bundle {folder} is incomplete: {entry.path} is missing (copy the whole folder)")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleError(
                f"bundle {folder}: {entry.path} is {size} bytes, the manifest says {entry.size} (truncated or replaced)"
            )
        if hashes and sha256_of(path) != entry.sha256:
            raise BundleError(f"bundle {folder}: {entry.path} does not match its sha256 in the manifest (corrupt or altered)")


def spec_for_bundle(spec: ModelSpec, folder: Path) -> ModelSpec:
    """The spec to build from bundle `folder`: the manifest's model (`local` takes it), files all present."""
    manifest = read_manifest(folder)
    if spec.name == "local":
        spec = get_spec(manifest.model)
    elif manifest.model != spec.name:
        raise BundleError(
            f"bundle {folder} holds model {manifest.model!r}, not {spec.name!r}: load it with "
            f"--model {manifest.model} (or --model local)"
        )
    check_files(folder, manifest, hashes=False)
    return spec


# ---------------------------------------------------------------------------------------------- pull


def _source(spec: ModelSpec) -> tuple[str, str, str | None]:
    """(kind, repository, file) of `spec.hub_id`: kind is hf-hub (open_clip repo), hf (transformers) or hf-file."""
    if not spec.hub_id:
        raise WeightsNotFoundError(
            f"model {spec.name!r} has no download source; put its checkpoint in the weights folder instead"
            if spec.needs_weights else f"model {spec.name!r} needs no weights"
        )
    kind, _, ident = spec.hub_id.partition(":")
    if kind == "hf-file":
        parts = ident.split("/")
        return kind, "/".join(parts[:2]), "/".join(parts[2:])
    if kind in ("hf-hub", "hf"):
        return kind, ident, None
    if kind == "open_clip":  # an open_clip pretrained tag: bundled from its hub copy, when it has one
        import open_clip

        arch, _, tag = ident.partition(":")
        hub = (open_clip.get_pretrained_cfg(arch, tag) or {}).get("hf_hub", "").strip("/")
        if hub:
            org, repo_name, *rest = hub.split("/")  # the weights only: the registry's architecture stands
            return "hf-file", f"{org}/{repo_name}", "/".join(rest) or "open_clip_pytorch_model.bin"
    raise WeightsNotFoundError(f"model {spec.name!r}: cannot make a bundle from {spec.hub_id} (not a hub repository)")


def _token(token: str | None) -> str | None:
    if token:
        return token
    from huggingface_hub import get_token

    return get_token()


def _gated_message(spec: ModelSpec, repo: str, refused: bool) -> str:
    why = "the hub refused the credentials given" if refused else "no Hugging Face credentials are set"
    return (
        f"model {spec.name!r} is gated ({why}): the hub serves {repo} only to a logged-in user who accepted "
        "its terms on the model's page. Accept them, set HF_TOKEN (or run `hf auth login`), and pull again; "
        "or copy a bundle made on another machine"
    )


def _choose(siblings: list[str], kind: str, file: str | None) -> list[str]:
    present = set(siblings)
    if kind == "hf-file":
        return [file] if file in present else []
    if kind == "hf-hub":
        clip_weights = next((f for f in _OPEN_CLIP_WEIGHTS if f in present), None)
        chosen = [OPEN_CLIP_CONFIG] + ([clip_weights] if clip_weights else [])
        return chosen + [f for f in siblings if f in TEXT_TOWER_FILES and f != "config.json"]
    index = next((f for f in _HF_INDEXES if f in present), None)
    if index:
        stem = index.split(".")[0]  # model / pytorch_model shards
        shards: list[str] = [index] + [f for f in siblings if f.startswith(f"{stem}-") and f.endswith((".safetensors", ".bin"))]
    else:
        shards = [next((f for f in _HF_WEIGHTS if f in present), "")]
    extra = [f for f in siblings if f in TEXT_TOWER_FILES or f in _HF_EXTRA]
    return [f for f in dict.fromkeys(shards + extra) if f]


def _download(repo: str, choose, into: Path, *, token: str | None, endpoint: str | None,
              revision: str | None) -> tuple[str, list[str]]:
    """Download the files `choose(listing)` picks from `repo` into `into`; returns (commit, files)."""
    from huggingface_hub import HfApi, snapshot_download

    info = HfApi(endpoint=endpoint, token=token).model_info(repo, revision=revision)
    files = choose([s.rfilename for s in (info.siblings or [])])
    if not files:
        raise WeightsNotFoundError(f"the hub repository {repo} holds none of the files this model needs")
    snapshot_download(repo, revision=info.sha, local_dir=str(into), allow_patterns=files, token=token,
                      endpoint=endpoint)
    shutil.rmtree(into / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
    absent = [f for f in files if not (into / f).is_file()]
    if absent:
        raise WeightsNotFoundError(f"downloading {repo} did not deliver {', '.join(absent)}")
    return str(info.sha), files


def _hub_errors(spec: ModelSpec, repo: str, err: Exception) -> ClipmedError:
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(err, GatedRepoError):
        return GatedModelError(_gated_message(spec, repo, refused=True))
    if isinstance(err, RepositoryNotFoundError):
        return WeightsNotFoundError(f"model {spec.name!r}: the hub has no repository {repo} (or it is private)")
    detail = str(err).splitlines()[0][:200] if str(err) else "no details"
    return WeightsNotFoundError(f"model {spec.name!r}: downloading {repo} failed ({type(err).__name__}: {detail})")


def iter_pull(
    name: str | ModelSpec,
    to: str | os.PathLike[str],
    *,
    token: str | None = None,
    endpoint: str | None = None,
    revision: str | None = None,
) -> ProgressGenerator[Manifest]:
    """Download model `name` into a new bundle at `to`; yields Progress per step, returns the manifest.

    `endpoint` defaults to `$HF_ENDPOINT` (read now, not when huggingface_hub was imported).
    A gated model without credentials fails before any download; any failure leaves `to` untouched.
    """
    from napari_clipmed.io.atomic import atomic_dir
    from napari_clipmed.models.weights import is_offline

    spec = get_spec(name)
    kind, repo, file = _source(spec)
    if is_offline():
        raise WeightsNotFoundError(
            f"cannot pull {spec.name!r}: downloads are off (CLIPMED_OFFLINE or HF_HUB_OFFLINE is set)"
        )
    token = _token(token)
    if spec.gated and not token:
        raise GatedModelError(_gated_message(spec, repo, refused=False))
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    target = Path(to).expanduser()
    yield Progress(0, 3, f"pulling {spec.name} from {repo}")
    sources: dict[str, str] = {}
    with atomic_dir(target) as tmp:
        try:
            sha, files = _download(repo, lambda listing: _choose(listing, kind, file), tmp, token=token,
                                   endpoint=endpoint, revision=revision)
            sources.update({f: f"{repo}@{sha}/{f}" for f in files})
            yield Progress(1, 3, f"downloaded {len(files)} files of {repo}")
            text_repo = _text_tower_repo(tmp) if kind == "hf-hub" else None
            if text_repo:  # the text tower's config and tokenizer, which the published config names by hub id
                text_sha, text_files = _download(
                    text_repo, lambda listing: [f for f in listing if f in TEXT_TOWER_FILES], tmp / TEXT_DIR,
                    token=token, endpoint=endpoint, revision=None)
                sources.update({f"{TEXT_DIR}/{f}": f"{text_repo}@{text_sha}/{f}" for f in text_files})
            yield Progress(2, 3, "hashing files")
        except ClipmedError:
            raise
        except Exception as err:  # noqa: BLE001 - any hub or network failure is one clear message
            raise _hub_errors(spec, repo, err) from None
        entries = tuple(
            BundleFile(path, (tmp / path).stat().st_size, sha256_of(tmp / path), source)
            for path, source in sorted(sources.items())
        )
        manifest = Manifest(
            model=spec.name, backend=spec.backend, source=spec.hub_id or "", revision=sha, licence=spec.licence,
            gated=spec.gated, fetched=datetime.now(timezone.utc).isoformat(timespec="seconds"), files=entries,
        )
        (tmp / MANIFEST).write_text(manifest.to_json())
    yield Progress(3, 3, f"bundle of {spec.name} at {target}")
    return manifest


def pull(name: str | ModelSpec, to: str | os.PathLike[str], **kwargs: object) -> Manifest:
    """Plain-call form of `iter_pull`."""
    return run_generator(iter_pull(name, to, **kwargs))  # type: ignore[arg-type]


def _text_tower_repo(folder: Path) -> str | None:
    config_path = folder / OPEN_CLIP_CONFIG
    if not config_path.is_file():
        return None
    model_cfg = json.loads(config_path.read_text()).get("model_cfg", {})
    name = hf_text_tower(model_cfg)
    return name if name and not Path(name).exists() else None


# -------------------------------------------------------------------------------------------- verify


@dataclass(frozen=True)
class VerifyResult:
    """A bundle that passed: its files match the manifest and the model ran one forward pass offline."""

    folder: Path
    model: str
    files: int
    embed_dim: int
    device: str

    def summary(self) -> str:
        return (
            f"bundle {self.folder}: {self.files} files match the manifest; model {self.model!r} loaded offline "
            f"and encoded an image and a text ({self.embed_dim}-d, {self.device})"
        )


def verify(folder: str | os.PathLike[str], *, device: str | None = "cpu") -> VerifyResult:
    """Check every file's sha256, then load the model with the network blocked and encode one image and text."""
    import numpy as np

    from napari_clipmed.models.loader import load_model
    from napari_clipmed.models.offline import no_network

    folder = Path(folder).expanduser()
    manifest = read_manifest(folder)
    check_files(folder, manifest, hashes=True)
    with no_network():
        model = load_model(manifest.model, weights=folder, device=device, allow_download=False)
        size = model.spec.image_size
        ramp = np.linspace(0, 255, size * size * 3, dtype=np.float64).reshape(size, size, 3).astype(np.uint8)
        image = model.encode_images([ramp])
        text = model.encode_texts(["an image of tissue"])
    for what, vectors in (("image", image), ("text", text)):
        if not np.isfinite(vectors).all() or abs(float(np.linalg.norm(vectors[0])) - 1.0) > 1e-3:
            raise BundleError(f"bundle {folder}: the model's {what} embedding is not finite (broken weights?)")
    return VerifyResult(folder, manifest.model, len(manifest.files), int(image.shape[1]), model.device_label)
