"""A lock and an always-accurate status for an output folder that a long run writes into.

`RunFolder(folder)` is a context manager: it takes an exclusive `fcntl` lock on
`folder/.clipmed.lock` (as Trident does with lock files), so a second run on the same folder is
refused with a message (or waits, with `wait=True`), and it records the run's status in a JSON
file: "running" while the lock is held, then "complete", "interrupted" or "failed" with its
reason. The lock dies with the process, so `read_status` reports a "running" status whose lock is
free (a killed process) as "interrupted". `defer_interrupts()` holds Ctrl-C back during a final
phase that must not be cut in half.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from napari_clipmed.errors import InputError

LOCK_FILE = ".clipmed.lock"
STATUS_FILE = "status.json"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, obj: dict) -> None:
    from napari_clipmed.io.atomic import write_json

    write_json(path, obj)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_locked(folder: str | os.PathLike[str]) -> bool:
    """True while some process holds the run lock of `folder`."""
    lock = Path(folder) / LOCK_FILE
    if not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return True
        raise
    finally:
        os.close(fd)  # closing drops a lock we may have taken
    return False


def read_status(folder: str | os.PathLike[str], status_file: str = STATUS_FILE) -> dict:
    """The recorded status of `folder` ({} when none), with "running" corrected to "interrupted"
    when no process holds the lock any more."""
    info = _read_json(Path(folder) / status_file)
    if info.get("status") == "running" and not is_locked(folder):
        info = {**info, "status": "interrupted", "reason": "the process ended without finishing"}
    return info


class RunFolder:
    """Hold the run lock on `folder` and keep its status file accurate (see module docstring)."""

    def __init__(
        self, folder: str | os.PathLike[str], status_file: str = STATUS_FILE, *, command: str = "", wait: bool = False,
        defer_status: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.status_path = self.folder / status_file
        self.command = command
        self.wait = wait
        self.defer_status = defer_status  # True: the status is first written by `begin()` (after checks that may refuse)
        self._fd: int | None = None
        self._recorded = False
        self._created = False

    def __enter__(self) -> RunFolder:  # noqa: PYI034
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            other = _read_json(self.status_path)
            who = f" ({other.get('command') or 'clipmed'}, pid {other['pid']})" if other.get("pid") else ""
            raise InputError(
                f"another run{who} is writing to {self.folder}; wait for it to finish or choose another output folder"
            ) from None
        self._fd = fd
        if not self.defer_status:
            self.begin()
        return self

    def begin(self) -> None:
        """Record "running": from now on the status file describes this run."""
        self._recorded = True
        self.set("running", started=_now(), pid=os.getpid(), command=self.command, reason=None)

    def set(self, status: str, **fields: object) -> None:
        """Record `status` (and `fields`) in the status file, keeping what else it holds."""
        info = _read_json(self.status_path)
        info.update({k: v for k, v in fields.items()})
        info["status"] = status
        info["updated"] = _now()
        _write_json(self.status_path, info)

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if not (self._recorded or _read_json(self.status_path).get("status") == "running"):
                pass  # refused before it began: the folder's status still describes the earlier run
            elif kind is None:
                if _read_json(self.status_path).get("status") == "running":
                    self.set("complete", reason=None)
            elif issubclass(kind, (KeyboardInterrupt, GeneratorExit)):
                self.set("interrupted", reason="stopped before the end (Ctrl-C or cancel); rerun to continue")
            else:
                self.set("failed", reason=str(err) or kind.__name__)
        finally:
            if self._fd is not None:
                if self._created and not self.status_path.exists():  # refused before it began: leave nothing
                    (self.folder / LOCK_FILE).unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        self.folder.rmdir()
                os.close(self._fd)  # releases the lock
                self._fd = None


@contextlib.contextmanager
def defer_interrupts() -> Iterator[None]:
    """Hold SIGINT back until the block ends (then raise KeyboardInterrupt), so a final phase of
    renames and status updates is never cut in half. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt
