"""The `clipmed` command: one subcommand per public operation, for scripted and batch use.

Each area registers its subcommands from its own module (`register(subparsers)`), so this file
stays a thin dispatcher. Errors meant for the user (`ClipmedError`) print as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence

from napari_clipmed import __version__
from napari_clipmed.errors import ClipmedError

# Modules that define `register(subparsers)`; each subparser sets `func(args) -> int`.
COMMAND_MODULES: tuple[str, ...] = (
    "napari_clipmed.commands.models",
    "napari_clipmed.commands.pathology_eval",
    "napari_clipmed.commands.gui",
    "napari_clipmed.commands.dapt",
    "napari_clipmed.commands.ct",
    "napari_clipmed.commands.pathology",
    "napari_clipmed.commands.quality",
    "napari_clipmed.commands.embed",
    "napari_clipmed.commands.slide",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipmed", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"napari-clipmed {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:  # no source location
        print(f"clipmed {args.command}: warning: {message}", file=sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = one_line
    try:
        return int(args.func(args) or 0)
    except ClipmedError as err:
        print(f"clipmed {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clipmed {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    sys.exit(main())
