"""The local-then-wide model: keys serialized in this process first, then held in a wider scope.

:class:`WideBackend` puts a :class:`~keyedlock._scopes.WideScope` (a lock
file; Redis and PostgreSQL next) behind the process scope's table: a caller
first takes the key locally (FIFO among this process's threads and tasks,
direct hand-off), then, as the local holder, in the wide scope; it gives it
back there first, then locally. So one caller per process talks to the wide
scope for a key at a time. ``timeout`` covers both steps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from time import monotonic
from typing import TYPE_CHECKING, Any, Self

from .._core import RELEASED, Hold, KeyTable, complete, queue_full_error
from .._errors import shown_key
from .._ki import internal
from .._runtime import (
    ASYNCIO,
    async_owner,
    blocking_owner,
)
from .._statistics import LockStatistics
from ._context import ENTERED, REUSE, LockContext, timeout_error
from ._contract import WideScope
from ._local import LocalBackend
from ._stats import lock_statistics

__all__ = ["WideBackend", "WideContext", "remaining"]


def remaining(timeout: float | None, start: float) -> float | None:
    """What is left of ``timeout`` since ``start`` (0 stays 0: try once)."""
    if not timeout:
        return timeout
    return max(0.0, timeout - (monotonic() - start))


@internal
class WideContext(LockContext):
    """The context of a local-then-wide lock: the uncontended entry is one local step and one
    try in the wide scope that does not wait; exit is the backend's release."""

    __slots__ = ()

    if not TYPE_CHECKING:
        __init__ = object.__init__  # made by calling the class, as LocalContext

    def __enter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        self._owner = blocking_owner("`with klock(key)`")
        backend: Any = self._backend
        try:
            if self._table.take(self._key, self) is self and backend.scope.try_acquire(  # type: ignore[union-attr]
                self._key, self
            ):
                return self  # the uncontended fast path: free here and in the wide scope
            acquired = backend.acquire(self, self._timeout)
        except BaseException:
            complete(backend.undo, self)
            raise
        if not acquired:
            raise timeout_error(self._key, self._timeout)
        return self

    async def __aenter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        runtime, self._owner = async_owner()
        backend: Any = self._backend
        if runtime == ASYNCIO or backend.fast_acquire:
            try:
                if self._table.take(self._key, self) is self and backend.scope.try_acquire(  # type: ignore[union-attr]
                    self._key, self
                ):
                    return self
            except BaseException:
                complete(backend.undo, self)
                raise
        await self._acquire_async(runtime, True)  # (under trio: with its checkpoints)
        return self


def _pass_on(local_key: Hashable, hold: Hold) -> None:
    """The wide scope gave back the key it granted ``hold``, whose caller can never take it
    (see WideScope.lost): passed on here too, to this process's next caller."""
    table: KeyTable = hold._table  # type: ignore[attr-defined]  # (a context's: see undo)
    table.cancel(local_key, hold)


@internal
class WideBackend(LocalBackend):
    """The :class:`~keyedlock._scopes.LockBackend` of a local table with a wide scope behind."""

    __slots__ = ("scope",)

    context: type[LockContext] = WideContext
    wide = True

    def __init__(
        self, scope: WideScope, max_waiters: int | None, fast_acquire: bool = False
    ) -> None:
        super().__init__(max_waiters, fast_acquire)
        self.scope = scope
        scope.lost = _pass_on
        self._count_first()

    def forked(self) -> None:
        super().forked()
        self._count_first()

    def _count_first(self) -> None:
        """The key's holder here counts as one of its waiters against max_waiters until it
        holds the key in the wide scope too (as in :meth:`waiters`): with max_waiters=N, at
        most N callers of this process wait, here or there."""
        holds = self.scope.holds  # (not this backend: the table would keep it alive)
        self.table.waits_elsewhere = lambda holder: not holds(holder)

    @property
    def map_key(self) -> Callable[[object], Hashable] | None:
        return self.scope.map_key

    @property
    def mapped_keys(self) -> Mapping[type, Mapping[Any, Hashable]]:
        return self.scope.mapped_keys

    # -- a context's key ----------------------------------------------------------

    def acquire(self, ctx: LockContext, timeout: float | None) -> bool:
        key = ctx._key
        if not timeout:  # (None or 0: no deadline to share between the two scopes)
            if ctx._table.take(key, ctx) is not ctx and not LocalBackend.acquire(  # type: ignore[union-attr]
                self, ctx, timeout
            ):
                return False
            wide_timeout = timeout
        else:
            start = monotonic()
            if not LocalBackend.acquire(self, ctx, timeout):
                return False
            wide_timeout = remaining(timeout, start)
        # Held here: now in the wide scope, or given back here. (What raises is undone by
        # the caller: the context's undo.) With max_waiters=0 nobody waits, here or there:
        # one try, then QueueFull. (Otherwise this caller, while it waits there, counts
        # against the bound as the first of the key's waiters here.)
        if wide_timeout != 0 and ctx._table.max_waiters == 0:  # type: ignore[union-attr]
            if self.scope.acquire_sync(key, ctx, 0):
                return True
            raise queue_full_error(key, 0)
        if self.scope.acquire_sync(key, ctx, wide_timeout):
            return True
        ctx._table.release(ctx._key, ctx)  # type: ignore[union-attr]
        return False

    async def acquire_async(self, ctx: LockContext, runtime: int, timeout: float | None) -> bool:
        start = monotonic() if timeout else 0.0
        if not await LocalBackend.acquire_async(self, ctx, runtime, timeout):
            return False
        key = ctx._key
        wide_timeout = remaining(timeout, start)
        if wide_timeout != 0 and ctx._table.max_waiters == 0:  # type: ignore[union-attr]
            if not await self.scope.acquire_async(key, ctx, 0):  # (as in acquire)
                raise queue_full_error(key, 0)
        elif not await self.scope.acquire_async(key, ctx, wide_timeout):
            ctx._table.release(key, ctx)  # type: ignore[union-attr]
            return False
        if ctx._watched and ctx._table is self.table:
            # Taken by acquire_async(), a task's hold that may outlive it: watched from now
            # on, not only once a caller here waits for it (callers of other processes may
            # wait already). Its end is then logged, and this process's callers told.
            self.abandonment.taken(key, ctx)
        return True

    def release(self, ctx: LockContext, abort: BaseException | None) -> None:
        key = ctx._key
        if not self.scope.release(key, ctx):
            table: KeyTable = ctx._table  # type: ignore[assignment]
            if table.holder(key) is ctx:
                # Held here only: entered before a fork (the parent holds it), say.
                raise self.scope.not_held(key)  # (the context's undo gives the local key back)
            table.release(key, ctx)  # raises: released by another caller
        LocalBackend.release(self, ctx, abort)

    def undo(self, ctx: LockContext) -> None:
        self.scope.abandon(ctx._key, ctx)
        LocalBackend.undo(self, ctx)

    # -- any caller -----------------------------------------------------------------

    def release_key(self, key: Hashable, done: list[Any]) -> None:
        table = self.table
        retry = bool(done)
        if retry:
            holder = done[0]
            if holder._state == RELEASED or table.holder(key) is not holder:
                return  # the first try released it
        else:
            holder = table.holder(key)
            if holder is None:
                raise RuntimeError(f"release of key {shown_key(key)}, which is not held")
            done.append(holder)
        if not self.scope.release(key, holder) and not retry:
            # Handed the key here, but still waiting for another process: not held yet.
            raise self.scope.not_held(key)
        table.release(key, holder)

    def locked(self, key: Hashable) -> bool:
        return self.table.locked(key) or self.scope.locked(key)

    def waiters(self, key: Hashable) -> int:
        """This process's callers that wait: the queue here, and the first of them if it
        still waits for the key in the wide scope."""
        holder = self.table.holder(key)
        first = holder is not None and not self.scope.holds(holder)
        return self.table.waiters(key) + first

    def statistics(self, key: Hashable, shown: Hashable) -> LockStatistics:
        holder, waiting = self.table.snapshot(key)
        if holder is not None and not self.scope.holds(holder):
            # This process's first caller still waits for the wide scope, ahead of the others
            # here: the key is held by another process, which this process cannot name, or
            # was just handed to that caller (locked, as locked(key) says: it takes it next).
            stats = lock_statistics(shown, True, None, [holder, *waiting])
        else:
            stats = lock_statistics(shown, holder is not None, holder, waiting)
        if not stats.locked and self.scope.locked(key):
            return replace(stats, locked=True)  # held by another process
        return stats

    def keys(self) -> list[Hashable]:
        user_key = self.scope.user_key
        return [user_key(key) for key in self.table.busy_keys()]

    def user_key(self, key: Hashable) -> Hashable:
        return self.scope.user_key(key)
