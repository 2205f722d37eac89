"""The cluster scope as a lock backend: the local-then-wide model over :class:`RedisScope`.

:class:`RedisBackend` is a :class:`~keyedlock._scopes.WideBackend`: this process's callers
queue in its table first (FIFO, any runtime), and only a key's local holder takes it in Redis.
What differs from the lock file:

- the network is slow next to a table step, so the context's entry takes the key locally and
  then asks the server once (a grant or a place in line: one round trip), rather than trying
  first and queueing after; under asyncio and trio it never blocks the loop (asyncio's client,
  or trio's worker threads), so ``__aexit__`` is a coroutine of its own, and so is ``run``'s
  release (:meth:`RedisContext._finish_async`);
- the context carries ``token`` (the fencing token of its grant) and ``lost`` (the lease was
  lost while held), and leaving a context whose lease was lost raises LeaseLost, after
  releasing it here and (compare-and-delete) in Redis;
- :meth:`RedisBackend.waiters` counts the callers queued anywhere: this process's, and those
  of the others (their places in the key's queue in Redis, one per process, and the callers
  each queues behind its place).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..._core import RELEASED, Hold, KeyTable, complete
from ..._errors import LeaseLost, shown_key
from ..._ki import internal
from ..._runtime import (
    async_owner,
    blocking_owner,
)
from ..._statistics import LockStatistics
from .._context import BAD_EXIT, ENTERED, EXITED, REUSE, LockContext, timeout_error
from .._local import LocalBackend
from .._stats import lock_statistics
from .._wide import WideBackend, WideContext
from ._link import Link
from ._lockscope import RedisScope
from ._names import id_owner

__all__ = ["RedisBackend", "RedisContext", "lease_lost"]


def lease_lost(key: Hashable, token: int) -> LeaseLost:
    """The error of leaving a key whose lease was lost while it was held."""
    return LeaseLost(
        f"the lease of key {shown_key(key)} (fencing token {token}) was lost while it "
        "was held: the "
        "process was stopped or cut off from Redis for longer than the lease, or the server "
        "lost its data. The key is released; another caller may have held it meanwhile, "
        f"with a fencing token above {token}"
    )


@internal
class RedisContext(WideContext):
    """The context of a cluster-scope lock: ``lock(key)`` of a ``RedisKeyedLock``.

    Entering it returns the context itself, which carries:

    - ``token``: the fencing token of this grant (0 until the key is held), an int that
      grows strictly with every grant of the key, cluster-wide. Pass it to what the body
      writes, so that a holder whose lease was lost is refused there;
    - ``lost``: True once the lease is known to be lost (the renewal found the key gone, or
      could not reach the server for a whole lease); leaving then raises
      :class:`~keyedlock.LeaseLost`.
    """

    __slots__ = ("lost", "token")

    token: int
    lost: bool

    if not TYPE_CHECKING:

        def __init__(self) -> None:
            self.token = 0
            self.lost = False

    def __repr__(self) -> str:
        phase = ("new", "entered", "exited")[self._phase]
        lost = " lost" if self.lost else ""
        return f"<RedisContext key={shown_key(self._key)} {phase} token={self.token}{lost}>"

    # -- threads -----------------------------------------------------------

    def __enter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        self._owner = blocking_owner("`with klock(key)`")
        backend: RedisBackend = self._backend  # type: ignore[assignment]
        table: KeyTable = self._table  # type: ignore[assignment]
        key = self._key
        try:
            if table.take(key, self) is self and table.max_waiters != 0:
                # Free here: one round trip takes it in Redis, or a place in line there.
                # (With max_waiters=0, the general path: it may not wait there at all.)
                acquired = backend.scope.acquire_sync(key, self, self._timeout)
                if not acquired:
                    table.release(key, self)
            else:
                acquired = backend.acquire(self, self._timeout)
        except BaseException:
            complete(backend.undo, self)
            raise
        if not acquired:
            raise timeout_error(key, self._timeout)
        return self

    # -- asyncio and trio --------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        runtime, self._owner = async_owner()
        await self._acquire_async(runtime, True)  # (under trio: with its checkpoints)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._finish_async()

    async def _finish_async(self, abort: BaseException | None = None) -> None:
        """Release from a task: the round trip is awaited, never blocking the loop."""
        if self._phase != ENTERED:
            raise RuntimeError(BAD_EXIT)
        self._phase = EXITED
        backend: RedisBackend = self._backend  # type: ignore[assignment]
        try:
            await backend.release_async(self, abort)
        except BaseException:
            complete(backend.undo, self)
            raise


@internal
class RedisBackend(WideBackend):
    """The lock backend of :class:`~keyedlock.redis.RedisKeyedLock`."""

    __slots__ = ()

    context: type[LockContext] = RedisContext
    scope: RedisScope

    def __init__(
        self,
        link: Link,
        prefix: str,
        lease: float,
        max_waiters: int | None,
        fast_acquire: bool = False,
    ) -> None:
        super().__init__(RedisScope(link, prefix, lease), max_waiters, fast_acquire)
        self.scope.count_with(self._local_queue)
        self.table.on_queue = self.scope.queue_changed

    def forked(self) -> None:
        super().forked()
        self.table.on_queue = self.scope.queue_changed

    def _local_queue(self, key: Hashable) -> tuple[Hold | None, int]:
        """The key's holder here (None if free), and how many callers wait behind it here."""
        table = self.table
        return table.holder(key), table.waiters(key)

    def release(self, ctx: LockContext, abort: BaseException | None) -> None:
        try:
            WideBackend.release(self, ctx, abort)
        except Exception as exc:
            # (Redis unreachable, say): a lease known lost is still what the caller learns.
            if ctx.lost:  # type: ignore[attr-defined]
                raise lease_lost(ctx._key, ctx.token) from exc  # type: ignore[attr-defined]
            raise
        if ctx.lost:  # type: ignore[attr-defined]
            raise lease_lost(ctx._key, ctx.token)  # type: ignore[attr-defined]

    async def release_async(self, ctx: LockContext, abort: BaseException | None) -> None:
        """As :meth:`release`, from an asyncio or trio task. A cancellation that comes
        while the server releases the key is raised once the release is done here too
        (``abort`` and all), with a lost lease as its ``__cause__``: asyncio delivers a
        cancellation once, so it must not be swallowed for LeaseLost. (Under trio the
        cancellation comes at the next checkpoint, so the exit raises LeaseLost itself.)"""
        key = ctx._key
        try:
            released, cancelled = await self.scope.release_async(key, ctx)
        except Exception as exc:
            if ctx.lost:  # type: ignore[attr-defined]  # (as in release)
                raise lease_lost(key, ctx.token) from exc  # type: ignore[attr-defined]
            raise
        if not released:
            table: KeyTable = ctx._table  # type: ignore[assignment]
            if table.holder(key) is ctx:
                raise self.scope.not_held(key)  # (the context's undo gives the local key back)
            table.release(key, ctx)  # raises: released by another caller
        LocalBackend.release(self, ctx, abort)
        if ctx.lost:  # type: ignore[attr-defined]
            lost = lease_lost(key, ctx.token)  # type: ignore[attr-defined]
            if cancelled is not None:
                raise cancelled from lost
            raise lost
        if cancelled is not None:
            raise cancelled

    def release_key(self, key: Hashable, done: list[Any]) -> None:
        """As the wide model's, and: a release that could not reach the server still
        releases here (the renewal thread gives the key back in Redis, or its lease runs
        out); a hold whose lease was lost raises LeaseLost once released."""
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
        try:
            released = self.scope.release(key, holder)
        except Exception as exc:
            if table.holder(key) is holder:
                table.release(key, holder)
            if holder.lost:  # (as in release)
                raise lease_lost(key, holder.token) from exc
            raise
        if not released and not retry:
            # Handed the key here, but still waiting for another process: not held yet.
            raise self.scope.not_held(key)
        table.release(key, holder)
        if holder.lost:
            raise lease_lost(key, holder.token)

    def waiters(self, key: Hashable) -> int:
        """Callers queued on ``key`` anywhere: this process's (its first one too, while it
        waits for Redis), and the other processes' (a place in Redis per process, and the
        callers queued behind it there)."""
        return WideBackend.waiters(self, key) + self.scope.waiting(key)

    def statistics(self, key: Hashable, shown: Hashable) -> LockStatistics:
        """One round trip: held and waiting cluster-wide (``waiters`` as :meth:`waiters`: by
        runtime, this process's, and a ``"process"`` count for the callers of other
        processes); the holder named if it is in this process, else by its process id and
        host."""
        scope = self.scope
        holder, waiting = self.table.snapshot(key)
        held, places, owner, behind = scope.inspect(key)
        places += behind  # (every caller waiting in another process counts under "process")
        if holder is not None and (
            scope.holds(holder) or (owner is not None and owner == scope.waiter_of(holder))
        ):  # (held here, or handed the key in Redis and about to take it here)
            return lock_statistics(shown, True, holder, waiting, places)
        if holder is not None:
            # This process's first caller waits in Redis, ahead of the others here (its place
            # there, if it has one yet, is not among the places counted).
            stats = lock_statistics(shown, held, None, [holder, *waiting], places)
        else:
            stats = lock_statistics(shown, held, None, waiting, places)
        if held:
            stats = replace(stats, holder=id_owner(owner))
        return stats
