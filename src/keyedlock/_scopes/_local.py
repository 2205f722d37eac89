"""The process scope: every key lives in this process's :class:`~keyedlock._core.KeyTable`.

:class:`LocalBackend` is the backend of :class:`~keyedlock.KeyedLock`, and
the first half of every local-then-wide backend (:mod:`._wide`).
:class:`LocalContext` writes out its uncontended ``with`` and ``async with``
(one C-level ``setdefault`` to acquire; to release, the core's
:meth:`~keyedlock._core.KeyHold._exit`, one pass under the table's guard;
and under asyncio and trio no coroutine at all), because that is every
acquisition's path; everything else goes through the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Self

from .._core import (
    ABORTED,
    GRANTED,
    RELEASED,
    Hold,
    KeyHold,
    KeyTable,
    complete,
    decided,
    fresh_copy,
    outcome_of,
    reacquire_error,
)
from .._errors import Abandoned, Aborted, shown_key
from .._ki import internal
from .._runtime import (
    ASYNCIO,
    TRIO,
    async_owner,
    blocking_call_error,
    get_ident,
    last_loop,
    load_trio_adapter,
    park_async,
    park_asyncio,
    raise_own,
    running_loop,
    sniffio_local,
    task_of,
    thread_owners,
    trio_adapter,
    trio_lowlevel,
    wait_asyncio,
    wait_thread,
    woken,
)
from .._statistics import LockStatistics
from ._abandon import Abandonment
from ._context import ENTERED, REUSE, LockContext, timeout_error
from ._forking import reset_in_child
from ._stats import lock_statistics

__all__ = ["NO_MAPPED_KEYS", "LocalBackend", "LocalContext", "settle", "watched_table"]

#: The :attr:`~._contract.LockBackend.mapped_keys` of a backend that keeps none.
NO_MAPPED_KEYS: Mapping[type, Mapping[Any, Hashable]] = MappingProxyType({})


def watched_table(max_waiters: int | None, wide: bool = False) -> tuple[KeyTable, Abandonment]:
    """A table whose holders are watched while others wait for them, and what watches them
    (see :mod:`._abandon`; ``wide``: of a local-then-wide scope, whose callers may wait in
    other processes)."""
    table = KeyTable(max_waiters)
    abandonment = Abandonment(table, wide)
    table.on_wait = abandonment.watch
    return table, abandonment


@internal
def settle(state: int, hold: Hold, key: Hashable) -> bool:
    """Map a finished wait to True (acquired) / False (timed out), or raise Aborted (or
    Abandoned)."""
    if state == GRANTED:
        return True
    if state == ABORTED:
        cause = outcome_of(hold)
        assert isinstance(cause, BaseException)
        if isinstance(cause, Abandoned):
            raise fresh_copy(cause)
        raise Aborted(
            f"the wait for key {shown_key(key)} was aborted: the holder's work failed "
            "with on_error='stop'"
        ) from cause
    return False


@internal
class LocalContext(LockContext):
    """The context of a lock whose keys live in this process (see the module docstring)."""

    __slots__ = ()

    _table: KeyTable

    if not TYPE_CHECKING:
        # Made by calling the class: object's own __init__ runs no Python frame and
        # builds no argument tuple (LockContext's refuses, for users).
        __init__ = object.__init__

    def __enter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        # blocking_owner(), written out: this is every acquire's path.
        if running_loop() is not None or sniffio_local.name is not None:
            raise blocking_call_error("`with klock(key)`")
        self._owner = thread_owners.token
        try:
            take = self._table.take  # (a slot's callable: a generic lookup if called as a method)
            if take(self._key, self) is self:
                return self  # the uncontended fast path
            timeout = self._timeout
            if timeout == 0:
                acquired = self._backend.acquire(self, timeout)
            else:
                # LocalBackend.acquire, written out: the wait queues the hold (or takes a key
                # that just became free), and raises RuntimeError if this owner holds it.
                state = wait_thread(self._table, self._key, self, timeout)
                if state == GRANTED:
                    return self
                acquired = settle(state, self, self._key)
        except BaseException:
            complete(self._backend.undo, self)  # interrupted after taking the key: give it back
            raise
        if not acquired:
            raise timeout_error(self._key, self._timeout)
        return self

    async def __aenter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        # asyncio_task(), written out: this is every acquire's path. Under asyncio the
        # exit returns a finished future of the running loop (awaiting it is a C-level
        # step that never yields), kept with the loop in last_loop.
        seen = last_loop[0]
        if seen is not None and seen[0]._thread_id == get_ident():
            task: Any = task_of(seen[0])
            self._ready = seen[1]
        else:
            task = None
        owner: Any
        if task is None:  # not a task of the loop seen last: a trio task, or another loop's
            lowlevel = trio_lowlevel[0]  # (trio's, once seen)
            try:  # trio first: no asyncio loop to look for (a system call on 3.11)
                owner = None if lowlevel is None else lowlevel.current_task()
            except RuntimeError:  # not in a trio task
                owner = None
            if owner is not None:
                runtime = TRIO
            else:
                runtime, owner = async_owner()  # RuntimeError outside both
                if runtime == ASYNCIO:
                    task = owner
            self._owner = owner
        if task is not None:
            self._owner = owner = task
            runtime = ASYNCIO
            try:
                take = self._table.take  # (a slot's callable: see __enter__)
                if take(self._key, self) is self:
                    return self  # the uncontended fast path
            except BaseException:
                complete(self._backend.undo, self)
                raise
        timeout = self._timeout
        if timeout == 0:
            await self._acquire_async(runtime, True)
            return self
        # LocalBackend.acquire_async, written out: two coroutines less on every wait.
        table = self._table
        key = self._key
        try:
            if runtime == ASYNCIO and timeout is None:
                # wait_asyncio with no deadline, written out: one coroutine less per wait.
                fut = park_asyncio(table, key, self, owner)
                if fut is None:
                    return self  # the key became free meanwhile
                before = owner.cancelling()
                try:
                    await fut
                except BaseException as exc:
                    if not woken(exc, fut, owner, before):  # the task itself was cancelled
                        table.cancel(key, self)  # (as wait_asyncio; undo below tries again)
                        raise_own(exc, owner)
                        raise
                state = self._state
                if state != GRANTED:
                    state = decided(self)
            elif runtime == ASYNCIO:
                state = await wait_asyncio(table, key, self, timeout, owner.get_loop())
            else:  # park_async, written out for trio: a frame less on every trio acquire
                adapter = trio_adapter[0] or load_trio_adapter()
                fast: bool = self._backend.fast_acquire
                state = await adapter.wait_trio(table, key, self, timeout, not fast)
        except BaseException:
            complete(self._backend.undo, self)
            raise
        if state != GRANTED and not settle(state, self, key):
            raise timeout_error(key, timeout)
        return self

    if not TYPE_CHECKING:
        # Leaving is the core's (see KeyHold._exit): a clean exit returns what the entry
        # chose (a finished future is truthy, but a ``with`` ignores the result of a clean
        # exit), an exit whose body raised returns READY, which is falsy.
        __exit__ = __aexit__ = KeyHold._exit


@internal
class LocalBackend:
    """The :class:`~keyedlock._scopes.LockBackend` of the process scope."""

    __slots__ = ("__weakref__", "abandonment", "fast_acquire", "table")

    context: type[LockContext] = LocalContext
    #: True for a local-then-wide backend (see :func:`watched_table`).
    wide: bool = False

    def __init__(self, max_waiters: int | None, fast_acquire: bool = False) -> None:
        self.table, self.abandonment = watched_table(max_waiters, self.wide)
        self.fast_acquire = fast_acquire
        reset_in_child(self)

    def forked(self) -> None:
        """In a fork child: no holder and no waiter (the parent's threads and tasks did not
        fork with it), and the old table usable by the contexts entered before the fork."""
        old = self.table
        old.forked()
        self.table, self.abandonment = watched_table(old.max_waiters, self.wide)

    @property
    def map_key(self) -> Callable[[object], Hashable] | None:
        """None: any hashable key is taken as it is."""
        return None

    @property
    def mapped_keys(self) -> Mapping[type, Mapping[Any, Hashable]]:
        return NO_MAPPED_KEYS

    @property
    def max_waiters(self) -> int | None:
        return self.table.max_waiters

    # -- a context's key ----------------------------------------------------------

    # (Through the context's own table: the table it acquired in, even if a fork child's
    # backend has a new one since.)

    def acquire(self, ctx: LockContext, timeout: float | None) -> bool:
        table: KeyTable = ctx._table  # type: ignore[assignment]
        key = ctx._key
        take = table.take  # (a slot's callable: see LocalContext.__enter__)
        holder = take(key, ctx)
        if holder is ctx:
            return True
        if holder._owner == ctx._owner and timeout != 0:
            raise reacquire_error(key)
        return timeout != 0 and settle(wait_thread(table, key, ctx, timeout), ctx, key)

    async def acquire_async(self, ctx: LockContext, runtime: int, timeout: float | None) -> bool:
        table: KeyTable = ctx._table  # type: ignore[assignment]
        key = ctx._key
        if timeout == 0:  # try once
            if runtime == ASYNCIO:
                return table.take(key, ctx) is ctx
            adapter = trio_adapter[0] or load_trio_adapter()  # (trio's checkpoints:)
            taken: bool = await adapter.try_trio(table, key, ctx, self.fast_acquire)
            return taken
        # The adapter queues the hold (or takes a key that just became free), and raises
        # RuntimeError if the same owner already holds the key.
        owner: Any = ctx._owner
        if runtime == ASYNCIO:
            state = await wait_asyncio(table, key, ctx, timeout, owner.get_loop())
        else:
            checkpoints = not self.fast_acquire
            state = await park_async(table, key, ctx, timeout, runtime, owner, checkpoints)
        return state == GRANTED or settle(state, ctx, key)

    def release(self, ctx: LockContext, abort: BaseException | None) -> None:
        table: KeyTable = ctx._table  # type: ignore[assignment]
        if abort is None:
            table.leave(ctx._key, ctx)
        else:
            table.release(ctx._key, ctx, abort)

    def undo(self, ctx: LockContext) -> None:
        table: KeyTable = ctx._table  # type: ignore[assignment]
        # Held: passed on. Still queued (a wait interrupted as it withdrew): withdrawn.
        table.cancel(ctx._key, ctx)

    # -- any caller -----------------------------------------------------------------

    def release_key(self, key: Hashable, done: list[Any]) -> None:
        table = self.table
        if done:
            holder = done[0]
            if holder._state == RELEASED or table.holder(key) is not holder:
                return  # the first try released it
        else:
            holder_of = table.holder  # (a slot's callable: see LocalContext.__enter__)
            holder = holder_of(key)
            if holder is None:
                raise RuntimeError(f"release of key {shown_key(key)}, which is not held")
            done.append(holder)
        table.release(key, holder)

    def locked(self, key: Hashable) -> bool:
        return self.table.locked(key)

    def waiters(self, key: Hashable) -> int:
        return self.table.waiters(key)

    def busy(self) -> int:
        return len(self.table)

    def statistics(self, key: Hashable, shown: Hashable) -> LockStatistics:
        holder, waiting = self.table.snapshot(key)
        return lock_statistics(shown, holder is not None, holder, waiting)

    def keys(self) -> list[Hashable]:
        return self.table.busy_keys()

    def user_key(self, key: Hashable) -> Hashable:
        return key

    def holds(self, ctx: LockContext) -> bool:
        table: KeyTable = ctx._table  # type: ignore[assignment]
        return table.holder(ctx._key) is ctx

    def still_holds(self, ctx: LockContext) -> bool:
        return self.holds(ctx)  # (this process's table, and its own hold of the wide key)
