"""The lock-file scope as a lock backend, with its uncontended ``with`` written out.

:class:`FileBackend` is the local-then-wide backend over a
:class:`~._scope.FileScope`. Its context, :class:`FileContext`, makes the
two system calls of an uncontended ``with`` (lock and unlock the key's
byte) from the context itself: a method call each is a sixth of the whole
cost. Anything but the plain case (the key busy in another process, an
abandoned kernel wait of this process, a fork child that has not reopened
the file yet) takes the backend's general path, which tries again.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..._core import KeyTable, complete
from ..._errors import shown_key
from ..._ki import internal
from ..._runtime import READY, blocking_call_error, running_loop, sniffio_local, thread_owners
from .._context import BAD_EXIT, ENTERED, EXITED, REUSE, LockContext, timeout_error
from .._wide import WideBackend, WideContext
from ._keys import SETLK, KeyOffset, fcntl_call
from ._scope import DEFAULT_MAX_THREADS, FileScope

__all__ = ["FileBackend", "FileContext"]


@internal
class FileContext(WideContext):
    """The context of a lock-file lock (see the module docstring)."""

    __slots__ = ()

    _backend: FileBackend
    _key: KeyOffset
    _table: KeyTable

    def __enter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        # blocking_owner(), written out: this is every acquire's path.
        if running_loop() is not None or sniffio_local.name is not None:
            raise blocking_call_error("`with klock(key)`")
        self._owner = thread_owners.token
        key = self._key
        backend = self._backend
        try:
            take = self._table.take  # (a slot's callable: a generic lookup if called as a method)
            if take(key, self) is self:
                scope = backend.scope
                fd = scope.fd
                if fd >= 0 and not scope.pending:  # (-1: a fork child reopens it on first use)
                    held = scope.held
                    held[self] = ~fd  # recorded first, in progress: see FileScope
                    try:
                        fcntl_call(fd, SETLK, key)
                    except OSError:
                        del held[self]  # busy (or worse): the general path tries again, and says
                    else:
                        held[self] = fd
                        return self  # the uncontended fast path: free here and on the host
            acquired = backend.acquire(self, self._timeout)
        except BaseException:
            complete(backend.undo, self)
            raise
        if not acquired:
            raise timeout_error(key, self._timeout)
        return self

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        """Unlock the key's byte, then release the key here (READY: no future).

        The hold's record in the scope is taken first, in one step: a context
        holds its key in the lock file exactly while that record is there, so
        having taken it proves this context is still the key's local holder
        (no release by another caller came first, and none can come now).
        """
        if self._phase != ENTERED:
            raise RuntimeError(BAD_EXIT)
        self._phase = EXITED
        backend = self._backend
        scope = backend.scope
        held = scope.held
        try:
            try:
                fd = held[self]  # (one lookup, and no call: no signal here)
            except KeyError:
                fd = -1
            if fd >= 0 and fd == scope.fd:
                try:
                    del held[self]  # the claim (no call since the read: nothing can split them)
                except KeyError:  # (free-threaded builds) a release(key) took it first
                    pass
                else:
                    fcntl_call(fd, SETLK, self._key.unlock)
                    self._table.leave(self._key, self)
                    return READY
            backend.release(self, None)  # the waits' descriptor, or no record: it says why
        except BaseException:
            complete(backend.undo, self)  # interrupted: never leave the key held
            raise
        return READY

    if not TYPE_CHECKING:
        __exit__ = __aexit__ = _exit


@internal
class FileBackend(WideBackend):
    """The lock backend of :class:`~keyedlock.FileKeyedLock`."""

    __slots__ = ()

    context: type[LockContext] = FileContext
    scope: FileScope

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None,
        max_waiters: int | None,
        fast_acquire: bool = False,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        super().__init__(FileScope(path, max_threads), max_waiters, fast_acquire)

    def acquire(self, ctx: LockContext, timeout: float | None) -> bool:
        # FileContext.__enter__'s uncontended path, written out for acquire(): a key free
        # here and on the host is one dictionary step and one system call, no other frame.
        key: KeyOffset = ctx._key  # type: ignore[assignment]
        take = ctx._table.take  # type: ignore[union-attr]  # (a slot's callable: see __enter__)
        if take(key, ctx) is ctx:
            scope = self.scope
            fd = scope.fd
            if fd >= 0 and not scope.pending:
                held = scope.held
                held[ctx] = ~fd  # recorded first, in progress: see FileScope
                try:
                    fcntl_call(fd, SETLK, key)
                except OSError:
                    del held[ctx]  # busy (or worse): the general path tries again, and says
                else:
                    held[ctx] = fd
                    return True
        return WideBackend.acquire(self, ctx, timeout)

    def release_key(self, key: Hashable, done: list[Any]) -> None:
        if done:
            WideBackend.release_key(self, key, done)  # a second try, after an interrupt
            return
        table = self.table
        holder_of = table.holder  # (a slot's callable: see FileContext.__enter__)
        holder = holder_of(key)
        if holder is None:
            raise RuntimeError(f"release of key {shown_key(key)}, which is not held")
        done.append(holder)
        # FileScope.release, written out (every release(key)): claim the hold's record,
        # then unlock its byte; no record: still waiting for another process.
        scope = self.scope
        held = scope.held
        try:
            fd = held[holder]
            if fd < 0:
                raise scope.not_held(key)
            del held[holder]  # the claim: of two releases of one hold, one gets here
        except KeyError:
            raise scope.not_held(key) from None
        fcntl_call(fd, SETLK, key.unlock)  # type: ignore[attr-defined]  # a KeyOffset
        table.leave(key, holder)  # (the holder's own release: one guard pass if nobody waits)
