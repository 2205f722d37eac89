"""The report of ``keyedlock holders``, printed: tables for people, JSON for programs.

:func:`print_text` writes what ``_holders.scan`` found as a table of
holders and one of waiters, with the keys asked about and the processes that
could not be inspected; :func:`print_json` writes the documented JSON object
(its schema is in docs/cli.md; :data:`SCHEMA` is its version).
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from ._holders import Report
from ._holders_proc import Lock, Process
from ._output import Writer
from ._words import shown as _shown

__all__ = ["SCHEMA", "as_json", "command_line", "print_json", "print_text"]

#: The version of the JSON output (``schema``); raised when a field changes meaning or goes.
SCHEMA: Final = 1


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _process_json(process: Process | None) -> dict[str, Any] | None:
    if process is None:
        return None
    return {
        "pid": process.pid,
        "uid": process.uid,
        "user": process.user,
        "command": list(process.command),
        "started": _iso(process.started),
        "age_seconds": None if process.age is None else round(process.age, 2),
    }


def _lock_json(lock: Lock | None) -> dict[str, Any]:
    if lock is None:
        return {"offset": None, "end": None, "kind": None, "mode": None}
    return {"offset": lock.start, "end": lock.end, "kind": lock.kind, "mode": lock.mode}


def as_json(report: Report) -> dict[str, Any]:
    """The report as the documented JSON object (see docs/cli.md)."""
    return {
        "schema": SCHEMA,
        "lock_file": report.path,
        "exists": report.exists,
        "holders": [
            {
                "key": h.key,
                "key_source": h.key_source,
                **_lock_json(h.lock),
                "fd": h.fd,
                "process": _process_json(h.process),
            }
            for h in report.holders
        ],
        "waiters": [
            {
                "key": w.key,
                "key_source": w.key_source,
                **_lock_json(w.lock),
                "fd": w.fd,
                "tid": w.tid,
                "process": _process_json(w.process),
            }
            for w in report.waiters
        ],
        "keys": [
            {
                "key": key,
                "offset": offset,
                "held": report.held(offset),
                "waiters": sum(
                    w.lock is not None and w.lock.byte == offset for w in report.waiters
                ),
            }
            for key, offset in report.keys
        ],
        "uninspected": [
            {**(_process_json(u.process) or {}), "reason": u.reason} for u in report.uninspected
        ],
    }


def print_json(report: Report, out: Writer) -> None:
    """The report as the documented JSON object (see :func:`as_json`), indented."""
    json.dump(as_json(report), out, indent=2)
    print(file=out)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _where(lock: Lock | None) -> str:
    if lock is None:
        return "?"
    if lock.byte is not None:
        return str(lock.byte)
    return f"{lock.start}-{'EOF' if lock.end is None else lock.end}"


def _key_cell(key: str | None, lock: Lock | None) -> str:
    cell = "?" if key is None else _shown(key)
    if lock is not None and (lock.kind, lock.mode) != ("OFDLCK", "WRITE"):
        cell += f" [{lock.kind} {lock.mode}]"
    return cell


def _table(rows: Sequence[tuple[str, ...]], out: Writer) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row[:-1], widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)


_HEADER: Final = ("KEY", "OFFSET", "PID", "USER", "PROCESS AGE", "COMMAND")


def _process_cells(process: Process | None) -> tuple[str, str, str, str]:
    if process is None:
        return ("?", "?", "?", "(not known: the kernel does not say who waits for an OFD lock)")
    return (
        str(process.pid),
        process.user or ("?" if process.uid is None else str(process.uid)),
        _age(process.age),
        command_line(process.command),
    )


def command_line(argv: Iterable[str]) -> str:
    """A command as a shell would take it back, on one line.

    An argument with a line break or another unprintable character is
    written in the ``$'...'`` form of bash and zsh.
    """
    return " ".join(shlex.quote(arg) if arg.isprintable() else _shown(arg) for arg in argv)


def _state(report: Report, offset: int, seen: set[int | None]) -> str:
    if offset in seen:
        return "held"
    if report.held(offset):
        return "held, by a process not inspected"
    return "free"


def print_text(report: Report, out: Writer) -> None:
    """The report as tables for people."""
    print(f"lock file: {report.path}", file=out)
    if not report.exists:
        print("the file does not exist: no key of it is held", file=out)
        return
    if report.holders:
        rows = [_HEADER] + [
            (_key_cell(h.key, h.lock), _where(h.lock), *_process_cells(h.process))
            for h in report.holders
        ]
        print(f"held: {len(report.holders)}", file=out)
        _table(rows, out)
    else:
        print("held: none", file=out)
    if report.waiters:
        rows = [_HEADER] + [
            (_key_cell(w.key, w.lock), _where(w.lock), *_process_cells(w.process))
            for w in report.waiters
        ]
        print(f"waiting: {len(report.waiters)}", file=out)
        _table(rows, out)
    if report.keys:
        seen = {h.lock.byte for h in report.holders}
        states = [f"{_shown(key)} ({_state(report, offset, seen)})" for key, offset in report.keys]
        print(f"keys asked about: {', '.join(states)}", file=out)
    if report.uninspected:
        shown = ", ".join(
            f"{u.process.pid} ({os.path.basename(u.process.command[0])})"
            for u in report.uninspected[:10]
        )
        more = len(report.uninspected) - 10
        if more > 0:
            shown += f" and {more} more"
        print(
            f"not inspected: {len(report.uninspected)} process(es) whose descriptors may not be "
            f"read here (permission denied; run as their user, or as root, to see their locks): "
            f"{shown}",
            file=out,
        )
    if report.holders or report.waiters:
        print(
            "PROCESS AGE: how long the process has run. The kernel does not record when a lock "
            "was taken: it was taken at some moment since the process started.",
            file=out,
        )
