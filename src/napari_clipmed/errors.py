"""Errors that carry a message meant for the user (CLI prints it, widgets notify it)."""

from __future__ import annotations


class ClipmedError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class InputError(ClipmedError, ValueError):
    """Bad input from the user: wrong shape, dtype, range, parameter or file."""


class WeightsNotFoundError(ClipmedError, FileNotFoundError):
    """No checkpoint for a model could be found locally or downloaded."""


class CheckpointError(ClipmedError):
    """A checkpoint file exists but cannot be read (corrupt, truncated, unknown format)."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or tensor shapes do not fit the model's architecture."""


class BundleError(ClipmedError):
    """A weights bundle that is incomplete or damaged (missing file, hash mismatch, bad manifest)."""


class GatedModelError(WeightsNotFoundError):
    """A gated model asked for without credentials that the hub accepts."""


class BackendError(ClipmedError):
    """A model backend that is unknown or whose entry point fails to import."""
