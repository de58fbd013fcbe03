"""Robustness grid: models x corruptions x severities on a labelled tile set.

For every condition the tiles are corrupted (severity 0 = the clean tiles), embedded by each
model and scored twice: zero-shot classification (accuracy, balanced accuracy, weighted F1) and
retrieval of the corrupted queries against the *clean* gallery, leave-one-out (a query never
retrieves its own clean tile): top-k, majority-vote, precision and mAP at each k. Models are
registry names or "LABEL=CHECKPOINT" entries, so a DAPT result can be compared with PathCLIP or PLIP.

Clean embeddings are computed once per model (and kept in the embedding cache). Each finished
(model, corruption, severity) condition is appended to ``results.partial.csv``; a rerun into the
same folder skips finished conditions. Only a complete run writes ``results.csv`` (tidy: model,
corruption, severity, metric, value, n), ``summary.md`` and ``plots/<metric>.png``, and removes
the partial file. ``run.json`` records the configuration next to the results.

With a Dask client (`client=`, `clipmed robustness --cluster`) the encoding runs on the workers: one task per
model and chunk of tiles, covering every condition still to compute (`bench.robustness_items`; outputs in
``OUT/cluster/``, resumable). The metrics are computed here from the assembled embeddings, as in-process.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_clipmed import __version__
from napari_clipmed.bench import report
from napari_clipmed.bench.tasks import (
    LoadedTiles,
    iter_load_tiles,
    tileset_prompts,
    zeroshot_scores,
)
from napari_clipmed.bench.trust import gate_verdict, trust_metrics
from napari_clipmed.datasets import TileSet
from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.io.atomic import atomic_dir
from napari_clipmed.io.runfolder import RunFolder, defer_interrupts
from napari_clipmed.metrics import retrieval_metrics
from napari_clipmed.progress import Progress, ProgressCallback, ProgressGenerator, forward, run_generator
from napari_clipmed.retrieval import EmbeddingIndex

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from napari_clipmed.distributed import RunItemsResult
    from napari_clipmed.models.model import ClipModel
    from napari_clipmed.pathology.gate import Gate

PARTIAL = "results.partial.csv"
RESULTS = "results.csv"
Condition = tuple[str, str, int]  # (model, corruption, severity)


@dataclass
class RobustnessConfig:
    """What to run and where to write it. `corruptions=("all",)` means every available corruption."""

    models: tuple[str, ...]
    corruptions: tuple[str, ...] = ("all",)
    severities: tuple[int, ...] = (0, 1, 2, 3, 4)
    ks: tuple[int, ...] = (1, 5, 10)
    preset: str | None = None  # prompt preset name or YAML path; None: the tile set's class names
    templates: tuple[str, ...] | None = None
    seed: int = 0
    batch_size: int = 64
    out_dir: Path = Path("results")
    weights_dir: Path | None = None
    cache_dir: Path | None = None  # embedding cache for clean tiles; None: the user cache folder
    use_cache: bool = True
    device: str | None = None
    # label -> checkpoint. A `models` entry "LABEL=PATH" lands here too. A label that names a
    # registry model loads that model from PATH; any other label loads PATH as a "local" model
    # (e.g. a DAPT result), so several checkpoints can be compared in one run.
    weights: dict[str, Path] = field(default_factory=dict)
    store_dir: Path | None = None  # a shared embedding store (`clipmed embed`) used instead of the cache
    precision: str = "auto"  # image tower precision of every model (see models.precision)
    gate: Path | None = None  # quality gate JSON for the gate metrics; None: the shipped gate

    def resolved(self) -> RobustnessConfig:
        """A copy with "all" expanded, "LABEL=PATH" model entries split, and every field checked."""
        from napari_clipmed.pathology.params import list_corruptions

        weights = {label: Path(path) for label, path in self.weights.items()}
        labels = []
        for entry in (m.strip() for m in self.models):
            label, _, path = (part.strip() for part in entry.partition("="))
            if not label:
                if entry:
                    raise InputError(f"model entry {entry!r} has no label; write LABEL=CHECKPOINT")
                continue
            if path:
                if weights.get(label, Path(path)) != Path(path):
                    raise InputError(f"model label {label!r} is given two checkpoints")
                weights[label] = Path(path)
            labels.append(label)
        models = tuple(dict.fromkeys(labels))
        if not models:
            raise InputError("name at least one model")
        unused = sorted(set(weights) - set(models))
        if unused:
            raise InputError(f"checkpoints given for models not in the run: {', '.join(unused)}")
        known = list(list_corruptions())
        corr = tuple(known) if tuple(self.corruptions) in (("all",), ()) else tuple(dict.fromkeys(self.corruptions))
        unknown = [c for c in corr if c not in known]
        if unknown:
            raise InputError(f"unknown corruption(s): {', '.join(unknown)}; available: {', '.join(known)}")
        sev = tuple(sorted(set(int(s) for s in self.severities)))
        if not sev or sev[0] < 0 or sev[-1] > 4:
            raise InputError(f"severities must lie in 0..4 (0 = clean), got {list(self.severities)}")
        ks = tuple(sorted(set(int(k) for k in self.ks)))
        if not ks or ks[0] < 1:
            raise InputError(f"k values must be positive, got {list(self.ks)}")
        if self.batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {self.batch_size}")
        if int(self.seed) < 0:
            raise InputError(f"seed must be 0 or more, got {self.seed}")
        if self.templates:
            from napari_clipmed.zeroshot import check_templates

            check_templates(self.templates)
        if self.device:
            from napari_clipmed.models.device import check_device

            check_device(self.device)
        from napari_clipmed.io.paths import check_output_dir

        check_output_dir(self.out_dir)
        if self.use_cache and self.cache_dir is not None:
            check_output_dir(self.cache_dir, "cache folder")
        return RobustnessConfig(
            models, corr, sev, ks, self.preset, tuple(self.templates) if self.templates else None, int(self.seed),
            self.batch_size, Path(self.out_dir), self.weights_dir, self.cache_dir, self.use_cache, self.device,
            weights, store_dir=self.store_dir, precision=self.precision, gate=self.gate,
        )

    def to_dict(self) -> dict[str, object]:
        def plain(value: object) -> object:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return list(value)
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return value

        return {k: plain(v) for k, v in asdict(self).items()}

    def load_models(self) -> dict[str, ClipModel]:
        """Every model of the run by label (call on a resolved config); a missing checkpoint fails here."""
        from napari_clipmed.errors import WeightsNotFoundError
        from napari_clipmed.models.loader import load_model
        from napari_clipmed.models.registry import MODELS

        for label, path in self.weights.items():
            if not path.expanduser().exists():
                raise WeightsNotFoundError(f"the checkpoint given for model {label!r}, {path}, does not exist")
        return {
            label: load_model(label if label in MODELS or label not in self.weights else "local",
                              self.weights.get(label), weights_dir=self.weights_dir, device=self.device,
                              precision=self.precision)
            for label in self.models
        }


@dataclass
class RobustnessResult:
    """The tidy results table, the files written, and which conditions were computed or reused."""

    frame: pd.DataFrame
    files: dict[str, Path]
    computed: list[Condition] = field(default_factory=list)
    reused: list[Condition] = field(default_factory=list)
    skipped_images: list[tuple[str, str]] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()


def metric_names(ks: Sequence[int]) -> list[str]:
    """The metrics of one condition, in table order."""
    from napari_clipmed.bench.trust import trust_metric_names

    names = ["zeroshot_accuracy", "zeroshot_balanced_accuracy", "zeroshot_f1_weighted"]
    retrieval = [f"retrieval_{name}@{k}" for k in ks for name in ("top", "majority", "precision", "map")]
    return names + retrieval + trust_metric_names()


def corruption_seed(seed: int, corruption: str, severity: int) -> int:
    """The same corrupted tiles for every model (and every rerun) of one condition."""
    return int(np.random.SeedSequence([seed, zlib.crc32(corruption.encode()), severity]).generate_state(1)[0])


def _fingerprint(config: RobustnessConfig, tiles: TileSet, prompt_text: str) -> str:
    """What the values depend on besides the model: tiles, labels, prompts, seed, k values."""
    digest = hashlib.blake2b(digest_size=12)
    for path, label in zip(tiles.paths, tiles.labels):
        digest.update(f"{path}\t{tiles.class_names[label]}\n".encode())
    digest.update(json.dumps([config.seed, list(config.ks), prompt_text, __version__]).encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- partial results
def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    if not text.endswith("\n"):  # interrupted mid-line: drop the torn line
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.DictReader(io.StringIO(text)))
    return [r | {"value": "nan"} if r.get("value") == "" else r for r in rows]  # pandas writes NaN as ""


def _complete_conditions(rows: list[dict[str, str]], expected: list[str]) -> dict[Condition, list[dict]]:
    """Rows grouped by condition (a repeated metric keeps its last row), only conditions with every metric."""
    groups: dict[Condition, dict[str, dict]] = {}
    for row in rows:
        try:
            key = (row["model"], row["corruption"], int(row["severity"]))
            float(row["value"])
            int(row["n"])
        except (KeyError, TypeError, ValueError):
            continue
        groups.setdefault(key, {})[row["metric"]] = row
    return {k: [v[m] for m in expected] for k, v in groups.items() if set(v) == set(expected)}


def _rows_text(rows: list[dict], header: bool) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=report.TIDY_COLUMNS, lineterminator="\n", extrasaction="ignore")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _append(path: Path, rows: list[dict]) -> None:
    """Append one condition's rows in a single write, flushed to disk."""
    data = _rows_text(rows, header=not path.exists()).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the run
def corrupt_tiles(images: Sequence[np.ndarray], corruption: str, severity: int, seed: int, first: int = 0,
                  shapes: Sequence[tuple[int, ...]] | None = None) -> list[np.ndarray]:
    """Corrupt a list of tiles that may differ in size: one batch per tile shape, order kept.

    The tiles of one shape are one batch seeded ``SeedSequence([seed, g])`` (g: the shape's order of first
    appearance), so tile j of that shape gets markup ink from child j. `first` and `shapes` corrupt a slice
    of a larger tile set exactly as the whole set would be: `images` are its tiles first, first+1, ...,
    and `shapes` is the shape of every tile of the whole set (default: `first` tiles shaped like
    ``images[0]``, then `images`; give `shapes` when the set mixes tile sizes).
    """
    from napari_clipmed.pathology.corrupt import corrupt

    own = [tuple(image.shape) for image in images]
    if isinstance(first, bool) or not isinstance(first, (int, np.integer)) or first < 0:
        raise InputError(f"first (the tiles' offset in the tile set) must be a whole number >= 0; got {first!r}")
    whole = [tuple(s) for s in shapes] if shapes is not None else own[:1] * first + own
    if whole[first : first + len(own)] != own:
        raise InputError(f"shapes do not describe these tiles: tiles {first}..{first + len(own) - 1} of the set "
                         "have other shapes")
    group_of: dict[tuple[int, ...], int] = {}
    seen: dict[tuple[int, ...], int] = {}  # tiles of each shape before the current one
    members: dict[tuple[int, ...], list[int]] = {}  # shape -> indices into `images`
    offset: dict[tuple[int, ...], int] = {}  # shape -> position of its first member among the set's tiles of that shape
    for i, shape in enumerate(whole[: first + len(own)]):
        group_of.setdefault(shape, len(group_of))
        if i >= first:
            offset.setdefault(shape, seen.get(shape, 0))
            members.setdefault(shape, []).append(i - first)
        seen[shape] = seen.get(shape, 0) + 1
    out: list[np.ndarray] = [np.empty(0)] * len(images)
    for shape, idx in members.items():  # a shape's members are consecutive among its tiles: one batch
        batch = corrupt(np.stack([images[i] for i in idx]), corruption, severity,
                        seed=np.random.SeedSequence([seed, group_of[shape]]), first=offset[shape])
        for i, image in zip(idx, batch):
            out[i] = image
    return out


def _preflight(images: Sequence[np.ndarray], corruptions: Sequence[str], severities: Sequence[int]) -> None:
    """Try every corruption on one tile of each shape, so a tile too small for it fails now, not hours in."""
    firsts = list({image.shape: image for image in images}.values())
    for corruption in corruptions:
        for severity in severities:
            if severity > 0:
                corrupt_tiles(firsts, corruption, severity, 0)


@dataclass
class _ModelState:
    model: ClipModel
    identity: str
    classifier: object
    index: EmbeddingIndex


def _condition_rows(cond: Condition, values: dict[str, float], n: int) -> list[dict]:
    return [{"model": cond[0], "corruption": cond[1], "severity": cond[2], "metric": m, "value": repr(float(v)), "n": n}
            for m, v in values.items()]


def iter_run_robustness(tileset: TileSet, config: RobustnessConfig, *, client: Client | None = None,
                        chunk_size: int = 256) -> ProgressGenerator[RobustnessResult]:
    """Run the grid (see module docstring); yields `Progress` per condition and returns the result.

    With a Dask `client`, each model's tiles are encoded on the workers in chunks of `chunk_size` tiles, every
    condition still to compute in one task per chunk (`bench.robustness_items`); the metrics are computed here
    from the assembled embeddings, as in-process, so the results are the same.
    """
    if client is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise InputError(f"chunk_size (tiles per task) must be a whole number of at least 1, got {chunk_size!r}")
    cfg = config.resolved()
    tileset.require_classes(2, "the robustness benchmark (zero-shot classification)")
    prompts, columns = tileset_prompts(tileset.class_names, cfg.preset, cfg.templates)
    out = cfg.out_dir
    n_sev = [s for s in cfg.severities if s > 0]
    total = 1 + len(cfg.models) * (1 + len(cfg.corruptions) * len(n_sev))
    done = 0
    # models first: a missing checkpoint fails before any long work
    models = cfg.load_models()
    from napari_clipmed.pathology.gate import load_gate

    gate = load_gate(cfg.gate)  # a bad gate file fails before any long work, too
    identities = {name: m.identity for name, m in models.items()}

    loaded: LoadedTiles = yield from forward(iter_load_tiles(tileset), 0, total, span=0, prefix="reading tiles: ")
    tiles = loaded.tileset
    tiles.require_classes(2, "the robustness benchmark once unreadable images are skipped")
    if cfg.ks[-1] > len(tiles) - 1:
        raise InputError(f"k={cfg.ks[-1]} is larger than the gallery: {len(tiles)} readable tiles, "
                         f"so at most {len(tiles) - 1} neighbours per query (leave-one-out)")
    _preflight(loaded.images, cfg.corruptions, cfg.severities)
    done += 1
    yield Progress(done, total, f"read {len(tiles)} tiles ({len(loaded.failed)} unreadable)")

    with RunFolder(out, "run.json", command="robustness", defer_status=True) as folder:
        return (yield from _run_locked(folder, cfg, tileset, loaded, prompts, columns, models, identities, gate,
                                       done, total, client, chunk_size))


def _run_locked(folder: RunFolder, cfg: RobustnessConfig, tileset: TileSet, loaded: LoadedTiles, prompts, columns,
                models: dict, identities: dict[str, str], gate: Gate, done: int,
                total: int, client: Client | None = None, chunk_size: int = 256) -> ProgressGenerator[RobustnessResult]:
    """The grid under the folder's run lock: reuse finished conditions, compute the rest, write the outputs."""
    from napari_clipmed.models.cache import EmbeddingCache
    from napari_clipmed.zeroshot import ZeroShotClassifier

    out = cfg.out_dir
    tiles = loaded.tileset
    n_sev = [s for s in cfg.severities if s > 0]
    expected = metric_names(cfg.ks)
    fingerprint = _fingerprint(cfg, tiles, repr(prompts) + json.dumps(gate.to_dict()["measures"]))
    run_path = out / "run.json"
    try:
        previous = json.loads(run_path.read_text()) if run_path.is_file() else {}
    except (OSError, ValueError):
        previous = {}
    rows = _read_rows(out / PARTIAL) + _read_rows(out / RESULTS)
    if rows and previous.get("fingerprint") != fingerprint:
        raise InputError(
            f"{out} holds results of a different run (other tiles, prompts, seed or k values); "
            "choose another output folder or delete its results"
        )

    cache = EmbeddingCache(cfg.cache_dir) if cfg.use_cache else None
    if cfg.store_dir is not None:
        from napari_clipmed.models.store import EmbeddingStore

        cache = EmbeddingStore(cfg.store_dir)
    old_ids, old_precisions = previous.get("models", {}), previous.get("precision", {})
    # finished work is never deleted (a changed grid extends the run), except a model's rows computed in another precision
    kept = {k: v for k, v in _complete_conditions(rows, expected).items()
            if k[0] not in identities or old_precisions.get(k[0], {}).get("precision", "fp32") == models[k[0]].precision}
    changed = sorted({k[0] for k in kept if k[0] in identities and old_ids.get(k[0]) != identities[k[0]]})
    if changed:
        raise InputError(
            f"{out} holds results of model(s) {', '.join(changed)} computed with other weights; "
            "choose another output folder, or give those checkpoints other labels"
        )
    wanted = {(m, c, s) for m in cfg.models for c in cfg.corruptions for s in cfg.severities}
    finished = {k: v for k, v in kept.items() if k in wanted}
    reused = sorted(finished)
    # the folder now describes this run: every finished row in the partial file, no stale final outputs
    folder.begin()
    report.write_text(out / PARTIAL, _rows_text([r for v in kept.values() for r in v], True))
    for stale in [out / RESULTS, out / "summary.md"]:
        stale.unlink(missing_ok=True)
    precisions = {name: m.precision_record for name, m in models.items()}
    info = {"fingerprint": fingerprint, "models": {**old_ids, **identities}, "precision": {**old_precisions, **precisions},
            "status": "running", "version": __version__,
            "config": cfg.to_dict(), "tiles": {"source": str(tileset.source), "n_readable": len(tiles),
                                               "n_unreadable": len(loaded.failed), "classes": tiles.counts()},
            "prompts": {"name": prompts.name, "classes": {k: list(v) for k, v in prompts.classes.items()},
                        "templates": list(prompts.templates)}}
    folder.set("running", **{k: v for k, v in info.items() if k != "status"})
    if loaded.failed:
        import pandas as pd

        report.write_csv(pd.DataFrame(loaded.failed, columns=["path", "reason"]), out / "skipped_images.csv")

    y_prompt = columns[tiles.labels]
    computed: list[Condition] = []

    def evaluate(state: _ModelState, emb: np.ndarray, passed: np.ndarray) -> dict[str, float]:
        values = zeroshot_scores(y_prompt, state.classifier.predict(emb))
        hits = state.index.search(emb, cfg.ks[-1], exclude_self=True, model_id=state.identity)
        values |= {f"retrieval_{k}": v for k, v in retrieval_metrics(tiles.labels, hits.labels, cfg.ks).items()}
        return values | trust_metrics(y_prompt, state.classifier.predict_proba(emb), passed)

    clean_passed = gate_verdict(loaded.images, gate)
    if client is not None:
        computed = yield from _grid_on_cluster(client, cfg, loaded, models, identities, prompts, gate, finished,
                                               evaluate, clean_passed, done, total, chunk_size)
        return _finish(folder, cfg, info, loaded.failed, computed, reused, expected)

    states: dict[str, _ModelState] = {}
    for name, model in models.items():
        msg = f"{name}: clean tiles"
        emb = yield from forward(model.iter_encode_images(loaded.images, batch_size=cfg.batch_size, cache=cache),
                                 done, total, span=0, prefix=f"{msg}: ")
        state = _ModelState(model, identities[name], ZeroShotClassifier.from_prompts(model, prompts),
                            EmbeddingIndex(emb, labels=tiles.labels, model_id=identities[name]))
        states[name] = state
        clean_todo = [(name, c, 0) for c in cfg.corruptions if (name, c, 0) not in finished] if 0 in cfg.severities else []
        if clean_todo:  # severity 0 is the same clean tiles for every corruption: scored once, one block per corruption
            values = evaluate(state, emb, clean_passed)
            _append(out / PARTIAL, [r for cond in clean_todo for r in _condition_rows(cond, values, len(tiles))])
            computed += clean_todo
        done += 1
        yield Progress(done, total, msg)

    for corruption in cfg.corruptions:
        for severity in n_sev:
            todo = [m for m in cfg.models if (m, corruption, severity) not in finished]
            if not todo:
                done += len(cfg.models)
                yield Progress(done, total, f"{corruption} {severity}: already done")
                continue
            images = corrupt_tiles(loaded.images, corruption, severity, corruption_seed(cfg.seed, corruption, severity))
            passed = gate_verdict(images, gate)
            done += len(cfg.models) - len(todo)
            for name in todo:
                cond = (name, corruption, severity)
                msg = f"{name}: {corruption} severity {severity}"
                emb = yield from forward(models[name].iter_encode_images(images, batch_size=cfg.batch_size),
                                         done, total, span=0, prefix=f"{msg}: ")
                _append(out / PARTIAL, _condition_rows(cond, evaluate(states[name], emb, passed), len(tiles)))
                computed.append(cond)
                done += 1
                yield Progress(done, total, msg)

    return _finish(folder, cfg, info, loaded.failed, computed, reused, expected)


def _grid_on_cluster(client: Client, cfg: RobustnessConfig, loaded: LoadedTiles, models: dict[str, ClipModel],
                     identities: dict[str, str], prompts, gate: Gate, finished: dict,
                     evaluate: Callable[[_ModelState, np.ndarray, np.ndarray], dict[str, float]],
                     clean_passed: np.ndarray, done: int, total: int,
                     chunk_size: int) -> ProgressGenerator[list[Condition]]:
    """Each model's unfinished conditions: embeddings from the workers (one task per chunk), metrics here."""
    from napari_clipmed.bench.robustness_items import (
        describe_failures,
        items_fingerprint,
        iter_model_conditions,
    )
    from napari_clipmed.zeroshot import ZeroShotClassifier

    out, tiles = cfg.out_dir, loaded.tileset
    paths = [str(Path(p).resolve()) for p in tiles.paths]
    shapes = [tuple(image.shape) for image in loaded.images]
    fingerprint = items_fingerprint(paths, cfg.seed, gate, __version__)
    n_sev = [s for s in cfg.severities if s > 0]
    steps = 1 + len(cfg.corruptions) * len(n_sev)  # one model's share of the progress
    computed: list[Condition] = []
    failures: dict[str, RunItemsResult] = {}
    for name, model in models.items():
        clean_todo = [(name, c, 0) for c in cfg.corruptions if (name, c, 0) not in finished] if 0 in cfg.severities else []
        todo = [(c, s) for c in cfg.corruptions for s in n_sev if (name, c, s) not in finished]
        if not clean_todo and not todo:
            done += steps
            yield Progress(done, total, f"{name}: already done")
            continue
        conditions = [(c, s, corruption_seed(cfg.seed, c, s)) for c, s in todo]
        chunks = iter_model_conditions(client, out, name, model, paths, shapes, conditions, gate=gate,
                                       fingerprint=fingerprint, chunk_size=chunk_size, batch_size=cfg.batch_size,
                                       device=cfg.device)
        result = yield from forward(chunks, done, total, span=steps)
        done += steps
        if result.clean is None:
            failures[name] = result.run
            yield Progress(done, total, f"{name}: {len(result.run.failed)} tile chunks failed")
            continue
        state = _ModelState(model, identities[name], ZeroShotClassifier.from_prompts(model, prompts),
                            EmbeddingIndex(result.clean, labels=tiles.labels, model_id=identities[name]))
        if clean_todo:  # severity 0: the clean tiles, scored once, one block per corruption (as in-process)
            values = evaluate(state, result.clean, clean_passed)
            _append(out / PARTIAL, [r for cond in clean_todo for r in _condition_rows(cond, values, len(tiles))])
            computed += clean_todo
        for corruption, severity in todo:
            cond = (name, corruption, severity)
            values = evaluate(state, result.embeddings[(corruption, severity)], result.passed[(corruption, severity)])
            _append(out / PARTIAL, _condition_rows(cond, values, len(tiles)))
            computed.append(cond)
        yield Progress(done, total, f"{name}: {len(clean_todo) + len(todo)} conditions")
    if failures:
        raise ClipmedError(f"{describe_failures(failures)}. The other conditions are in {out / PARTIAL}; rerun the "
                           "same command to retry (finished chunks are kept)")
    return computed


def _finish(folder: RunFolder, cfg: RobustnessConfig, info: dict, failed: list, computed: list, reused: list,
            expected: list[str]) -> RobustnessResult:
    """All conditions are in the partial file: write the final outputs, then drop the partial file.

    Plots are built in a temporary folder; the last step (results, summary, status, removing the
    partial file) runs with Ctrl-C held back, so the folder is never left half-final.
    """
    import pandas as pd

    out = folder.folder
    groups = _complete_conditions(_read_rows(out / PARTIAL), expected)
    missing = [(m, c, s) for m in cfg.models for c in cfg.corruptions for s in cfg.severities if (m, c, s) not in groups]
    if missing:
        raise InputError(f"{len(missing)} conditions are missing from {out / PARTIAL} (e.g. {missing[0]}); rerun to finish")
    order = {name: i for i, name in enumerate([*cfg.models, *info["models"]])}
    corr = {name: i for i, name in enumerate([*cfg.corruptions, *sorted({k[1] for k in groups})])}
    keys = sorted(groups, key=lambda k: (order.get(k[0], len(order)), corr[k[1]], k[2]))
    records = [r for key in keys for r in groups[key]]
    frame = pd.DataFrame(records, columns=report.TIDY_COLUMNS)
    frame = frame.astype({"severity": int, "value": float, "n": int})
    headline = ["zeroshot_balanced_accuracy", f"retrieval_majority@{cfg.ks[-1]}", "gate_flagged",
                "zeroshot_accuracy_gate_passed"]
    run_info = {"models": ", ".join(dict.fromkeys(k[0] for k in keys)),
                "corruptions": ", ".join(dict.fromkeys(k[1] for k in keys)),
                "severities": ", ".join(map(str, sorted({k[2] for k in keys}))), "tiles": info["tiles"]["n_readable"],
                "classes": ", ".join(f"{k} ({v})" for k, v in info["tiles"]["classes"].items()),
                "prompts": info["prompts"]["name"], "seed": cfg.seed}
    summary = report.summary_markdown(frame, run_info, headline, failed)
    files: dict[str, Path] = {}
    with atomic_dir(out / "plots") as plots:
        names = [path.name for path in report.write_plots(frame, plots)]
    with defer_interrupts():
        files["results"] = report.write_csv(frame, out / RESULTS)
        files["summary"] = report.write_text(out / "summary.md", summary)
        folder.set("complete", reason=None)
        (out / PARTIAL).unlink(missing_ok=True)
    for name in names:
        files[f"plot:{Path(name).stem}"] = out / "plots" / name
    return RobustnessResult(frame, files, computed, reused, list(failed))


def run_robustness(
    tileset: TileSet, config: RobustnessConfig, on_progress: ProgressCallback | None = None, *,
    client: Client | None = None, chunk_size: int = 256,
) -> RobustnessResult:
    """Plain-call twin of `iter_run_robustness`."""
    return run_generator(iter_run_robustness(tileset, config, client=client, chunk_size=chunk_size), on_progress)
