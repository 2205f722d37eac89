"""KeyedLock: one lock per key, for threads, asyncio and trio at once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from time import monotonic
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast, final

from ._core._keytable import ABORTED, GRANTED, IDLE, Hold, KeyTable, outcome_of, reacquire_error
from ._errors import Aborted, LockTimeout
from ._running import RunMixin
from ._runtime import park_async
from ._runtime._asyncio import wait_asyncio
from ._runtime._detect import (
    ASYNCIO,
    async_owner,
    async_runtime,
    asyncio_task,
    blocking_call_error,
    check_can_block,
    get_ident,
    last_loop,
    running_loop,
    sniffio_local,
    sync_owner,
    task_of,
    thread_owners,
)
from ._runtime._threads import wait_thread
from ._scopes._base import WideScope
from ._validate import (
    check_key,
    check_max_waiters,
    check_timeout,
)

__all__ = ["KeyedLock", "LockContext", "klock"]

R = TypeVar("R")

_NEW: Final = 0
_ENTERED: Final = 1
_EXITED: Final = 2


def _timeout_error(key: Hashable, timeout: float | None) -> LockTimeout:
    if timeout == 0:
        return LockTimeout(f"key {key!r} is busy (timeout=0 tries once)")
    return LockTimeout(f"timed out after {timeout} s waiting for key {key!r}")


def _remaining(timeout: float | None, start: float) -> float | None:
    """What is left of ``timeout`` since ``start`` (0 stays 0: try once)."""
    if not timeout:
        return timeout
    return max(0.0, timeout - (monotonic() - start))


def _settle(state: int, hold: Hold, key: Hashable) -> bool:
    """Map a finished wait to True (acquired) / False (timed out), or raise Aborted."""
    if state == GRANTED:
        return True
    if state == ABORTED:
        cause = outcome_of(hold)
        assert isinstance(cause, BaseException)
        raise Aborted(
            f"the wait for key {key!r} was aborted: the holder's work failed with on_error='stop'"
        ) from cause
    return False


class _Ready:
    """An awaitable that is already done: awaiting it returns None at once.

    ``__await__`` is a C-level callable that makes a fresh empty iterator, so
    awaiting it runs no Python frame and creates no coroutine. It is falsy
    (an empty ``__len__``), so that as the result of ``__exit__`` it never
    suppresses an exception.
    """

    __slots__ = ()
    __await__ = ().__iter__
    __len__ = ().__len__


#: What the uncontended paths return when they have nothing better (see LockContext._aenter).
READY: Final[Awaitable[None]] = cast("Awaitable[None]", _Ready())

_REUSE = "this klock(key) context was already used; call klock(key) again for a new one"
_BAD_EXIT = "exit of a klock(key) context that is not entered (exited twice, or never entered)"


class LockContext(Hold):
    """The context manager returned by ``klock(key, timeout=...)``.

    Use it once, with ``with`` in a thread or ``async with`` in an asyncio or
    trio task. It releases only its own hold: if that hold was released by
    someone else (``klock.release(key)``), exiting raises RuntimeError and
    leaves the key's current holder alone.

    The uncontended path is kept short on purpose: one ``dict.setdefault`` to
    acquire, one pass under the table's guard to release, and under asyncio
    and trio no coroutine at all. (This class serves the process scope; a
    lock of a wider scope returns a subclass that also holds the key there.)
    """

    __slots__ = ("_key", "_phase", "_ready", "_table", "_timeout")

    _table: KeyTable
    _key: Hashable
    _timeout: float | None
    _phase: int
    #: What a clean exit returns: READY, or the finished future of the loop it entered on.
    _ready: Awaitable[None]

    def __init__(self) -> None:
        raise TypeError("make a LockContext by calling a keyed lock: klock(key, timeout=...)")

    def __repr__(self) -> str:
        phase = ("new", "entered", "exited")[self._phase]
        return f"<LockContext key={self._key!r} {phase}>"

    # -- threads -----------------------------------------------------------

    def __enter__(self) -> None:
        if self._phase:
            raise RuntimeError(_REUSE)
        self._phase = _ENTERED
        if running_loop() is not None or sniffio_local.name is not None:
            raise blocking_call_error("`with klock(key)`")
        self.owner = thread_owners.token
        try:
            if self._table.holds.setdefault(self._key, self) is self:
                return  # the uncontended fast path
            acquired = self._lock_sync()
        except BaseException:
            self._undo()  # interrupted after taking the key: give it back
            raise
        if not acquired:
            raise _timeout_error(self._key, self._timeout)

    def _lock_sync(self) -> bool:
        """Acquire for ``self.owner``, parking this thread; False on timeout."""
        table = self._table
        key = self._key
        timeout = self._timeout
        holder = table.holds.setdefault(key, self)
        if holder is self:
            return True
        if holder.owner == self.owner and timeout != 0:
            raise reacquire_error(key)
        return timeout != 0 and _settle(wait_thread(table, key, self, timeout), self, key)

    # -- asyncio and trio --------------------------------------------------

    # Both are plain methods returning an awaitable: the uncontended paths do all
    # their work at once and return an awaitable that is already done, without
    # creating a coroutine. Entering under asyncio, that is a finished future of the
    # running loop, kept with the loop in last_loop (awaiting it is a C-level step that
    # never yields; any asyncio helper takes it); otherwise READY.

    def _aenter(self) -> Awaitable[None]:
        if self._phase:
            raise RuntimeError(_REUSE)
        self._phase = _ENTERED
        seen = last_loop[0]  # asyncio_task(), inlined: this is every acquire's path
        if seen is not None and seen[0]._thread_id == get_ident():
            task: object = task_of(seen[0])
            ready: Awaitable[None] = seen[1]  # a finished future of this loop: cheapest of all
        else:
            task = asyncio_task()
            ready = READY
        runtime = ASYNCIO
        if task is None:
            runtime, task = async_runtime(None)
        self.owner = task
        self._ready = ready
        try:
            if self._table.holds.setdefault(self._key, self) is self:
                return ready  # the uncontended fast path
        except BaseException:
            self._undo()
            raise
        return self._lock_async(runtime, True)  # type: ignore[return-value]  # None, or raises

    async def _lock_async(self, runtime: int, raising: bool) -> bool | None:
        """Acquire for ``self.owner`` (a task of ``runtime``), waiting as needed.

        ``acquire_async``: True once acquired, False on timeout. ``async with``
        (``raising``): None once acquired, LockTimeout on timeout. Whatever
        escapes (cancellation, an interrupt, Aborted) leaves nothing held.
        """
        table = self._table
        key = self._key
        timeout = self._timeout
        try:
            if timeout == 0:
                acquired = table.holds.setdefault(key, self) is self  # try once
            else:
                # The adapter queues the hold (or takes a key that just became free), and
                # raises RuntimeError if the same owner already holds the key.
                if runtime == ASYNCIO:
                    task: Any = self.owner  # the asyncio task that waits
                    state = await wait_asyncio(table, key, self, timeout, task.get_loop())
                else:
                    state = await park_async(table, key, self, timeout, runtime, None)
                acquired = state == GRANTED or _settle(state, self, key)
        except BaseException:
            self._undo()
            raise
        if not raising:
            return acquired
        if not acquired:
            raise _timeout_error(key, timeout)
        return None

    # -- leaving -----------------------------------------------------------

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        """``__exit__`` and ``__aexit__`` alike: release is synchronous in every runtime.

        Returns an awaitable that is already done: the one its entry chose (a
        finished future is truthy, but a ``with`` ignores the result of a clean exit),
        or READY, which is falsy, when the body raised: ``with`` never swallows it.
        """
        if self._phase != _ENTERED:
            raise RuntimeError(_BAD_EXIT)
        self._phase = _EXITED
        table = self._table
        key = self._key
        try:
            if self.waiters is None:
                guard = table.guard
                try:
                    guard.acquire()
                    holds = table.holds
                    if self.waiters is None and holds.get(key) is self:
                        del holds[key]
                        return self._ready if exc_type is None else READY  # the fast path
                finally:
                    # One call, and no window after it: if an interrupt stopped acquire()
                    # before it took the guard, the RLock refuses the release.
                    try:  # noqa: SIM105 - suppress() would add a context manager to every exit
                        guard.release()
                    except RuntimeError:
                        pass
            table.release(key, self)  # waiters to hand the key to
        except BaseException:
            self._undo()  # interrupted: never leave the key held
            raise
        return self._ready if exc_type is None else READY

    if TYPE_CHECKING:
        # What type checkers see: a standard (async) context manager.

        async def __aenter__(self) -> None: ...

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None: ...

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None: ...

    else:
        # At run time no coroutine at all: _aenter and _exit return an awaitable
        # directly, and __aexit__ is the very same function as __exit__.
        __aenter__ = _aenter
        __exit__ = __aexit__ = _exit

    def _finish(self, abort: BaseException | None = None) -> None:
        """Exit for ``run``: release this hold, aborting the waiters if ``abort``."""
        if self._phase != _ENTERED:
            raise RuntimeError(_BAD_EXIT)
        self._phase = _EXITED
        try:
            self._release(abort)
        except BaseException:
            self._undo()
            raise

    def _release(self, abort: BaseException | None = None) -> None:
        """Release this hold, handing the key on (or aborting the waiters)."""
        self._table.release(self._key, self, abort)

    def _undo(self) -> None:
        """After an exception (an interrupt) in entering or leaving: release the key if
        this context still holds it, so that nothing is left locked."""
        if self._table.holds.get(self._key) is self:
            self._release()


@final
class _LocalLockContext(LockContext):
    """The :class:`LockContext` of the process scope, as :class:`KeyedLock` makes it.

    It keeps object's own ``__init__`` (instead of LockContext's, which
    refuses), so the lock builds it by calling the class, which runs no
    Python frame and builds no argument tuple (``object.__new__(cls)`` builds
    two), and then fills in every slot. :class:`_WideLockContext` does the same.
    """

    __slots__ = ()

    if not TYPE_CHECKING:
        __init__ = object.__init__


class _WideLockContext(LockContext):
    """A :class:`LockContext` whose key is also held in a scope wider than the process.

    The key is taken here first (so one caller per process talks to the wide
    scope at a time, in FIFO order), then in the scope; it is given back there
    first. The uncontended path is one try in the scope that does not wait.
    """

    __slots__ = ("_scope",)

    #: The wide scope (the key is released there first on exit).
    _scope: WideScope

    if not TYPE_CHECKING:
        __init__ = object.__init__  # made by calling the class, as _LocalLockContext

    def __enter__(self) -> None:
        if self._phase:
            raise RuntimeError(_REUSE)
        self._phase = _ENTERED
        if running_loop() is not None or sniffio_local.name is not None:
            raise blocking_call_error("`with klock(key)`")
        self.owner = thread_owners.token
        try:
            if self._table.holds.setdefault(self._key, self) is self and self._scope.try_acquire(
                self._key, self
            ):
                return  # the uncontended fast path: free here and in the wide scope
            acquired = self._lock_sync()
        except BaseException:
            self._undo()
            raise
        if not acquired:
            raise _timeout_error(self._key, self._timeout)

    def _lock_sync(self) -> bool:
        timeout = self._timeout
        start = monotonic() if timeout else 0.0
        if not LockContext._lock_sync(self):
            return False
        return self._then_wide(self._scope.acquire_sync, timeout, start)

    def _aenter(self) -> Awaitable[None]:
        if self._phase:
            raise RuntimeError(_REUSE)
        self._phase = _ENTERED
        runtime, self.owner = async_owner()
        try:
            if self._table.holds.setdefault(self._key, self) is self and self._scope.try_acquire(
                self._key, self
            ):
                return READY
        except BaseException:
            self._undo()
            raise
        return self._lock_async(runtime, True)  # type: ignore[return-value]  # None, or raises

    if not TYPE_CHECKING:
        __aenter__ = _aenter

    async def _lock_async(self, runtime: int, raising: bool) -> bool | None:
        timeout = self._timeout
        start = monotonic() if timeout else 0.0
        acquired = await LockContext._lock_async(self, runtime, False)
        if acquired:
            try:
                acquired = await self._scope.acquire_async(
                    self._key, self, _remaining(timeout, start)
                )
            except BaseException:
                self._undo()
                raise
            if not acquired:
                self._table.release(self._key, self)
        if not raising:
            return acquired
        if not acquired:
            raise _timeout_error(self._key, timeout)
        return None

    def _then_wide(
        self,
        acquire: Callable[[Hashable, Hold, float | None], bool],
        timeout: float | None,
        start: float,
    ) -> bool:
        """Held here: now take the key in the wide scope, or give it back here."""
        try:
            acquired = acquire(self._key, self, _remaining(timeout, start))
        except BaseException:
            self._table.release(self._key, self)
            raise
        if not acquired:
            self._table.release(self._key, self)
        return acquired

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        """As :meth:`LockContext._exit`, releasing the key in the wide scope first."""
        self._finish()
        return READY

    if not TYPE_CHECKING:
        __exit__ = __aexit__ = _exit

    def _release(self, abort: BaseException | None = None) -> None:
        _release_wide(self._table, self._scope, self._key, self)
        self._table.release(self._key, self, abort)

    def _undo(self) -> None:
        table = self._table
        key = self._key
        if table.holds.get(key) is not self:
            return
        if self._scope.holds(self):
            self._scope.release(key, self)
        table.release(key, self)


def _release_wide(
    table: KeyTable, scope: WideScope, local: Hashable, expected: Hold | None
) -> Hold:
    """Release ``local`` in the wide scope, if ``expected`` (or anyone) holds it locally.

    Returns the local holder it was released for: the local release that
    follows is for that hold only, so a concurrent release cannot make it
    release the next holder's.
    """
    holder = table.holds.get(local)
    if holder is None or (expected is not None and holder is not expected):
        table.release(local, expected)  # raises the matching RuntimeError
    assert holder is not None
    scope.release(local, holder)
    return holder


class _LockBase(RunMixin):
    """Everything a keyed lock does, over the local core and an optional wide scope.

    Not for subclassing outside keyedlock: use :class:`KeyedLock` or
    :class:`~keyedlock.FileKeyedLock`.
    """

    __slots__ = ("__weakref__", "_scope", "_table")

    _scope: WideScope | None

    def __init__(self, *, max_waiters: int | None = None, scope: WideScope | None = None) -> None:
        self._table = KeyTable(check_max_waiters(max_waiters))
        self._scope = scope

    def _local(self, key: object) -> Hashable:
        """Validate ``key`` and map it to the key the local core serializes on."""
        scope = self._scope
        if scope is not None:
            return scope.local_key(key)
        try:
            hash(key)
        except TypeError:
            check_key(key)
        return key

    @property
    def max_waiters(self) -> int | None:
        """The per-key bound on queued callers in this process (None: unbounded)."""
        return self._table.max_waiters

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} keys={len(self._table)} max_waiters={self._table.max_waiters}>"
        )

    # -- the context manager -----------------------------------------------

    def __call__(self, key: Hashable, *, timeout: float | None = None) -> LockContext:
        """A context manager holding ``key`` for the body of a ``with`` / ``async with``.

        ``timeout`` (seconds; None waits forever, 0 tries once) bounds the
        wait; when it elapses, :class:`~keyedlock.LockTimeout` is raised and
        nothing is left queued. A blocking ``with`` inside a running event loop
        raises RuntimeError (use ``async with`` there). The object is for one
        use: call ``klock(key)`` again for the next.
        """
        try:
            hash(key)
        except TypeError:
            check_key(key)
        if timeout is not None:
            timeout = check_timeout(timeout)
        # Built without an __init__ frame: this is on every acquire's path.
        ctx = _LocalLockContext()
        ctx.waiters = None
        ctx.state = IDLE
        ctx._table = self._table
        ctx._key = key
        ctx._timeout = timeout
        ctx._phase = _NEW
        ctx._ready = READY
        return ctx

    # -- explicit acquire / release ----------------------------------------

    def acquire(
        self, key: Hashable, *, blocking: bool = True, timeout: float | None = None
    ) -> bool:
        """Acquire ``key``, blocking this thread; True if acquired.

        Returns False on timeout, or at once if ``blocking=False`` (or
        ``timeout=0``) and the key is busy. As with :class:`threading.Lock`,
        ``blocking=False`` with a timeout is a ValueError. A blocking call in
        a thread running an event loop raises RuntimeError; a non-blocking one
        is allowed there. Release with :meth:`release`.
        """
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking acquire")
            timeout = 0
        ctx = self(key, timeout=timeout)
        ctx._phase = _ENTERED
        if ctx._timeout == 0:
            ctx.owner = sync_owner()
        else:
            check_can_block("a blocking acquire(key)")
            ctx.owner = thread_owners.token
        try:
            return ctx._lock_sync()
        except BaseException:
            ctx._undo()
            raise

    async def acquire_async(self, key: Hashable, *, timeout: float | None = None) -> bool:
        """Acquire ``key`` from an asyncio or trio task; True if acquired.

        Returns False if ``timeout`` elapses (0 tries once). Cancellation while
        waiting leaves no trace. Release with :meth:`release`.
        """
        ctx = self(key, timeout=timeout)
        ctx._phase = _ENTERED
        runtime, ctx.owner = async_owner()
        return bool(await ctx._lock_async(runtime, False))

    def release(self, key: Hashable) -> None:
        """Release ``key``, whoever holds it; RuntimeError if it is not held.

        The key passes directly to its first waiter, if any. Like
        :meth:`threading.Lock.release`, any thread or task may release.
        """
        local = self._local(key)
        holder = None
        if self._scope is not None:
            holder = _release_wide(self._table, self._scope, local, None)
        self._table.release(local, holder)

    # -- introspection -----------------------------------------------------

    def locked(self, key: Hashable) -> bool:
        """True if someone holds ``key`` (or it was just handed to a waiter)."""
        local = self._local(key)
        if self._table.locked(local):
            return True
        return self._scope is not None and self._scope.locked(local)

    def waiters(self, key: Hashable) -> int:
        """How many callers of this process are queued on ``key`` (not the holder)."""
        return self._table.waiters(self._local(key))

    def __len__(self) -> int:
        """Number of keys with a holder or a waiter in this process."""
        return len(self._table)


class _WideLockBase(_LockBase):
    """A keyed lock whose keys are also held in a scope wider than the process."""

    __slots__ = ()

    _scope: WideScope

    def __init__(self, scope: WideScope, *, max_waiters: int | None = None) -> None:
        super().__init__(max_waiters=max_waiters, scope=scope)

    def __call__(self, key: Hashable, *, timeout: float | None = None) -> LockContext:
        """A context manager holding ``key`` for the body of a ``with`` / ``async with``.

        ``timeout`` (seconds; None waits forever, 0 tries once) bounds the
        whole wait, here and in the wide scope; when it elapses,
        :class:`~keyedlock.LockTimeout` is raised and nothing is left queued
        or held. A blocking ``with`` inside a running event loop raises
        RuntimeError (use ``async with`` there). The object is for one use.
        """
        scope = self._scope
        local = scope.local_key(key)
        if timeout is not None:
            timeout = check_timeout(timeout)
        # As in _LockBase.__call__, written out: a helper would add a frame to every acquire.
        ctx = _WideLockContext()
        ctx.waiters = None
        ctx.state = IDLE
        ctx._table = self._table
        ctx._scope = scope
        ctx._key = local
        ctx._timeout = timeout
        ctx._phase = _NEW
        ctx._ready = READY
        return ctx


@final
class KeyedLock(_LockBase):
    """A lock per key: work for one key runs one at a time, in arrival order.

    Different keys never wait for each other, and a key that nobody holds or
    waits for takes no memory. One object serves every runtime at once::

        klock = KeyedLock()

        with klock("user:42"):            # in a thread
            ...

        async with klock("user:42"):      # in an asyncio or trio task
            ...

    They exclude each other: a thread, an asyncio task (on any loop, in any
    thread) and a trio task asking for the same key queue behind one another,
    first come, first served, and the key is handed directly to the next
    waiter on release. The lock covers this process; see
    :class:`~keyedlock.FileKeyedLock` for every process on the host.

    Compared with :class:`threading.Lock`: ``release(key)`` may be called by
    any thread or task (not only the holder); but a blocking re-acquire of a
    key the same owner already holds raises RuntimeError instead of
    deadlocking. The owner is the current asyncio or trio task when called in
    one, otherwise the current thread.

    Args:
        max_waiters: how many callers may queue on one key (None: unbounded;
            0: never queue). A blocking acquire that would exceed it raises
            :class:`~keyedlock.QueueFull` at once.
    """

    __slots__ = ()

    def __init__(self, *, max_waiters: int | None = None) -> None:
        super().__init__(max_waiters=max_waiters)


#: A ready module-level :class:`KeyedLock` shared by the whole process.
klock: Final = KeyedLock()
