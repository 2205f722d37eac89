"""The command line: ``keyedlock COMMAND ...``, also ``python -m keyedlock COMMAND ...``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from keyedlock import __version__

__all__ = ["main"]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m keyedlock",
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
        type=_positive,
        default=None,
        metavar="N",
        help="concurrent checkouts per run (default: 10)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line (``python -m keyedlock``, the ``keyedlock`` script); the exit code."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import CHECKOUTS, run_demo

        checkouts: int = args.checkouts if args.checkouts is not None else CHECKOUTS
        return run_demo(sys.stdout, checkouts=checkouts)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects others
