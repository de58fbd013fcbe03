"""Progress of long commands on stderr, shared by every `clipmed` subcommand."""

from __future__ import annotations

import sys
from collections.abc import Callable

from napari_clipmed.progress import Progress


def _stage_of(message: str) -> str:
    return message.split(":")[0]


class StderrProgress:
    """One updating line on a terminal; elsewhere (logs, CI) one line each time the stage changes.

    `stage` maps a progress message to its stage; messages of the same stage are not repeated in logs.
    """

    def __init__(self, quiet: bool = False, stage: Callable[[str], str] = _stage_of) -> None:
        self.quiet, self.tty, self.stage, self.last = quiet, sys.stderr.isatty(), stage, ""

    def __call__(self, step: Progress) -> None:
        if self.quiet:
            return
        stage = self.stage(step.message)
        if self.tty:
            print(f"\r[{step.done}/{step.total}] {step.message[:100]:<100}", end="", file=sys.stderr, flush=True)
        elif stage != self.last:
            print(f"[{step.done}/{step.total}] {step.message}", file=sys.stderr, flush=True)
        self.last = stage

    def close(self) -> None:
        if self.tty and not self.quiet:
            print(file=sys.stderr)
