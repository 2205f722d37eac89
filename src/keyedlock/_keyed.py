"""KeyedLock: one lock per key, for threads, asyncio and trio at once."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Hashable
from types import TracebackType
from typing import Any, Final, TypeVar, final, overload

from ._core._keytable import ABORTED, GRANTED, Hold, KeyTable, reacquire_error
from ._errors import Aborted, LockTimeout
from ._keys import Decorator, KeySpec, key_function
from ._runtime._asyncio import wait_asyncio
from ._runtime._detect import (
    ASYNCIO,
    async_runtime,
    blocking_call_error,
    check_can_block,
    current_task,
    get_ident,
    running_loop,
    sniffio_local,
    sync_owner,
)
from ._runtime._threads import wait_thread
from ._validate import OnError, check_key, check_max_waiters, check_on_error, check_timeout

__all__ = ["KeyedLock", "LockContext", "klock"]

R = TypeVar("R")

_NEW: Final = 0
_ENTERED: Final = 1
_DONE: Final = 2


def _timeout_error(key: Hashable, timeout: float | None) -> LockTimeout:
    if timeout == 0:
        return LockTimeout(f"key {key!r} is busy (timeout=0 tries once)")
    return LockTimeout(f"timed out after {timeout} s waiting for key {key!r}")


def _settle(state: int, hold: Hold, key: Hashable) -> bool:
    """Map a finished wait to True (acquired) / False (timed out), or raise Aborted."""
    if state == GRANTED:
        return True
    if state == ABORTED:
        raise Aborted(
            f"the wait for key {key!r} was aborted: the holder's work failed "
            "with on_error='stop'"
        ) from hold.cause
    return False


async def _wait_async(
    table: KeyTable, key: Hashable, hold: Hold, timeout: float | None, runtime: int, loop: Any
) -> int:
    if runtime == ASYNCIO:
        return await wait_asyncio(table, key, hold, timeout, loop)
    from ._runtime._trio import wait_trio

    return await wait_trio(table, key, hold, timeout)


@final
class LockContext(Hold):
    """The context manager returned by ``klock(key, timeout=...)``.

    Use it once, with ``with`` in a thread or ``async with`` in an asyncio or
    trio task. It releases only its own hold: if that hold was released by
    someone else (``klock.release(key)``), exiting raises RuntimeError and
    leaves the key's current holder alone.
    """

    __slots__ = ("_key", "_lock", "_phase", "_timeout")

    def __init__(self, lock: KeyedLock, key: Hashable, timeout: float | None) -> None:
        self.waiters = None
        self._lock = lock
        self._key = key
        self._timeout = timeout
        self._phase = _NEW

    def __repr__(self) -> str:
        phase = ("new", "entered", "exited")[self._phase]
        return f"<LockContext key={self._key!r} {phase}>"

    def _start(self) -> None:
        if self._phase != _NEW:
            raise RuntimeError(
                "this klock(key) context was already used; call klock(key) again for a new one"
            )
        self._phase = _ENTERED

    # -- threads -----------------------------------------------------------

    def __enter__(self) -> None:
        self._start()
        if running_loop() is not None or sniffio_local.name is not None:
            raise blocking_call_error("`with klock(key)`")
        self.owner = get_ident()
        table = self._lock._table
        key = self._key
        holder = table.holds.setdefault(key, self)
        if holder is self:
            return
        if holder.owner == self.owner:
            raise reacquire_error(key)
        timeout = self._timeout
        if timeout == 0 or not _settle(wait_thread(table, key, self, timeout), self, key):
            raise _timeout_error(key, timeout)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish()

    # -- asyncio and trio --------------------------------------------------

    async def __aenter__(self) -> None:
        self._start()
        loop = running_loop()
        task = current_task(loop) if loop is not None else None
        runtime = ASYNCIO
        if task is None:
            runtime, task = async_runtime(loop)
        self.owner = task
        table = self._lock._table
        key = self._key
        holder = table.holds.setdefault(key, self)
        if holder is self:
            return
        if holder.owner == task:
            raise reacquire_error(key)
        timeout = self._timeout
        if timeout == 0 or not _settle(
            await _wait_async(table, key, self, timeout, runtime, loop), self, key
        ):
            raise _timeout_error(key, timeout)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish()

    # -- shared ------------------------------------------------------------

    def _finish(self, abort: BaseException | None = None) -> None:
        if self._phase != _ENTERED:
            raise RuntimeError(
                "exit of a klock(key) context that is not entered (exited twice, or never entered)"
            )
        self._phase = _DONE
        self._lock._table.release(self._key, self, abort)


class KeyedLock:
    """A lock per key: work for one key runs one at a time, in arrival order.

    Different keys never wait for each other, and a key that nobody holds or
    waits for takes no memory. One object serves every runtime at once::

        klock = KeyedLock()

        with klock("user:42"):            # in a thread
            ...

        async with klock("user:42"):      # in an asyncio or trio task
            ...

    The two exclude each other: a thread, an asyncio task (on any loop, in any
    thread) and a trio task asking for the same key queue behind one another,
    first come, first served, and the key is handed directly to the next
    waiter on release.

    Compared with :class:`threading.Lock`: ``release(key)`` may be called by
    any thread or task (not only the holder); but a blocking re-acquire of a
    key the same owner already holds raises RuntimeError instead of
    deadlocking. The owner is the current asyncio or trio task when called in
    one, otherwise the current thread.

    Args:
        max_waiters: how many callers may queue on one key (None: unbounded;
            0: never queue). A blocking acquire that would exceed it raises
            :class:`QueueFull` at once.
    """

    __slots__ = ("__weakref__", "_table")

    def __init__(self, *, max_waiters: int | None = None) -> None:
        self._table = KeyTable(check_max_waiters(max_waiters))

    @property
    def max_waiters(self) -> int | None:
        """The per-key bound on queued callers (None: unbounded)."""
        return self._table.max_waiters

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} keys={len(self._table)} "
            f"max_waiters={self._table.max_waiters}>"
        )

    # -- the context manager -----------------------------------------------

    def __call__(self, key: Hashable, *, timeout: float | None = None) -> LockContext:
        """A context manager holding ``key`` for the body of a ``with`` / ``async with``.

        ``timeout`` (seconds; None waits forever, 0 tries once) bounds the
        wait; when it elapses, :class:`LockTimeout` is raised and nothing is
        left queued. A blocking ``with`` inside a running event loop raises
        RuntimeError (use ``async with`` there).
        """
        try:
            hash(key)
        except TypeError:
            check_key(key)
        if timeout is not None:
            timeout = check_timeout(timeout)
        return LockContext(self, key, timeout)

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
        check_key(key)
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking acquire")
            timeout = 0
        else:
            timeout = check_timeout(timeout)
        if timeout == 0:
            owner = sync_owner()
        else:
            check_can_block("a blocking klock.acquire(key)")
            owner = get_ident()
        hold = Hold(owner)
        table = self._table
        holder = table.try_acquire(key, hold)
        if holder is hold:
            return True
        if holder.owner == owner:
            if timeout == 0:
                return False
            raise reacquire_error(key)
        if timeout == 0:
            return False
        return _settle(wait_thread(table, key, hold, timeout), hold, key)

    async def acquire_async(self, key: Hashable, *, timeout: float | None = None) -> bool:
        """Acquire ``key`` from an asyncio or trio task; True if acquired.

        Returns False if ``timeout`` elapses (0 tries once). Cancellation while
        waiting leaves no trace. Release with :meth:`release`.
        """
        check_key(key)
        timeout = check_timeout(timeout)
        loop = running_loop()
        runtime, owner = async_runtime(loop)
        hold = Hold(owner)
        table = self._table
        holder = table.try_acquire(key, hold)
        if holder is hold:
            return True
        if holder.owner == owner:
            if timeout == 0:
                return False
            raise reacquire_error(key)
        if timeout == 0:
            return False
        return _settle(await _wait_async(table, key, hold, timeout, runtime, loop), hold, key)

    def release(self, key: Hashable) -> None:
        """Release ``key``, whoever holds it; RuntimeError if it is not held.

        The key passes directly to its first waiter, if any. Like
        :meth:`threading.Lock.release`, any thread or task may release.
        """
        self._table.release(check_key(key))

    # -- introspection -----------------------------------------------------

    def locked(self, key: Hashable) -> bool:
        """True if someone holds ``key`` (or it was just handed to a waiter)."""
        return self._table.locked(check_key(key))

    def waiters(self, key: Hashable) -> int:
        """How many callers are queued on ``key`` (not counting the holder)."""
        return self._table.waiters(check_key(key))

    def __len__(self) -> int:
        """Number of keys that currently have a holder or a waiter."""
        return len(self._table)

    # -- run a function under a key ----------------------------------------

    @overload
    async def run(  # type: ignore[overload-overlap]
        self,
        key: Hashable,
        fn: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        timeout: float | None = None,
        on_error: OnError = "continue",
        **kwargs: Any,
    ) -> R: ...
    @overload
    async def run(
        self,
        key: Hashable,
        fn: Callable[..., R],
        /,
        *args: Any,
        timeout: float | None = None,
        on_error: OnError = "continue",
        **kwargs: Any,
    ) -> R: ...
    async def run(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        on_error: OnError = "continue",
        **kwargs: Any,
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` (sync or async) while holding ``key``.

        Returns its result. Raises :class:`LockTimeout` if ``timeout``
        elapses first. With ``on_error="stop"``, an exception from ``fn``
        aborts every caller queued on ``key`` at that moment (they raise
        :class:`Aborted`, caused by it); later callers start fresh.
        """
        stop = check_on_error(on_error)
        return await self._run(self(key, timeout=timeout), stop, fn, args, kwargs)

    def run_sync(
        self,
        key: Hashable,
        fn: Callable[..., R],
        /,
        *args: Any,
        timeout: float | None = None,
        on_error: OnError = "continue",
        **kwargs: Any,
    ) -> R:
        """Run the sync ``fn(*args, **kwargs)`` while holding ``key``, in this thread.

        As :meth:`run`, for threads: a blocking call, so RuntimeError inside a
        running event loop.
        """
        stop = check_on_error(on_error)
        return self._run_sync(self(key, timeout=timeout), stop, fn, args, kwargs)

    @staticmethod
    async def _run(
        ctx: LockContext,
        stop: bool,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        await ctx.__aenter__()
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            ctx._finish(exc if stop else None)
            raise
        except BaseException:
            ctx._finish()
            raise
        ctx._finish()
        return result

    @staticmethod
    def _run_sync(
        ctx: LockContext,
        stop: bool,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> R:
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if inspect.iscoroutinefunction(fn):
            raise TypeError(f"run_sync needs a sync function; use `await run(...)` for {fn!r}")
        ctx.__enter__()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            ctx._finish(exc if stop else None)
            raise
        except BaseException:
            ctx._finish()
            raise
        ctx._finish()
        return result

    # -- decorator ---------------------------------------------------------

    def guard(
        self,
        key: KeySpec,
        *,
        timeout: float | None = None,
        on_error: OnError = "continue",
    ) -> Decorator:
        """Decorate a ``def`` or ``async def`` to run while holding a key.

        ``key`` is a ``str.format`` template over the call's bound arguments
        (``"checkout:{user_id}"``) or a callable taking the same arguments and
        returning the key. The wrapped function keeps its signature. A sync
        function is guarded with a blocking acquire (``run_sync``), an async
        one with ``run``.
        """
        stop = check_on_error(on_error)
        timeout = check_timeout(timeout)

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            key_of = key_function(key, fn)
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                    ctx = self(key_of(*args, **kwargs), timeout=timeout)
                    return await self._run(ctx, stop, fn, args, kwargs)

                return guarded_async

            @functools.wraps(fn)
            def guarded(*args: Any, **kwargs: Any) -> Any:
                ctx = self(key_of(*args, **kwargs), timeout=timeout)
                return self._run_sync(ctx, stop, fn, args, kwargs)

            return guarded

        return decorate  # type: ignore[return-value]


#: A ready module-level :class:`KeyedLock` shared by the whole process.
klock: Final = KeyedLock()
