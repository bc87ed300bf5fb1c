"""The ``linearlens`` command: a thin layer over the library.

Each subcommand lives in its own module exposing ``register(subparsers)``, which adds a parser
whose ``func(args) -> int`` does the work.

Errors a user can fix are printed as one line and exit with status 2, never as a traceback:
:class:`CommandError` (the command line), ``ValueError`` (the library's bad-input error, e.g. a
corrupt checkpoint or images of the wrong shape, including
:class:`~linearlens.explain.MethodNotApplicableError`), ``OSError`` (files and folders: missing,
unreadable, unwritable, not an image, disk full), ``FloatingPointError`` (training diverged) and
:class:`~linearlens.engine.UninterpretableOperationError` (a model the engine cannot interpret).
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "CommandError"]

# Subcommand modules, in the order they appear in ``linearlens --help``.
SUBCOMMANDS = ("demo", "train", "explain", "evaluate", "interpret", "serve", "report", "xray")


class CommandError(Exception):
    """An error caused by the command line or its inputs; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="linearlens", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``linearlens`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from ..engine.tracer import UninterpretableOperationError

    try:
        return int(args.func(args) or 0)
    except (CommandError, ValueError, OSError, FloatingPointError, UninterpretableOperationError) as err:
        print(f"linearlens {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"linearlens {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line(err: BaseException) -> str:
    """The message of ``err`` on one line; OSErrors name their file, as ``str`` does, without the errno."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
