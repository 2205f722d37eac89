"""``keyedlock holders``: which processes hold (and wait for) which keys of a lock file.

Linux shows every lock in ``/proc``, but not all in one place:

- ``/proc/locks`` lists the locks and the blocked requests of the whole host,
  but for open file description (OFD) locks, the ones
  :class:`~keyedlock.FileKeyedLock` takes, its pid column is -1: an OFD lock
  belongs to an open file, not to a process.
- ``/proc/<pid>/fdinfo/<fd>`` shows the locks held through descriptor
  ``<fd>`` of process ``<pid>`` (``lock:`` lines, Linux 4.1+).

So :func:`scan` looks at every process's descriptors (``/proc/<pid>/fd/*``),
keeps those open on the lock file (the same device and inode) and reads their
``lock:`` lines: each is a byte (or a range) held through that descriptor.
A process whose descriptors it may not read (another user's, without
privileges) is reported as not inspected, never silently skipped.

Waiters: ``/proc/locks`` shows each blocked request on the file (a ``->``
line) with its byte but, for OFD locks, no pid. A task blocked in
``fcntl(fd, F_OFD_SETLKW, ...)`` on a descriptor of the lock file is found
through ``/proc/<pid>/task/<tid>/syscall``, and the byte it asks for in its
``struct flock`` (read through ``/proc/<pid>/mem``); both need the right to
trace the process, so without it a waiter's process stays unknown.

Keys: a byte's offset is a hash of its key (:func:`key_offset`), which cannot
be undone. A byte is named when it is the offset of a key given on the
command line, or of one of the holding (or waiting) process's own arguments
(``keyedlock run deploy -- ...`` holds ``deploy``).

How long: the kernel does not record when a lock was taken, nor when a
descriptor was opened. What is known is when the holding process started:
the key was taken at some moment since. That age is reported, as the
process's age, never as the time the key was held.
"""

from __future__ import annotations

import json
import os
import platform
import pwd
import re
import shlex
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from ._lockfile import key_offset

__all__ = [
    "SCHEMA",
    "Holder",
    "Lock",
    "Process",
    "Report",
    "Uninspected",
    "Waiter",
    "print_json",
    "print_text",
    "scan",
]

#: The version of the JSON output (``schema``); raised when a field changes meaning or goes.
SCHEMA: Final = 1

_PF_KTHREAD: Final = 0x00200000  # /proc/<pid>/stat flags: a kernel thread (no files)
_F_SETLKW: Final = 7
_F_OFD_SETLKW: Final = 38
#: The fcntl system call's number, on the 64-bit architectures whose ``struct flock`` is
#: (short, short, long, long, int) with natural alignment.
_FCNTL_NR: Final = {"x86_64": 72, "aarch64": 25, "riscv64": 25, "loongarch64": 25}
_FLOCK: Final = struct.Struct("hhqqi")
_LOCK_ID: Final = re.compile(r"^[0-9a-f]+:[0-9a-f]+:\d+$")


@dataclass(frozen=True)
class Lock:
    """One lock (or blocked request) on the file: its kind, mode and bytes."""

    kind: str  # OFDLCK (FileKeyedLock), POSIX, FLOCK, ...
    mode: str  # WRITE or READ
    start: int
    end: int | None  # the last byte, inclusive; None: to the end of the file

    @property
    def byte(self) -> int | None:
        """The offset if the lock is on one byte (a key's), else None."""
        return self.start if self.end == self.start else None


@dataclass(frozen=True)
class Process:
    """A process as /proc shows it."""

    pid: int
    uid: int | None
    user: str | None
    command: tuple[str, ...]
    #: When it started (seconds since the epoch), and how long ago; None if unknown.
    started: float | None
    age: float | None


@dataclass
class Holder:
    """A lock held through descriptor ``fd`` of ``process``."""

    lock: Lock
    fd: int
    process: Process
    key: str | None = None
    key_source: str | None = None  # "argument" or "command line"


@dataclass
class Waiter:
    """A blocked request on the file; its process (task ``tid``) when it could be found."""

    lock: Lock | None  # None: a task waits on the file, for bytes it could not read
    process: Process | None
    tid: int | None = None
    fd: int | None = None
    key: str | None = None
    key_source: str | None = None


@dataclass(frozen=True)
class Uninspected:
    """A process whose descriptors could not be read."""

    process: Process
    reason: str


@dataclass
class Report:
    """Everything :func:`scan` found about one lock file."""

    path: str
    exists: bool
    holders: list[Holder] = field(default_factory=list)
    waiters: list[Waiter] = field(default_factory=list)
    #: The keys given on the command line: (key, offset).
    keys: list[tuple[str, int]] = field(default_factory=list)
    uninspected: list[Uninspected] = field(default_factory=list)


# -- reading /proc ----------------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _parse_lock(text: str) -> tuple[Lock, int, str, bool] | None:
    """A line of /proc/locks or a ``lock:`` line of fdinfo: (lock, pid, file id, blocked)."""
    words = text.split()
    blocked = "->" in words
    at = next((i for i, w in enumerate(words) if _LOCK_ID.match(w)), None)
    if at is None or at < 3 or at + 2 >= len(words):
        return None
    kind_at = 2 if blocked else 1
    try:
        start = int(words[at + 1])
        end = None if words[at + 2] == "EOF" else int(words[at + 2])
        pid = int(words[at - 1])
    except (ValueError, IndexError):
        return None
    return Lock(words[kind_at], words[at - 2], start, end), pid, words[at], blocked


class _Host:
    """Facts about the host used to describe processes: boot-relative clock, user names."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.now = time.time()
        self.uptime = float(_read("/proc/uptime").split()[0])
        self.users: dict[int, str | None] = {}

    def user(self, uid: int) -> str | None:
        if uid not in self.users:
            try:
                self.users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self.users[uid] = None
        return self.users[uid]

    def process(self, pid: int) -> tuple[Process, bool] | None:
        """The process ``pid`` and whether it is a kernel thread; None if it is gone."""
        try:
            stat = _read(f"/proc/{pid}/stat")
        except (FileNotFoundError, ProcessLookupError):
            return None
        except OSError:
            stat = ""
        comm = stat[stat.find("(") + 1 : stat.rfind(")")] if stat else "?"
        fields = stat[stat.rfind(")") + 2 :].split() if stat else []
        kernel = bool(fields) and int(fields[6]) & _PF_KTHREAD != 0
        started = age = None
        if len(fields) > 19:
            age = max(0.0, self.uptime - int(fields[19]) / self.ticks)
            started = self.now - age
        try:
            command = tuple(_read(f"/proc/{pid}/cmdline").split("\0"))
        except OSError:
            command = ()
        if command and command[-1] == "":
            command = command[:-1]
        if not command:
            command = (f"[{comm}]",)
        uid: int | None = None
        try:
            for line in _read(f"/proc/{pid}/status").splitlines():
                if line.startswith("Uid:"):
                    uid = int(line.split()[2])  # effective
                    break
        except OSError:
            pass
        user = None if uid is None else self.user(uid)
        return Process(pid, uid, user, command, started, age), kernel


def _pids() -> list[int]:
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def _open_on(pid: int, ident: tuple[int, int]) -> list[int]:
    """The descriptors of ``pid`` open on the file ``ident`` (PermissionError: may not look)."""
    fds = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            st = os.stat(f"/proc/{pid}/fd/{name}")
        except PermissionError:
            raise  # not ours to look at
        except OSError:
            continue  # closed meanwhile
        if (st.st_dev, st.st_ino) == ident:
            fds.append(int(name))
    return sorted(fds)


def _held_through(pid: int, fd: int, lock_id: str) -> list[Lock]:
    try:
        text = _read(f"/proc/{pid}/fdinfo/{fd}")
    except OSError:
        return []  # closed meanwhile
    locks = []
    for line in text.splitlines():
        if line.startswith("lock:"):
            parsed = _parse_lock(line[len("lock:") :])
            if parsed is not None and parsed[2] == lock_id:
                locks.append(parsed[0])
    return locks


def _blocked(lock_id: str) -> list[tuple[Lock, int]]:
    """The blocked requests on the file in /proc/locks: (request, pid; -1 for OFD locks)."""
    found = []
    for line in _read("/proc/locks").splitlines():
        parsed = _parse_lock(line)
        if parsed is not None and parsed[3] and parsed[2] == lock_id:
            found.append((parsed[0], parsed[1]))
    return found


def _waiting_tasks(pid: int, fds: list[int]) -> Iterator[tuple[int, int, Lock | None]]:
    """Tasks of ``pid`` blocked in a lock wait on one of ``fds``: (tid, fd, what it asks)."""
    number = _FCNTL_NR.get(platform.machine())
    if number is None:
        return
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return
    for tid in tids:
        try:
            words = _read(f"/proc/{pid}/task/{tid}/syscall").split()
        except OSError:
            continue  # gone, or not ours to trace
        if len(words) < 4 or not words[0].isdigit() or int(words[0]) != number:
            continue
        fd, command, address = (int(w, 16) for w in words[1:4])
        if fd not in fds or command not in (_F_OFD_SETLKW, _F_SETLKW):
            continue
        kind = "OFDLCK" if command == _F_OFD_SETLKW else "POSIX"
        yield tid, fd, _requested(pid, address, kind)


def _requested(pid: int, address: int, kind: str) -> Lock | None:
    """The ``struct flock`` at ``address`` in ``pid``'s memory, if it may be read."""
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(address)
            raw = mem.read(_FLOCK.size)
    except (OSError, OverflowError, ValueError):
        return None
    if len(raw) != _FLOCK.size:
        return None
    ltype, whence, start, length, _ = _FLOCK.unpack(raw)
    if whence != os.SEEK_SET or start < 0 or length < 0:
        return None
    mode = {0: "READ", 1: "WRITE"}.get(ltype, str(ltype))
    end = None if length == 0 else start + length - 1
    return Lock(kind, mode, start, end)


# -- the scan ---------------------------------------------------------------------------------


def scan(path: str, keys: Iterable[str] = ()) -> Report:
    """Who holds and who waits for which bytes of the lock file ``path``.

    ``keys``: names to look for (their offsets are computed). OSError if
    ``path`` cannot be looked at (a missing file is a report with
    ``exists=False``).
    """
    report = Report(path, exists=True, keys=[(key, key_offset(key)) for key in keys])
    try:
        st = os.stat(path)
    except FileNotFoundError:
        report.exists = False
        return report
    ident = (st.st_dev, st.st_ino)
    lock_id = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    host = _Host()
    me = os.getpid()
    openers: dict[int, tuple[Process, list[int]]] = {}
    for pid in _pids():
        if pid == me:
            continue
        try:
            fds = _open_on(pid, ident)
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except PermissionError:
            fds = None
        if fds == []:
            continue  # the common case: nothing else to read about this process
        described = host.process(pid)
        if described is None or described[1]:
            continue  # gone, or a kernel thread (which has no files)
        process = described[0]
        if fds is None:
            report.uninspected.append(Uninspected(process, "permission denied"))
            continue
        openers[pid] = (process, fds)
        for fd in fds:
            report.holders.extend(
                Holder(lock, fd, process) for lock in _held_through(pid, fd, lock_id)
            )
    _find_waiters(report, lock_id, openers, host)
    _name(report)
    report.holders.sort(key=lambda h: (h.lock.start, h.process.pid, h.fd))
    return report


def _find_waiters(
    report: Report, lock_id: str, openers: dict[int, tuple[Process, list[int]]], host: _Host
) -> None:
    tasks = [
        (process, tid, fd, lock)
        for process, fds in openers.values()
        for tid, fd, lock in _waiting_tasks(process.pid, fds)
    ]
    for request, pid in _blocked(lock_id):
        match = next(
            (
                t
                for t in tasks
                if t[3] is not None and (t[3].start, t[3].end) == (request.start, request.end)
            ),
            None,
        )
        if match is not None:
            tasks.remove(match)
            process, tid, fd, _ = match
            report.waiters.append(Waiter(request, process, tid, fd))
            continue
        owner = None
        if pid > 0:  # a POSIX lock request names its process
            described = host.process(pid)
            owner = None if described is None else described[0]
        report.waiters.append(Waiter(request, owner))
    # Tasks in a lock wait /proc/locks did not show (yet, or no more, or unreadable bytes).
    report.waiters.extend(Waiter(lock, process, tid, fd) for process, tid, fd, lock in tasks)
    report.waiters.sort(
        key=lambda w: (w.lock is None, w.lock.start if w.lock else 0, w.process is None)
    )


def _name(report: Report) -> None:
    """Name each held or requested byte: by a key given, or by its process's arguments."""
    given = {offset: key for key, offset in report.keys}
    entries: list[Holder | Waiter] = [*report.holders, *report.waiters]
    for entry in entries:
        byte = None if entry.lock is None else entry.lock.byte
        if byte is None:
            continue
        if byte in given:
            entry.key, entry.key_source = given[byte], "argument"
        elif entry.process is not None:
            for arg in entry.process.command:
                if key_offset(arg) == byte:
                    entry.key, entry.key_source = arg, "command line"
                    break


# -- output -----------------------------------------------------------------------------------


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
    held = {h.lock.byte for h in report.holders}
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
                "held": offset in held,
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


def print_json(report: Report, out: TextIO) -> None:
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
    cell = "?" if key is None else key
    if lock is not None and (lock.kind, lock.mode) != ("OFDLCK", "WRITE"):
        cell += f" [{lock.kind} {lock.mode}]"
    return cell


def _table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
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
    words = []
    for arg in argv:
        if arg.isprintable():
            words.append(shlex.quote(arg))
        else:
            escaped = arg.encode("unicode_escape").decode("ascii").replace("'", "\\'")
            words.append(f"$'{escaped}'")
    return " ".join(words)


def print_text(report: Report, out: TextIO) -> None:
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
        held = {h.lock.byte for h in report.holders}
        states = [f"{key} ({'held' if offset in held else 'free'})" for key, offset in report.keys]
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
