"""Cohorts on a Dask cluster: a client from a `--cluster` spec, models loaded once per worker, per-item outputs.

- `cluster_client(spec)`: None -> in-process (no Dask needed); ``local:N`` -> a `LocalCluster` of N worker
  processes; ``tcp://HOST:PORT`` -> an existing scheduler. Without `distributed` installed, one message names
  the ``[cluster]`` extra.
- `ModelRef` says which model to load (name, weights, device); each worker process loads it once
  (`worker_model`, a per-process cache) and keeps it for every task: models are never pickled per task.
- `iter_run_items(fn, items, out_dir, ...)` maps `fn(payload, model) -> {name: output}` over items (one CT volume,
  one slide, one chunk of tiles). Each item's outputs land atomically in ``out_dir/items/<key>/`` as it finishes
  (DataFrame -> Parquet, ndarray -> .npy, bytes/str as is, an object with ``.save(folder)`` in a subfolder); a
  finished item is skipped on the next run (resume); a failing item is recorded in ``out_dir/failed/<key>.json``
  with its error while the others go on. The same code runs in-process when no client is given, so both paths
  write the same files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_clipmed.errors import ClipmedError, InputError
from napari_clipmed.io.atomic import write_json
from napari_clipmed.progress import Progress, ProgressGenerator, run_generator

if TYPE_CHECKING:
    import pandas as pd
    from distributed import Client

    from napari_clipmed.models.model import ClipModel
    from napari_clipmed.models.registry import ModelSpec

EXTRA_HINT = "pip install 'napari-clipmed[cluster]'"
ITEMS, FAILED = "items", "failed"
_TMP_MARK = ".tmp-"
_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,199}$")


class ClusterError(ClipmedError):
    """The cluster cannot be used: Dask missing, a scheduler out of reach."""


# ----------------------------------------------------------------------------- the client
@dataclass(frozen=True)
class ClusterSpec:
    """A parsed `--cluster` value: ``local:N`` (n_workers) or a scheduler address."""

    n_workers: int = 0
    address: str = ""

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        text = text.strip()
        if text.startswith("local:"):
            count = text[len("local:") :]
            if not count.isdigit() or int(count) < 1:
                raise InputError(f"--cluster {text!r}: local:N needs a whole number of workers N >= 1, e.g. local:4")
            return cls(n_workers=int(count))
        if re.match(r"^(tcp|tls|ucx|inproc)://[^\s:/]+(:\d+)?$", text):
            return cls(address=text)
        raise InputError(f"--cluster {text!r} is neither local:N (N worker processes here) nor a scheduler address "
                         "such as tcp://HOST:8786")


def require_distributed() -> Any:
    """The `distributed` module, or one message naming the extra that provides it."""
    try:
        import distributed
    except ImportError as err:
        raise ClusterError(f"--cluster needs Dask distributed, which cannot be imported ({err}); "
                           f"install the cluster extra: {EXTRA_HINT}") from None
    return distributed


def default_torch_threads(n_workers: int, cores: int | None = None) -> int:
    """Torch threads per worker: the machine's cores shared evenly between its workers."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, n_workers))


def _torch_threads_plugin(per_host: dict[str, int], fixed: int | None) -> Any:
    """A worker plugin that sets torch's thread count once per worker process (also for workers that join later)."""
    from distributed import WorkerPlugin

    class TorchThreads(WorkerPlugin):  # defined here so `distributed` is only imported when a cluster is used
        name = "clipmed-torch-threads"

        def __init__(self, per_host: dict[str, int], fixed: int | None) -> None:
            self.per_host, self.fixed = per_host, fixed

        def setup(self, worker: Any) -> None:
            import torch

            host = worker.address.rsplit(":", 1)[0]
            torch.set_num_threads(self.fixed or default_torch_threads(self.per_host.get(host, 1)))

    return TorchThreads(per_host, fixed)


TRIM_KEY = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
DASK_TRIM_DEFAULT = 65536


@contextmanager
def torch_friendly_worker_env() -> Iterator[None]:
    """Spawn local workers without Dask's default ``MALLOC_TRIM_THRESHOLD_=65536``.

    Setting that variable turns off glibc's adaptive mmap threshold, so every activation tensor of a
    forward pass is a fresh mmap and page-faulted again: measured 1.2x slower per task alone and 1.35x
    with two workers busy (ViT-B/16, docs/performance.md). Kept when the user set it (environment or
    Dask config).
    """
    import dask

    if "MALLOC_TRIM_THRESHOLD_" in os.environ or dask.config.get(TRIM_KEY, None) != DASK_TRIM_DEFAULT:
        yield
        return
    with dask.config.set({TRIM_KEY: None}):
        yield


def configure_workers(client: Client, torch_threads: int | None = None) -> None:
    """Torch threads on every worker: `torch_threads`, else cores // workers on that host."""
    per_host: dict[str, int] = {}
    for address in client.scheduler_info()["workers"]:
        host = address.rsplit(":", 1)[0]
        per_host[host] = per_host.get(host, 0) + 1
    client.register_plugin(_torch_threads_plugin(per_host, torch_threads))


@contextmanager
def cluster_client(spec: str | None, *, torch_threads: int | None = None,
                   connect_timeout: float = 20.0) -> Iterator[Client | None]:
    """A Dask client for `spec` (None: yields None, in-process), closed with its LocalCluster on exit."""
    if not spec:
        yield None
        return
    parsed = ClusterSpec.parse(spec)
    distributed = require_distributed()
    cluster = None
    if parsed.n_workers:
        import logging

        with torch_friendly_worker_env():
            cluster = distributed.LocalCluster(n_workers=parsed.n_workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None, silence_logs=logging.ERROR)
        client = distributed.Client(cluster)
    else:
        try:
            client = distributed.Client(parsed.address, timeout=connect_timeout)
        except (OSError, TimeoutError) as err:
            raise ClusterError(f"cannot reach the Dask scheduler at {parsed.address}: {err}") from None
    try:
        configure_workers(client, torch_threads)
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ----------------------------------------------------------------------------- models on workers
@dataclass(frozen=True)
class ModelRef:
    """Which model a worker loads: registry name (or spec), checkpoint, weights folder, device. Small to send."""

    name: str | ModelSpec
    weights: str | None = None
    weights_dir: str | None = None
    device: str | None = None
    precision: str = "auto"  # auto: each worker decides for its own CPU (`models.precision`)

    @classmethod
    def of(cls, model: ClipModel, device: str | None = None) -> ModelRef:
        """The reference that rebuilds `model` on a worker (its spec and checkpoint file)."""
        precision = model.precision if model.device.type == "cpu" else "auto"  # a CPU model's precision is pinned
        return cls(model.spec, str(model.weights_path) if model.weights_path else None, None, device, precision)

    def cache_key(self) -> str:
        """Model name + weights (file, size, mtime) + device: one loaded model per key and process."""
        weights = ""
        if self.weights:
            path = Path(self.weights).expanduser()
            stat = path.stat() if path.exists() else None
            weights = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}" if stat else str(path)
        return repr((self.name, weights, self.weights_dir, self.device, self.precision))

    def load(self) -> ClipModel:
        from napari_clipmed.models.loader import load_model

        return load_model(self.name, self.weights, weights_dir=self.weights_dir, device=self.device,
                          precision=self.precision)  # type: ignore[arg-type]


_MODELS: dict[str, ClipModel] = {}
_MODEL_LOCK = threading.Lock()
MODEL_LOADS: list[str] = []  # cache keys loaded by this process, in order (tests check: once per worker)


def worker_model(ref: ModelRef) -> ClipModel:
    """The model of `ref`, loaded once per process and kept for every later task."""
    key = ref.cache_key()
    with _MODEL_LOCK:
        if key not in _MODELS:
            _MODELS[key] = ref.load()
            MODEL_LOADS.append(key)
        return _MODELS[key]


# ----------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Item:
    """One unit of work: `key` names its output folder (unique, file-name safe); `payload` is what `fn` gets."""

    key: str
    payload: Any


@dataclass(frozen=True)
class ItemFailure:
    key: str
    error: str


@dataclass(frozen=True)
class RunItemsResult:
    """Which items are finished (computed now or reused from an earlier run) and which failed, with errors."""

    out_dir: Path
    keys: tuple[str, ...]
    computed: tuple[str, ...]
    reused: tuple[str, ...]
    failed: tuple[ItemFailure, ...]
    task_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def finished(self) -> list[str]:
        """Finished items in item order."""
        done = set(self.computed) | set(self.reused)
        return [k for k in self.keys if k in done]

    def item_dir(self, key: str) -> Path:
        return item_dir(self.out_dir, key)

    def read_table(self, name: str) -> pd.DataFrame:
        """`name`.parquet of every finished item, concatenated in item order (with an `item` column)."""
        import pandas as pd

        frames = [pd.read_parquet(self.item_dir(k) / f"{name}.parquet").assign(item=k) for k in self.finished]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def read_arrays(self, name: str) -> list:
        """`name`.npy of every finished item, in item order."""
        import numpy as np

        return [np.load(self.item_dir(k) / f"{name}.npy") for k in self.finished]

    def to_frame(self) -> pd.DataFrame:
        """One row per item: key, status (computed, reused, failed), error."""
        import pandas as pd

        errors = {f.key: f.error for f in self.failed}
        status = {**{k: "computed" for k in self.computed}, **{k: "reused" for k in self.reused}}
        return pd.DataFrame({"item": list(self.keys), "status": [status.get(k, "failed" if k in errors else "") for k in self.keys],
                             "error": [errors.get(k, "") for k in self.keys]})


def item_dir(out_dir: Path, key: str) -> Path:
    return Path(out_dir) / ITEMS / key


def _write_outputs(folder: Path, outputs: Mapping[str, object]) -> None:
    import numpy as np
    import pandas as pd

    for name, value in outputs.items():
        if not _KEY.match(name):
            raise InputError(f"output name {name!r} is not a plain file name")
        if isinstance(value, pd.DataFrame):
            value.to_parquet(folder / f"{name}.parquet", index=False)
        elif isinstance(value, np.ndarray):
            np.save(folder / f"{name}.npy", value, allow_pickle=False)
        elif isinstance(value, bytes):
            (folder / name).write_bytes(value)
        elif isinstance(value, str):
            (folder / name).write_text(value, encoding="utf-8")
        elif hasattr(value, "save"):
            value.save(folder / name)
        else:
            raise TypeError(f"item output {name!r}: cannot write a {type(value).__name__}")


def write_item(out_dir: str | os.PathLike[str], key: str, outputs: Mapping[str, object]) -> bool:
    """Write one item's outputs into ``out_dir/items/<key>/`` atomically (a temporary sibling renamed into place).

    Unlike `io.atomic.atomic_dir`, a finished item is never replaced (readers may hold its files, e.g. the
    store's memory maps): when the item is already there (a rerun of the task finished elsewhere first), the
    new copy is dropped and False is returned.
    """
    out = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(dir=out / ITEMS, prefix=f".{key}{_TMP_MARK}"))
    try:
        _write_outputs(tmp, outputs)
        try:
            os.rename(tmp, item_dir(out, key))
        except OSError:
            if not item_dir(out, key).is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def run_one(fn: Callable[[Any, Any], Mapping[str, object]], item: Item, out_dir: str,
            model: ModelRef | ClipModel | None) -> dict:
    """Run `fn` on one item and write its outputs atomically (here or on a worker); returns a small record."""
    out = Path(out_dir)
    start = time.perf_counter()
    try:
        loaded = worker_model(model) if isinstance(model, ModelRef) else model
        write_item(out, item.key, fn(item.payload, loaded))
    except Exception as err:  # noqa: BLE001 - any failure of one item is recorded; the others go on
        error = f"{type(err).__name__}: {err}"
        write_json(out / FAILED / f"{item.key}.json",
                           {"item": item.key, "error": error, "traceback": traceback.format_exc()})
        return {"key": item.key, "error": error, "seconds": time.perf_counter() - start, "pid": os.getpid()}
    return {"key": item.key, "error": "", "seconds": time.perf_counter() - start, "pid": os.getpid()}


def _check_items(items: Sequence[Item]) -> None:
    bad = [i.key for i in items if not isinstance(i.key, str) or not _KEY.match(i.key)]
    if bad:
        raise InputError(f"item keys must be plain file names (letters, digits, _ . = + -): {bad[:3]}")
    seen: set[str] = set()
    dupes = [i.key for i in items if i.key in seen or seen.add(i.key)]  # type: ignore[func-returns-value]
    if dupes:
        raise InputError(f"item keys must be unique; repeated: {dupes[:3]}")


def _prepare(out: Path) -> None:
    """Create the folders; remove temporary leftovers of a killed run (one run per folder at a time)."""
    for sub in (ITEMS, FAILED):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _remove_temporaries(out)


def _remove_temporaries(out: Path) -> None:
    for sub in (ITEMS, FAILED):
        for stale in (out / sub).glob(f".*{_TMP_MARK}*"):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def _check_fingerprint(out: Path, fingerprint: str) -> None:
    path = out / "run_items.json"
    try:
        old = json.loads(path.read_text(encoding="utf-8")).get("fingerprint", "") if path.is_file() else None
    except (OSError, ValueError):
        old = None
    if old is not None and old != fingerprint and any((out / ITEMS).iterdir()):
        raise InputError(f"{out} holds item results of a different run (other inputs, settings or model); "
                         "choose another output folder or delete it")
    if old != fingerprint:
        write_json(path, {"fingerprint": fingerprint})


def iter_run_items(
    fn: Callable[[Any, Any], Mapping[str, object]],
    items: Sequence[Item],
    out_dir: str | os.PathLike[str],
    *,
    model: ModelRef | ClipModel | None = None,
    client: Client | None = None,
    message: str = "items",
    fingerprint: str = "",
) -> ProgressGenerator[RunItemsResult]:
    """Run `fn` over the unfinished items (in-process, or on `client`'s workers); yields Progress in items.

    `fn` must be importable (a module-level function, or a `functools.partial` of one). With a client, `model`
    is sent as a `ModelRef` (a `ClipModel` is turned into one) and loaded once per worker. Closing the
    generator cancels what has not started; finished items stay and are skipped by the next run.
    `fingerprint` names what the outputs depend on (config, model identity): a folder holding items of
    another fingerprint is refused rather than mixed.
    """
    _check_items(items)
    out = Path(out_dir)
    _prepare(out)
    _check_fingerprint(out, fingerprint)
    reused = tuple(i.key for i in items if item_dir(out, i.key).is_dir())
    todo = [i for i in items if not item_dir(out, i.key).is_dir()]
    for item in todo:  # a retried item starts without its old failure record
        (out / FAILED / f"{item.key}.json").unlink(missing_ok=True)
    total, done = len(items), len(reused)
    computed: list[str] = []
    failed: list[ItemFailure] = []
    seconds: dict[str, float] = {}

    def record(rec: dict) -> None:
        seconds[rec["key"]] = rec["seconds"]
        (failed.append(ItemFailure(rec["key"], rec["error"])) if rec["error"] else computed.append(rec["key"]))

    yield Progress(done, total, f"{message}: {done} of {total} already finished")
    if client is None:
        for item in todo:
            record(run_one(fn, item, str(out), model))
            done += 1
            yield Progress(done, total, f"{message}: {done} of {total} ({len(failed)} failed)")
    else:
        yield from _iter_on_cluster(client, fn, todo, out, model, record, done, total, message, failed)
    _remove_temporaries(out)  # every task has ended: what is left is from a killed worker
    return RunItemsResult(out, tuple(i.key for i in items), tuple(computed), reused, tuple(failed), seconds)


def prune_items(out_dir: str | os.PathLike[str], keep: Sequence[str]) -> list[str]:
    """Remove the item folders and failure records of keys not in `keep` (items of an earlier, changed plan).

    Call it only after a run of the current plan has finished every item: what it removes can no longer be reused.
    Returns the keys removed.
    """
    out, wanted = Path(out_dir), set(keep)
    removed = []
    for folder in sorted((out / ITEMS).iterdir()) if (out / ITEMS).is_dir() else []:
        if folder.is_dir() and folder.name not in wanted and not folder.name.startswith("."):
            shutil.rmtree(folder)
            removed.append(folder.name)
    for record in sorted((out / FAILED).glob("*.json")) if (out / FAILED).is_dir() else []:
        if record.stem not in wanted:
            record.unlink(missing_ok=True)
    return removed


def _iter_on_cluster(client: Client, fn: Callable, todo: list[Item], out: Path, model: Any,
                     record: Callable[[dict], None], done: int, total: int, message: str,
                     failed: list[ItemFailure]) -> Iterator[Progress]:
    from distributed import wait

    from napari_clipmed.models.model import ClipModel

    ref = ModelRef.of(model) if isinstance(model, ClipModel) else model
    token = os.urandom(4).hex()
    futures = {client.submit(run_one, fn, item, str(out), ref, key=f"clipmed-{token}-{item.key}", pure=False): item
               for item in todo}
    pending = set(futures)
    try:
        while pending:
            try:  # a short wait, so that closing the generator (cancel) takes effect promptly
                finished, pending = wait(pending, timeout=0.5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                finished = set()
            for future in finished:
                try:
                    record(future.result())
                except Exception as err:  # noqa: BLE001 - e.g. KilledWorker: the worker died on this item each time
                    record({"key": futures[future].key, "error": f"{type(err).__name__}: {err}", "seconds": 0.0})
                del futures[future]  # drop our references: the cluster may forget the result
                future.release()
                done += 1
            yield Progress(done, total, f"{message}: {done} of {total} ({len(failed)} failed)")
    finally:
        if pending:
            client.cancel(list(pending))


def run_items(fn: Callable[[Any, Any], Mapping[str, object]], items: Sequence[Item], out_dir: str | os.PathLike[str],
              **kwargs: Any) -> RunItemsResult:
    """Plain-call twin of `iter_run_items`."""
    return run_generator(iter_run_items(fn, items, out_dir, **kwargs))
