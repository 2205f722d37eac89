"""The command line: ``keyedlock COMMAND ...``, also ``python -m keyedlock COMMAND ...``.

:func:`main` is the entry point of both (the ``keyedlock`` script and
``keyedlock/__main__.py``); each command lives in a module of its own and is
imported only when it runs.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from keyedlock import __version__

from ._holders import scan as scan  # (re-exported: what FileKeyedLock.statistics reads /proc with)
from ._output import Output, OutputError, Writer
from ._run import (
    BUSY,
    CANNOT_EXECUTE,
    FORWARDED,
    LOCK_FILE_ERROR,
    NAMED_FORWARDED,
    NOT_FOUND,
    run_command,
)

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

__all__ = ["main"]  # (and scan, for the package: see keyedlock._filelock)


#: The signals ``run`` sends on to COMMAND, for its help.
_FORWARDED_NAMES: Final = ", ".join(signal.Signals(s).name for s in NAMED_FORWARDED) + (
    " and the real-time signals" if len(FORWARDED) > len(NAMED_FORWARDED) else ""
)

#: The most concurrent checkouts the demo runs (each is a thread, a task and a process).
MAX_CHECKOUTS = 100


def count(text: str) -> int:
    """An argument that is a whole number from 1 to :data:`MAX_CHECKOUTS`."""
    expected = f"expected a whole number from 1 to {MAX_CHECKOUTS}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None
    if not 1 <= value <= MAX_CHECKOUTS:
        raise argparse.ArgumentTypeError(f"{expected}, got {value}")
    return value


def _closed_output() -> int:
    """Standard output was closed by its reader (``keyedlock holders | head -1``), or
    cannot be written (the caller said why).

    Exit with status 1, as a broken pipe asks: what is still buffered goes
    nowhere, instead of to a traceback at interpreter exit.
    """
    if sys.stdout is None:  # started with it closed: nothing is buffered
        return 1
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 1


#: ``run``'s usage line: argparse cannot show the ``--`` before COMMAND by itself.
_RUN_USAGE = "%(prog)s [-h] [--file PATH] [--timeout SECONDS | --nonblock] " + (
    "KEY -- COMMAND [ARG ...]"
)


def seconds(text: str) -> float:
    """An argument that is a number of seconds >= 0 (``inf``: no limit, as no --timeout)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def file_name(text: str) -> str:
    """An argument that names a file: not empty."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got ''")
    return text


def _split_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """For ``run``: the arguments before the first ``--``, and the command after it.

    The command is None for other commands, and when there is no ``--``.
    The program's own options take no value, so its first argument that is
    not an option names the command.
    """
    name = next((arg for arg in argv if not arg.startswith("-")), None)
    if name != "run" or "--" not in argv:
        return argv, None
    at = argv.index("--")
    if at < argv.index("run"):
        return argv, None
    return argv[:at], argv[at + 1 :]


def _parser(prog: str | None) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The program's parser, and that of each command."""
    parser = _Parser(
        prog=prog,
        description="keyedlock: keyed locks and single-flight for threads, asyncio and trio.",
    )
    parser.add_argument("--version", action="version", version=f"keyedlock {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    run = commands.add_parser(
        "run",
        usage=_RUN_USAGE,
        help="run a command while holding a key, for every process of this host (like flock)",
        description=(
            "Take KEY in a lock file shared by every process of this host (FileKeyedLock), "
            "run COMMAND while holding it, and release it when COMMAND ends. Waits for the "
            "key as long as it takes unless --timeout or --nonblock says otherwise."
        ),
        epilog=(
            "exit status: COMMAND's own; 128+N if a signal N ended it; "
            f"{BUSY} if the key was busy (--nonblock) or still busy when --timeout "
            f"elapsed; {NOT_FOUND} if COMMAND was not found, {CANNOT_EXECUTE} if it "
            f"could not be executed; {LOCK_FILE_ERROR} if the lock file could not be used; "
            "2 for wrong arguments. "
            f"{_FORWARDED_NAMES} are sent on to COMMAND."
        ),
    )
    run.add_argument(
        "key",
        nargs="?",  # (required: checked in main, which also takes it after a first --)
        metavar="KEY",
        help=(
            "the key to hold: the str key of FileKeyedLock, e.g. 'deploy:web' (one that "
            "starts with - goes after --: run [OPTIONS] -- -KEY -- COMMAND)"
        ),
    )
    run.add_argument(
        "--file",
        type=file_name,
        metavar="PATH",
        help="the lock file (created if missing; default: the file of FileKeyedLock())",
    )
    wait = run.add_mutually_exclusive_group()
    wait.add_argument(
        "--timeout",
        type=seconds,
        metavar="SECONDS",
        help="give up if the key is still busy after SECONDS (0: try once)",
    )
    wait.add_argument(
        "--nonblock",
        action="store_true",
        help="give up at once if the key is busy (the same as --timeout 0)",
    )
    holders = commands.add_parser(
        "holders",
        help="show which processes hold and wait for which keys of a lock file (Linux)",
        description=(
            "List the keys held in a lock file of FileKeyedLock: for each, the holding "
            "process (pid, user, command line) and how long that process has run, and the "
            "requests waiting for a key. A key's name is known when it is given as a KEY "
            "argument, or is one of the holding process's own arguments; other keys show "
            "their offset in the file."
        ),
        epilog=(
            "The kernel does not record when a lock was taken: PROCESS AGE is how long the "
            "holding process has run. Processes this user may not inspect are listed as such. "
            "exit status: 0, or 1 if the lock file or /proc could not be read, or if the "
            "output was closed early (as by `| head`); 2 for wrong arguments."
        ),
    )
    holders.add_argument(
        "keys",
        nargs="*",
        metavar="KEY",
        help="keys to name in the output (and to report as held or free)",
    )
    holders.add_argument(
        "--file",
        type=file_name,
        metavar="PATH",
        help="the lock file (default: the file of FileKeyedLock())",
    )
    holders.add_argument(
        "--json", action="store_true", help="print JSON (the schema is in docs/cli.md)"
    )
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
        help="concurrent checkouts per run, 1 to 100 (default: 10)",
    )
    return parser, {"run": run, "holders": holders, "demo": demo}


def _failed_output(exc: BrokenPipeError | OutputError, prog: str) -> int:
    """The status for standard output that could not be written: 1, the reason on standard
    error (none for a pipe closed by its reader)."""
    if not isinstance(exc, BrokenPipeError):
        print(f"{prog}: cannot write the output: {exc}", file=sys.stderr)
    return _closed_output()


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose ``--help`` and ``--version`` text, if it cannot be written
    to standard output, fails the command (argparse drops the error: the text was lost and
    the status said 0)."""

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message and (file is None or file is sys.stdout):  # (None too if it is closed)
            out = Output(sys.stdout)
            out.write(message)
            out.flush()
        else:  # standard error: nowhere to tell of its failure
            super()._print_message(message, file)


def _show_holders(
    path: str | None, keys: list[str], out: Writer, *, as_json: bool, prog: str
) -> int:
    from ._holders_format import print_json, print_text
    from ._lockfile import default_path

    if not os.path.isdir("/proc/self/fdinfo"):
        print(f"{prog}: needs Linux's /proc (/proc/self/fdinfo is not there)", file=sys.stderr)
        return 1
    path = os.path.abspath(path) if path is not None else default_path()
    try:
        report = scan(path, keys)
    except OSError as exc:
        print(f"{prog}: cannot inspect {path}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print_json(report, out)
    else:
        print_text(report, out)
    return 0


def main(argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line; returns the exit status.

    ``argv``: the arguments (default: ``sys.argv[1:]``). ``prog``: the name
    that usage and error messages give the program (default: the name it was
    started by, ``keyedlock`` for the installed script; ``python -m
    keyedlock`` passes its own).
    """
    if sys.stderr is None:  # started with it closed (2>&-): messages go nowhere, as they
        # would to a closed descriptor, not to standard output (where print(file=None) and
        # argparse's usage would put them, among the command's report)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the process's, as sys.stderr is
    parser, commands = _parser(prog)
    given = list(sys.argv[1:] if argv is None else argv)
    head, command = _split_command(given)
    try:
        args, extra = parser.parse_known_args(head)
    except (BrokenPipeError, OutputError) as exc:  # --help or --version, not written
        return _failed_output(exc, parser.prog)
    command_parser = commands[args.command]
    if args.command == "run":
        run = command_parser
        if args.key is None and command is not None and command[1:2] == ["--"]:
            args.key, command = command[0], command[2:]  # run [OPTIONS] -- KEY -- COMMAND
        if args.key is None:
            dashed = next((arg for arg in extra if arg.startswith("-")), None)
            hint = (
                ""
                if dashed is None
                else (
                    f" (a KEY that starts with -, as {dashed!r} does, goes after --: "
                    f"run [OPTIONS] -- {dashed} -- COMMAND)"
                )
            )
            run.error(f"the following arguments are required: KEY{hint}")
        if extra:
            if command is None and not extra[0].startswith("-"):
                run.error(f"put -- between KEY and the command: {args.key} -- {' '.join(extra)}")
            run.error(f"unrecognized arguments: {' '.join(extra)}")
        if command is None:
            run.error("missing the command to run: KEY -- COMMAND [ARG ...]")
        if not command:
            run.error("missing the command to run after --")
        if not command[0]:
            run.error("the command to run after -- is empty")
        if not args.key:
            run.error("KEY is empty")
        return run_command(
            args.key,
            command,
            path=args.file,
            timeout=0 if args.nonblock else args.timeout,
            prog=run.prog,
            err=sys.stderr,
        )
    if extra:
        command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "holders" and not all(args.keys):
        command_parser.error("a KEY is empty")
    out = Output(sys.stdout)
    try:
        if args.command == "holders":
            status = _show_holders(
                args.file, args.keys, out, as_json=args.json, prog=command_parser.prog
            )
        elif args.command == "demo":
            from ._demo import CHECKOUTS, run_demo

            checkouts: int = args.checkouts if args.checkouts is not None else CHECKOUTS
            status = run_demo(out, checkouts=checkouts)
        else:
            raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects others
        out.flush()  # (a closed pipe shows here, not at interpreter exit)
    except (BrokenPipeError, OutputError) as exc:
        return _failed_output(exc, command_parser.prog)
    return status
