"""FileKeyedLock: keyed locks shared by every process of one Linux host, through a lock file."""

from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import replace
from typing import Any

from ._lock import KeyedLock
from ._scopes import FileBackend, key_offset
from ._statistics import LockStatistics, Owner
from ._validate import check_flag, check_max_threads, check_max_waiters

__all__ = ["FileKeyedLock"]


class FileKeyedLock(KeyedLock):
    """A lock per key shared by every process on this host that uses the same lock file.

    It has the whole :class:`~keyedlock.KeyedLock` API (``with`` /
    ``async with lock(key, timeout=...)``, ``acquire``, ``acquire_async``,
    ``release``, ``run``, ``run_sync``, ``guard``, the same errors), and the
    key is held against every process of the host, whether forked, spawned
    or unrelated, as well as against this process's threads and tasks::

        lock = FileKeyedLock()              # or FileKeyedLock("/run/myapp/keys.lock")

        with lock("invoice:42"):            # in a thread
            ...

        async with lock("invoice:42"):      # in an asyncio or trio task
            ...

    Each key is one byte of the lock file, at an offset taken from a stable
    hash of the key, locked with a Linux open file description lock
    (``fcntl.F_OFD_SETLK``). The kernel wakes a waiter as soon as the key is
    free (nothing polls) and frees the keys of a process that dies, even by
    SIGKILL: a crash never leaves a key stuck.

    Keys are ``str``, ``bytes`` or ``int``; ``"1"``, ``b"1"`` and ``1`` are
    three different keys; anything else (``bool`` included) raises
    TypeError. Two different keys whose 63-bit hashes collide act as one key
    (they take turns: never less exclusion than asked for). The odds are
    negligible: about n²/2⁶⁴ for n keys in use at once, under 10⁻⁷ even for
    a million.

    Scope of each answer:

    - :meth:`locked` answers for the whole host (any process holding the key).
    - :meth:`waiters`, ``len()``, ``max_waiters`` / :class:`~keyedlock.QueueFull`
      and ``on_error="stop"`` / :class:`~keyedlock.Aborted` see only this
      process's callers.
    - Order: callers of this process are served first come, first served, one
      at a time (only the first of them waits in the kernel). Between
      processes the kernel decides who goes next: no FIFO guarantee.

    Waiting never blocks an event loop: an ``async`` caller that has to wait
    for another process waits in a helper thread (a daemon thread) and stays
    cancellable; a cancelled or timed-out waiter never ends up holding the
    key. A thread with a timeout waits the same way; a thread without one
    waits in the kernel itself.

    Helper threads are capped: each lock waits in at most ``max_threads``
    of them at once. A blocked kernel wait needs a thread of its own, so the
    waits beyond the cap queue (first come, first served) and each starts
    when a helper thread ends its wait. So with a cap of N and N+1 keys held
    by other processes, the last key's waiter waits until one of the first N
    waits ends, even if its own key is freed meanwhile. A timeout still
    bounds that wait, and cancellation (or a timeout) withdraws a queued wait
    at once, leaving nothing behind. A wait already in the kernel when its
    waiter gives up keeps its thread until the other process frees the key
    (the next caller of that key takes it over meanwhile). A lock keeps at
    most two descriptors of the lock file open, however many keys it waits
    for or holds.

    ``release(key)`` releases the key for whichever thread or task of this
    process holds it. A caller that was handed the key by this process but
    still waits for another process to free it does not hold it yet: releasing
    it then raises RuntimeError.

    ``fork``: a child process starts holding nothing (even if its parent held
    keys when it forked), and releasing the parent's keys there raises
    RuntimeError; it never drops the parent's locks.

    Args:
        path: the lock file, created if missing (mode 0600); every process
            that shares it shares the keys. None (the default):
            ``/tmp/keyedlock-<uid>/keys.lock``, the same for every process of
            the user whatever its environment, in a directory private to the
            user (0700); a directory that is a symbolic link,
            belongs to another user or is open to group or others is refused
            (PermissionError). The file is never deleted: do not delete it
            while processes may use it.
        max_waiters: how many callers of this process may wait for one key, the one
            waiting in the kernel for another process included (None: unbounded; 0:
            never wait).
        fast_acquire: under trio, take a free key without trio.Lock's
            checkpoints (see :class:`~keyedlock.KeyedLock`).
        warn_after: log a hold of this process still held after this many
            seconds (see :class:`~keyedlock.KeyedLock`).
        max_threads: how many helper threads this lock waits in at most, at
            once, for keys held by other processes (an int >= 1; default
            64). The cap is per lock object, so that the waits of one lock
            never hold back those of another (each library or component with
            a lock of its own gets its own threads); a process's total is
            the sum over the locks that wait at the same time.

    Raises:
        NotImplementedError: the platform lacks open file description locks
            (Linux 3.15+ has them; macOS, the BSDs and Windows do not).
        OSError: ``EMFILE`` (or ``ENFILE``) when even the lock's two
            descriptors cannot be opened: the message names the limit
            reached and says to raise it.
    """

    __slots__ = ()

    _backend: FileBackend

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
        *,
        max_waiters: int | None = None,
        fast_acquire: bool = False,
        warn_after: float | None = None,
        max_threads: int = 64,  # (DEFAULT_MAX_THREADS, written as the reference shows it)
    ) -> None:
        backend = FileBackend(
            path,
            check_max_waiters(max_waiters),
            check_flag(fast_acquire),
            check_max_threads(max_threads),
        )
        self._bind(backend, warn_after)

    @property
    def path(self) -> str:
        """The lock file's absolute path."""
        return self._backend.scope.path

    @property
    def max_threads(self) -> int:
        """The most helper threads this lock waits in at once (see the class docstring)."""
        return self._backend.scope.max_threads

    def __repr__(self) -> str:
        return (
            f"<FileKeyedLock path={self.path!r} keys={len(self)} max_waiters={self.max_waiters} "
            f"max_threads={self.max_threads}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy in another process (multiprocessing with spawn) opens the same file.
        return (
            _restore,
            (self.path, self.max_waiters, self.fast_acquire, self.warn_after, self.max_threads),
        )

    def statistics(self, key: Hashable) -> LockStatistics:
        """As :meth:`KeyedLock.statistics`; for a key held by another process (or by
        another lock of this process on the same file), its holder is that process
        (``runtime="process"``), found in ``/proc`` (an on-demand scan of the processes
        that have the lock file open)."""
        stats = super().statistics(key)
        if stats.locked and stats.holder is None:
            pid = _holder_pid(self.path, key_offset(key))
            return replace(stats, holder=Owner("process", None, pid))
        return stats


def _holder_pid(path: str, offset: int) -> int | None:
    """The process holding byte ``offset`` of the lock file, if /proc tells."""
    from .cli import scan  # (the holders command's reading of /proc)

    try:
        report = scan(path, include_self=True)  # (another lock of this process may hold it)
    except OSError:
        return None
    for holder in report.holders:
        lock = holder.lock
        if lock.start <= offset and (lock.end is None or offset <= lock.end):
            return holder.process.pid
    return None


def _restore(
    path: str,
    max_waiters: int | None,
    fast_acquire: bool = False,
    warn_after: float | None = None,
    max_threads: int = 64,  # (as in __init__)
) -> FileKeyedLock:
    return FileKeyedLock(
        path,
        max_waiters=max_waiters,
        fast_acquire=fast_acquire,
        warn_after=warn_after,
        max_threads=max_threads,
    )
