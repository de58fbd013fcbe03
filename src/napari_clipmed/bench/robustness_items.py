"""The robustness grid on a Dask cluster: one item = one model x one chunk of tiles x every condition to compute.

An item reads its tiles, corrupts them as the in-process run does (`robustness.corrupt_tiles` with the chunk's
offset, so markup ink is the whole tile set's), encodes the clean and the corrupted tiles and runs the quality
gate on the corrupted ones. It returns ``emb-clean.npy`` and, per condition, ``emb-<corruption>-<severity>.npy``
(the tiles' embeddings) and ``passed-<corruption>-<severity>.npy`` (the gate's verdicts). `iter_model_conditions`
maps the items of one model with `distributed.iter_run_items` into ``OUT/cluster/<model>-<hash>/`` (one folder per
model identity and precision: resumable, a failing chunk recorded while the others go on), assembles the
chunks in tile order and, once every chunk is done, removes chunks of an earlier grid; `bench.robustness` then
computes the metrics exactly as in-process.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed.errors import InputError
from napari_clipmed.progress import ProgressGenerator

if TYPE_CHECKING:
    from distributed import Client

    from napari_clipmed.distributed import RunItemsResult
    from napari_clipmed.models.model import ClipModel
    from napari_clipmed.pathology.gate import Gate

CLUSTER_DIR = "cluster"  # under the robustness output folder
CLEAN = "clean"


@dataclass(frozen=True)
class ChunkPayload:
    """One chunk of the readable tiles: paths, offset in the tile set, conditions (corruption, severity, seed)."""

    paths: tuple[str, ...]
    first: int
    shapes: tuple[tuple[int, ...], ...] | None  # every tile's shape when the set mixes sizes (see corrupt_tiles)
    conditions: tuple[tuple[str, int, int], ...]
    batch_size: int
    gate: Gate
    signature: str


def output_name(kind: str, corruption: str, severity: int) -> str:
    return f"{kind}-{corruption}-{severity}"


def encode_chunk(payload: ChunkPayload, model: ClipModel) -> dict[str, object]:
    """One item (runs on a worker): clean and corrupted embeddings of the chunk, and the gate on each condition."""
    from napari_clipmed.bench.robustness import corrupt_tiles
    from napari_clipmed.bench.trust import gate_verdict
    from napari_clipmed.datasets import read_images

    if model.signature != payload.signature:
        raise InputError("this worker's model differs from the client's (weights, device or precision): "
                         "give --device so that every worker encodes the same way")
    read = read_images(payload.paths)
    if read.failed:
        path, reason = read.failed[0]
        raise InputError(f"{len(read.failed)} tile(s) readable on the client cannot be read here: {path}: {reason}")
    outputs: dict[str, object] = {f"emb-{CLEAN}": model.encode_images(read.images, batch_size=payload.batch_size)}
    for corruption, severity, seed in payload.conditions:
        images = corrupt_tiles(read.images, corruption, severity, seed, first=payload.first, shapes=payload.shapes)
        outputs[output_name("emb", corruption, severity)] = model.encode_images(images, batch_size=payload.batch_size)
        outputs[output_name("passed", corruption, severity)] = np.asarray(gate_verdict(images, payload.gate), dtype=bool)
    return outputs


@dataclass
class ModelConditions:
    """One model's assembled item outputs: clean embeddings, and per (corruption, severity) embeddings and gate.

    When a chunk failed, `clean` is None and the dictionaries are empty; `run` says which chunks and why.
    """

    run: RunItemsResult
    clean: np.ndarray | None = None
    embeddings: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    passed: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)


def _folder_name(label: str, model: ClipModel) -> str:
    """File-name-safe model label plus a hash of the identity and precision: other weights, another folder."""
    digest = hashlib.blake2b(repr((model.identity, model.precision)).encode(), digest_size=6).hexdigest()
    return f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', label)[:80]}-{digest}"


def items_fingerprint(paths: Sequence[str], seed: int, gate: Gate, version: str) -> str:
    """What an item's outputs depend on besides the model and its key: the tiles, the seed, the gate."""
    digest = hashlib.blake2b(digest_size=12)
    for path in paths:
        digest.update(f"{path}\n".encode())
    digest.update(json.dumps([seed, gate.to_dict(), version], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def iter_model_conditions(
    client: Client | None,
    out_dir: Path,
    label: str,
    model: ClipModel,
    paths: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
    conditions: Sequence[tuple[str, int, int]],
    *,
    gate: Gate,
    fingerprint: str,
    chunk_size: int = 256,
    batch_size: int = 64,
    device: str | None = None,
) -> ProgressGenerator[ModelConditions]:
    """Run one model's chunks (on `client`'s workers, or in-process without one) and assemble them in tile order."""
    from napari_clipmed.distributed import Item, ModelRef, iter_run_items, prune_items

    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InputError(f"chunk_size (tiles per task) must be a whole number of at least 1, got {chunk_size!r}")
    whole = tuple(tuple(s) for s in shapes)
    mixed = whole if len(set(whole)) > 1 else None
    conds = tuple((str(c), int(s), int(seed)) for c, s, seed in conditions)
    cond_hash = hashlib.blake2b(repr(conds).encode(), digest_size=6).hexdigest()
    items = []
    for first in range(0, len(paths), chunk_size):
        stop = min(len(paths), first + chunk_size)
        payload = ChunkPayload(tuple(str(Path(p).resolve()) for p in paths[first:stop]), first, mixed, conds,
                               batch_size, gate, model.signature)
        items.append(Item(f"tiles-{first:07d}-{stop:07d}-{cond_hash}", payload))
    ref = ModelRef.of(model, device or model.device.type) if client is not None else model
    run = yield from iter_run_items(encode_chunk, items, out_dir / CLUSTER_DIR / _folder_name(label, model),
                                    model=ref, client=client, message=f"{label}: tile chunks", fingerprint=fingerprint)
    if run.failed:
        return ModelConditions(run)
    prune_items(run.out_dir, run.keys)  # chunks of an earlier grid (other conditions or chunking): never reused
    clean = np.concatenate(run.read_arrays(f"emb-{CLEAN}"))
    embeddings: dict[tuple[str, int], np.ndarray] = {}
    passed: dict[tuple[str, int], np.ndarray] = {}
    for corruption, severity, _ in conds:
        embeddings[(corruption, severity)] = np.concatenate(run.read_arrays(output_name("emb", corruption, severity)))
        passed[(corruption, severity)] = np.concatenate(run.read_arrays(output_name("passed", corruption, severity)))
    return ModelConditions(run, clean, embeddings, passed)


def describe_failures(failures: dict[str, RunItemsResult]) -> str:
    """One line per model with failed chunks: how many, where the records are, the first error."""
    lines = []
    for label, run in failures.items():
        first = run.failed[0]
        lines.append(f"{label}: {len(run.failed)} of {len(run.keys)} tile chunks failed (records in "
                     f"{run.out_dir / 'failed'}; first: {first.key}: {first.error})")
    return "; ".join(lines)
