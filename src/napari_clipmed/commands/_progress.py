"""Progress of long commands on stderr (a tqdm bar), shared by every `clipmed` subcommand."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from napari_clipmed.progress import Progress


def _stage_of(message: str) -> str:
    return message.split(":")[0]


class CliProgress:
    """A `run_generator` callback that drives one tqdm bar; its description is the current stage.

    `stage` maps a progress message to the text shown; `quiet` shows nothing. Call `close` when done.
    """

    def __init__(self, quiet: bool = False, stage: Callable[[str], str] = _stage_of) -> None:
        self.quiet, self.stage = quiet, stage
        self.bar: Any = None

    def __call__(self, step: Progress) -> None:
        if self.quiet:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=step.total, file=sys.stderr, dynamic_ncols=True, leave=True)
        if self.bar.total != step.total:
            self.bar.total = step.total
        self.bar.set_description_str(self.stage(step.message)[:60], refresh=False)
        self.bar.update(step.done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
