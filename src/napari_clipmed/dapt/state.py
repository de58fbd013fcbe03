"""Checkpoints of a DAPT run that survive interruption at any moment.

Each save writes the model to a new file `dapt-epochNNN.pt` (a napari-clipmed checkpoint that
`load_model("local", weights=...)` loads), then the training state `dapt-state.pt` (optimizer,
schedule, scaler, epoch, history, run fingerprint) naming that model file. Both writes are atomic
(temp file + rename) and the state file is the commit point: only after it is replaced is the
previous epoch's model file deleted. An interruption anywhere leaves the last complete pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from napari_clipmed.errors import CheckpointError
from napari_clipmed.io.atomic import atomic_path

STATE_FORMAT = "napari-clipmed-dapt-state"
STATE_FILE = "dapt-state.pt"
FINAL_FILE = "dapt-final.pt"
CONFIG_FILE = "dapt-config.json"
HISTORY_FILE = "dapt-history.csv"
EPOCH_PATTERN = "dapt-epoch*.pt"


def epoch_file(epoch: int) -> str:
    return f"dapt-epoch{epoch:03d}.pt"


@dataclass
class TrainState:
    """What a resumed run needs besides the model weights."""

    epoch: int  # epochs completed
    step: int  # optimizer steps completed
    model_file: str
    optimizer: dict
    scheduler: dict
    scaler: dict
    history: list[dict]
    fingerprint: dict


def commit(out_dir: Path, state: TrainState) -> Path:
    """Write `state` (its model file already written), then drop older epoch model files."""
    payload = {"format": STATE_FORMAT, **state.__dict__}
    path = out_dir / STATE_FILE
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    for old in out_dir.glob(EPOCH_PATTERN):
        if old.name != state.model_file:
            old.unlink(missing_ok=True)
    return path


def read_state(out_dir: Path) -> TrainState | None:
    """The committed state in `out_dir`, or None when there is none."""
    path = out_dir / STATE_FILE
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"cannot read the training state {path} ({type(err).__name__}); "
                              "delete it or start over with resume off") from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a napari-clipmed DAPT training state")
    payload.pop("format")
    state = TrainState(**payload)
    if not (out_dir / state.model_file).is_file():
        raise CheckpointError(f"the training state {path} names {state.model_file}, which is missing from {out_dir}")
    return state


def clear_run(out_dir: Path) -> None:
    """Remove a previous run's files (only the names DAPT writes) before starting over."""
    names = [STATE_FILE, FINAL_FILE, CONFIG_FILE, HISTORY_FILE]
    for path in [*(out_dir / n for n in names), *out_dir.glob(EPOCH_PATTERN)]:
        path.unlink(missing_ok=True)
