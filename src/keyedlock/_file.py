"""FileKeyedLock: keyed locks shared by every process of one Linux host, through a lock file."""

from __future__ import annotations

import os
import weakref
from collections.abc import Awaitable, Hashable
from types import TracebackType
from typing import TYPE_CHECKING, final

from ._core._keytable import IDLE, KeyTable
from ._keyed import (
    _BAD_EXIT,
    _ENTERED,
    _EXITED,
    _NEW,
    _REUSE,
    READY,
    LockContext,
    _timeout_error,
    _WideLockBase,
    _WideLockContext,
)
from ._runtime._detect import blocking_call_error, running_loop, sniffio_local, thread_owners
from ._scopes._file import (
    _SETLK,
    FileScope,
    KeyOffset,
    _fcntl,
    _offset_of,
    _offsets,
    not_held_error,
)
from ._validate import check_timeout

__all__ = ["FileKeyedLock"]


class _FileLockContext(_WideLockContext):
    """The context of a :class:`FileKeyedLock`: the uncontended ``with`` talks to the kernel itself.

    The same steps as :class:`~keyedlock._keyed._WideLockContext` with
    :meth:`FileScope.try_acquire` and :meth:`FileScope.release` written out
    (they are the two system calls of every acquire and release, and a method
    call each is a sixth of the whole cost). Anything but the plain case (the
    key busy in another process, an abandoned kernel wait of this process, a
    fork that left no descriptor) takes the general path, which tries again.
    """

    __slots__ = ()

    _scope: FileScope
    _key: KeyOffset

    def __enter__(self) -> None:
        if self._phase:
            raise RuntimeError(_REUSE)
        self._phase = _ENTERED
        if running_loop() is not None or sniffio_local.name is not None:
            raise blocking_call_error("`with klock(key)`")
        self.owner = thread_owners.token
        key = self._key
        try:
            if self._table.holds.setdefault(key, self) is self:
                scope = self._scope
                fd = scope._fd
                if fd >= 0 and not scope._pending:  # (-1: a fork child reopens it on first use)
                    try:
                        _fcntl(fd, _SETLK, key)
                    except OSError:
                        pass  # busy (or worse): the general path tries again, and says
                    else:
                        scope._held[self] = fd
                        return  # the uncontended fast path: free here and on the host
            acquired = self._lock_sync()
        except BaseException:
            self._undo()
            raise
        if not acquired:
            raise _timeout_error(key, self._timeout)

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        """As :meth:`LockContext._exit`, unlocking the key's byte first (READY: no future).

        The hold's record in the scope is taken first, in one atomic step: a
        context holds its key in the lock file exactly while that record is
        there, so having taken it proves this context is still the key's
        local holder (no release by another caller came first, and none can
        come now). Without it (never entered, exited already, released by
        someone else, entered before a fork) :meth:`_exit_unheld` says why.
        """
        scope = self._scope
        try:
            fd = scope._held.pop(self, None)
            if fd is None:
                return self._exit_unheld()
            self._phase = _EXITED
            key = self._key
            _fcntl(fd, _SETLK, key.unlock)
            if fd != scope._fd:
                scope._close(fd)  # a private descriptor, from a wait in a helper
            if self.waiters is None:
                table = self._table
                guard = table.guard
                try:
                    guard.acquire()
                    if self.waiters is None:
                        del table.holds[key]  # still ours: the record above says so
                        return READY  # the fast path
                finally:
                    try:  # noqa: SIM105 - as in LockContext._exit: one call, no window
                        guard.release()
                    except RuntimeError:
                        pass
            self._table.release(key, self)  # waiters to hand the key to
        except BaseException:
            self._undo()  # interrupted: never leave the key held
            raise
        return READY

    def _exit_unheld(self) -> Awaitable[None]:
        """Exit of a context that does not hold its key in the lock file: the error why."""
        if self._phase != _ENTERED:
            raise RuntimeError(_BAD_EXIT)
        self._phase = _EXITED
        if self._table.holds.get(self._key) is self:
            # Held here only: entered in the parent process before a fork.
            raise not_held_error(self._key)  # (_undo, in _exit, gives the local key back)
        self._table.release(self._key, self)  # raises: released by another caller
        return READY  # pragma: no cover - release() above always raises here

    if not TYPE_CHECKING:
        __exit__ = __aexit__ = _exit


@final
class FileKeyedLock(_WideLockBase):
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
    key.

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
            ``keyedlock-<uid>/keys.lock`` in ``$XDG_RUNTIME_DIR`` if set and
            usable, else in :func:`tempfile.gettempdir`, in a directory
            private to the user (0700); a directory that is a symbolic link,
            belongs to another user or is open to group or others is refused
            (PermissionError). The file is never deleted: do not delete it
            while processes may use it.
        max_waiters: how many callers of this process may queue on one key
            (None: unbounded; 0: never queue).

    Raises:
        NotImplementedError: the platform lacks open file description locks
            (Linux 3.15+ has them; macOS, the BSDs and Windows do not).
    """

    __slots__ = ("_file",)

    _file: FileScope

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
        *,
        max_waiters: int | None = None,
    ) -> None:
        scope = FileScope(path)
        super().__init__(scope, max_waiters=max_waiters)
        self._file = scope
        _live.add(self)

    def __call__(self, key: Hashable, *, timeout: float | None = None) -> LockContext:
        """A context manager holding ``key`` for the body of a ``with`` / ``async with``.

        ``timeout`` (seconds; None waits forever, 0 tries once) bounds the
        whole wait, in this process and on the host; when it elapses,
        :class:`~keyedlock.LockTimeout` is raised and nothing is left queued
        or held. A blocking ``with`` inside a running event loop raises
        RuntimeError (use ``async with`` there). The object is for one use.
        TypeError for a key other than str, bytes or int.
        """
        # The offset cache looked up here (a str, bytes or int key seen lately: two
        # C-level dict hits, no frame); anything else is validated by _offset_of.
        try:
            local = _offsets[type(key)][key]
        except KeyError:
            local = _offset_of(key)
        if timeout is not None:
            timeout = check_timeout(timeout)
        ctx = _FileLockContext()
        ctx.waiters = None
        ctx.state = IDLE
        ctx._table = self._table
        ctx._scope = self._file
        ctx._key = local
        ctx._timeout = timeout
        ctx._phase = _NEW  # (_ready is left unset: file contexts never read it)
        return ctx

    def acquire(
        self, key: Hashable, *, blocking: bool = True, timeout: float | None = None
    ) -> bool:
        """Acquire ``key``, blocking this thread; True if acquired.

        Returns False on timeout, or at once if ``blocking=False`` (or
        ``timeout=0``) and the key is busy (in this process or another). As
        with :class:`threading.Lock`, ``blocking=False`` with a timeout is a
        ValueError. A blocking call in a thread running an event loop raises
        RuntimeError; a non-blocking one is allowed there. Release with
        :meth:`release`.
        """
        if blocking and timeout is None:
            # The plain blocking acquire of a key seen lately, written out as in
            # _FileLockContext.__enter__; anything else takes the general path.
            try:
                local: KeyOffset | None = _offsets[type(key)][key]
            except KeyError:
                local = None
            if local is not None and running_loop() is None and sniffio_local.name is None:
                ctx = _FileLockContext()
                ctx.waiters = None
                ctx.state = IDLE
                ctx._table = table = self._table
                ctx._scope = scope = self._file
                ctx._key = local
                ctx._timeout = None
                ctx._phase = _ENTERED
                ctx.owner = thread_owners.token
                try:
                    fd = scope._fd
                    if table.holds.setdefault(local, ctx) is ctx and fd >= 0 and not scope._pending:
                        try:
                            _fcntl(fd, _SETLK, local)
                        except OSError:
                            pass  # busy (or worse): _lock_sync tries again, and says
                        else:
                            scope._held[ctx] = fd
                            return True
                    return ctx._lock_sync()
                except BaseException:
                    ctx._undo()
                    raise
        return _WideLockBase.acquire(self, key, blocking=blocking, timeout=timeout)

    def release(self, key: Hashable) -> None:
        """Release ``key``, whoever of this process holds it; RuntimeError if not held.

        The key passes directly to this process's first waiter, if any (else
        the kernel lets another process have it). A caller of this process
        that still waits for another process to free the key does not hold it
        yet: releasing it then raises RuntimeError.
        """
        try:
            local: KeyOffset | None = _offsets[type(key)][key]
        except KeyError:
            local = None
        if local is not None:
            # The common case written out: held here and in the lock file.
            table = self._table
            holder = table.holds.get(local)
            if holder is not None:
                scope = self._file
                fd = scope._held.pop(holder, None)  # one atomic step: only one release gets it
                if fd is not None:
                    # Having taken its record, this call releases that hold and no other.
                    try:
                        _fcntl(fd, _SETLK, local.unlock)
                        if fd != scope._fd:
                            scope._close(fd)
                        table.release(local, holder)  # to the first local waiter, if any
                    except BaseException:
                        if table.holds.get(local) is holder:
                            table.release(local, holder)  # interrupted: never leave it held
                        raise
                    return
        _WideLockBase.release(self, key)  # the general path, and its errors

    @property
    def path(self) -> str:
        """The lock file's absolute path."""
        return self._file.path

    def __repr__(self) -> str:
        return (
            f"<FileKeyedLock path={self._file.path!r} keys={len(self._table)} "
            f"max_waiters={self._table.max_waiters}>"
        )

    def __reduce__(self) -> tuple[object, tuple[str, int | None]]:
        # A copy in another process (multiprocessing with spawn) opens the same file.
        return (_restore, (self._file.path, self._table.max_waiters))


def _restore(path: str, max_waiters: int | None) -> FileKeyedLock:
    return FileKeyedLock(path, max_waiters=max_waiters)


#: Every live FileKeyedLock, to reset their local state in a fork child.
_live: weakref.WeakSet[FileKeyedLock] = weakref.WeakSet()


def _forget_holds_in_child() -> None:
    """After fork: the child's locks start with no holder and no waiter.

    The parent's holders and waiters are not in the child (its threads and
    tasks did not fork with it), and the keys stay the parent's.
    """
    for lock in list(_live):
        lock._table = KeyTable(lock._table.max_waiters)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forget_holds_in_child)
