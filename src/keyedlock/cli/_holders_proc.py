"""Reading ``/proc`` for ``keyedlock holders``: locks, processes, descriptors, waiting tasks.

Linux shows every lock in ``/proc``, but not all in one place:

- ``/proc/locks`` lists the locks and the blocked requests of the whole host,
  but for open file description (OFD) locks, the ones
  :class:`~keyedlock.FileKeyedLock` takes, its pid column is -1: an OFD lock
  belongs to an open file, not to a process.
- ``/proc/<pid>/fdinfo/<fd>`` shows the locks held through descriptor
  ``<fd>`` of process ``<pid>`` (``lock:`` lines, Linux 4.1+).

So the descriptors of a process open on the lock file are found through
``/proc/<pid>/fd/*`` (the same device and inode: :func:`open_on`) and their
``lock:`` lines read (:func:`held_through`). Reading another user's
descriptors needs privileges: :func:`open_on` raises PermissionError then.

Waiters: ``/proc/locks`` shows each blocked request on the file (a ``->``
line) with its byte but, for OFD locks, no pid (:func:`blocked_requests`). A
task blocked in ``fcntl(fd, F_OFD_SETLKW, ...)`` on a descriptor of the lock
file is found through ``/proc/<pid>/task/<tid>/syscall``, and the byte it asks
for in its ``struct flock`` (read through ``/proc/<pid>/mem``):
:func:`waiting_tasks`. Both need the right to trace the process, so without
it a waiter's process stays unknown.

:class:`Host` describes a process (:class:`Process`): its command line, user
and age. The kernel does not record when a lock was taken, nor when a
descriptor was opened; what is known is when the process started.
"""

from __future__ import annotations

import os
import platform
import re
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Host",
    "Lock",
    "Process",
    "blocked_requests",
    "file_id",
    "held_bytes",
    "held_through",
    "open_on",
    "process_ids",
    "waiting_tasks",
]

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


class Host:
    """Facts about the host used to describe processes: boot-relative clock, user names."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.now = time.time()
        self.uptime = float(_read("/proc/uptime").split()[0])
        self.users: dict[int, str | None] = {}

    def user(self, uid: int) -> str | None:
        """The name of user ``uid``; None if it has none."""
        if uid not in self.users:
            import pwd  # (here: POSIX only, and the command line must start anywhere)

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


def file_id(st: os.stat_result) -> str:
    """The file ``st`` as /proc/locks and fdinfo name it: ``major:minor:inode``."""
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"


def process_ids() -> list[int]:
    """The pids of the processes running now, in order."""
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit())


def open_on(pid: int, ident: tuple[int, int]) -> list[int]:
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


def held_through(pid: int, fd: int, lock_id: str) -> list[Lock]:
    """The locks on the file ``lock_id`` held through descriptor ``fd`` of ``pid``."""
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


def held_bytes(lock_id: str) -> set[int]:
    """The one-byte locks held on the file, as /proc/locks (readable by anyone) shows them:
    a key is held even when its holder's process cannot be inspected."""
    held = set()
    for line in _read("/proc/locks").splitlines():
        parsed = _parse_lock(line)
        if parsed is not None and not parsed[3] and parsed[2] == lock_id:
            byte = parsed[0].byte
            if byte is not None:
                held.add(byte)
    return held


def blocked_requests(lock_id: str) -> list[tuple[Lock, int]]:
    """The blocked requests on the file in /proc/locks: (request, pid; -1 for OFD locks)."""
    found = []
    for line in _read("/proc/locks").splitlines():
        parsed = _parse_lock(line)
        if parsed is not None and parsed[3] and parsed[2] == lock_id:
            found.append((parsed[0], parsed[1]))
    return found


def waiting_tasks(pid: int, fds: list[int]) -> Iterator[tuple[int, int, Lock | None]]:
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
