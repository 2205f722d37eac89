"""The command line: ``keyedlock COMMAND ...``, also ``python -m keyedlock COMMAND ...``.

:func:`main` is the entry point of both (the ``keyedlock`` script and
``keyedlock/__main__.py``); each command lives in a module of its own and is
imported only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keyedlock import __version__

__all__ = ["main"]


def count(text: str) -> int:
    """An argument that is a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _parser(prog: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="keyedlock: keyed locks and single-flight for threads, asyncio and trio.",
    )
    parser.add_argument("--version", action="version", version=f"keyedlock {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = commands.add_parser(
        "demo",
        help="show the double-charge race of a wallet checkout, without and with klock",
        description=(
            "Run concurrent checkouts against one wallet with threads, asyncio, trio and "
            "separate processes, first without a lock, then with klock (FileKeyedLock "
            "across processes), and print what each ended with."
        ),
    )
    demo.add_argument(
        "--checkouts",
        type=count,
        default=None,
        metavar="N",
        help="concurrent checkouts per run (default: 10)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line; returns the exit status.

    ``argv``: the arguments (default: ``sys.argv[1:]``). ``prog``: the name
    that usage and error messages give the program (default: the name it was
    started by, ``keyedlock`` for the installed script; ``python -m
    keyedlock`` passes its own).
    """
    args = _parser(prog).parse_args(argv)
    if args.command == "demo":
        from ._demo import CHECKOUTS, run_demo

        checkouts: int = args.checkouts if args.checkouts is not None else CHECKOUTS
        return run_demo(sys.stdout, checkouts=checkouts)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects others
