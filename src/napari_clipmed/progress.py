"""Progress for long core work: generators that yield `Progress` and return their result.

Long operations are written as generators (`iter_*`) so one function serves a napari
worker (each yield updates the progress bar and is where cancel takes effect), a CLI
progress bar and a plain call (`run_generator`, used by the non-`iter_` twins).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """`done` of `total` steps finished; `message` says which stage is running."""

    done: int
    total: int
    message: str = ""

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressGenerator = Generator[Progress, None, T]
ProgressCallback = Callable[[Progress], None]


def run_generator(gen: Generator[Progress, None, T], on_progress: ProgressCallback | None = None) -> T:
    """Drive a progress generator to its end and return what it returns."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_progress is not None:
            on_progress(step)


def forward(
    gen: Generator[Progress, None, T],
    offset: int,
    total: int,
    message: str = "",
    *,
    span: int | None = None,
    prefix: str = "",
) -> Generator[Progress, None, T]:
    """Re-yield a sub-generator's progress inside a larger job and return its result: the one relay.

    `offset` steps of `total` are already done. The sub-job's steps count as they are, or, with
    `span`, its fraction done is scaled into `span` steps (0: every step stays at `offset`, as
    cancel points only). Each message is `message`, else `prefix` + the sub-job's message.
    """
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        done = step.done if span is None else int(span * step.fraction)
        yield Progress(offset + done, total, message or f"{prefix}{step.message}")
