"""``keyedlock holders``: which processes hold (and wait for) which keys of a lock file.

:func:`scan` looks at every process's descriptors, keeps those open on the
lock file and reads the locks held through them; then it finds the blocked
requests on the file and, where it may, the task waiting for each. The
reading of ``/proc`` (and what Linux does and does not show there) is in
``_holders_proc``; the table and the JSON printed from the :class:`Report`
are in ``_holders_format``.

A process whose descriptors may not be read (another user's, without
privileges) is reported as not inspected, never silently skipped.

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

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._holders_proc import (
    Host,
    Lock,
    Process,
    blocked_requests,
    file_id,
    held_bytes,
    held_through,
    open_on,
    process_ids,
    waiting_tasks,
)
from ._lockfile import key_offset

__all__ = ["Holder", "Report", "Uninspected", "Waiter", "scan"]


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
    #: The bytes /proc/locks shows held (by inspected holders or not).
    locked: set[int] = field(default_factory=set)

    def held(self, offset: int) -> bool:
        """True if the key at ``offset`` is held, whether or not its holder was inspected."""
        return offset in self.locked or any(h.lock.byte == offset for h in self.holders)


def scan(path: str, keys: Iterable[str] = (), *, include_self: bool = False) -> Report:
    """Who holds and who waits for which bytes of the lock file ``path``.

    ``keys``: names to look for (their offsets are computed). ``include_self``:
    this process's locks too (the command leaves itself out). OSError if
    ``path`` cannot be looked at (a missing file is a report with
    ``exists=False``).
    """
    report = Report(path, exists=True, keys=[(key, key_offset(key)) for key in keys])
    try:
        st = os.stat(path)
    except FileNotFoundError:
        report.exists = False
        return report
    if stat.S_ISDIR(st.st_mode):  # (nothing to lock there: FileKeyedLock refuses it too)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    ident = (st.st_dev, st.st_ino)
    lock_id = file_id(st)
    host = Host()
    me = -1 if include_self else os.getpid()
    openers: dict[int, tuple[Process, list[int]]] = {}
    for pid in process_ids():
        if pid == me:
            continue
        try:
            fds = open_on(pid, ident)
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
                Holder(lock, fd, process) for lock in held_through(pid, fd, lock_id)
            )
    report.locked = held_bytes(lock_id)
    _find_waiters(report, lock_id, openers, host)
    _name(report)
    report.holders.sort(key=lambda h: (h.lock.start, h.process.pid, h.fd))
    return report


def _find_waiters(
    report: Report, lock_id: str, openers: dict[int, tuple[Process, list[int]]], host: Host
) -> None:
    """Add the waiters: each blocked request on the file, with the task found waiting for it.

    ``openers``: the processes with descriptors open on the file. A request
    no waiting task matches keeps an unknown process (unless it is a POSIX
    request, whose pid /proc/locks gives); a waiting task no request matches
    is listed too.
    """
    tasks = [
        (process, tid, fd, lock)
        for process, fds in openers.values()
        for tid, fd, lock in waiting_tasks(process.pid, fds)
    ]
    for request, pid in blocked_requests(lock_id):
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
