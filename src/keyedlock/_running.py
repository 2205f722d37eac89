"""Run a function while holding a key, and the ``guard`` decorator: for every keyed lock.

Written once for any lock whose ``lock(key, timeout=...)`` returns a
:class:`~keyedlock.LockContext` (every scope's). An interrupt anywhere, even
right after the key was taken and before the function starts, leaves
nothing held: the whole run is covered by the context's undo.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Hashable
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, TypeVarTuple, overload

from ._core import complete
from ._keyspec import Decorator, KeySpec, key_function
from ._runtime import check_can_block
from ._scopes import LockContext
from ._validate import (
    OnError,
    check_fn,
    check_not_generator,
    check_on_error,
    check_sync_fn,
    check_timeout,
    is_async_callable,
    is_awaitable,
    returned_coroutine,
)

__all__ = ["RunMixin", "make_guard", "run_async", "run_blocking"]

#: Why ``@guard`` refuses a generator function.
_UNGUARDED_GENERATOR: Final = (
    "the key would be held only while the generator is made, and its body would run "
    "unlocked; hold the key inside it (`with klock(key):` or `async with klock(key):` "
    "around the work), or guard a function that returns the values (a list)"
)

P = ParamSpec("P")
R = TypeVar("R")
Ts = TypeVarTuple("Ts")


async def run_async(
    ctx: LockContext,
    stop: bool,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """``await lock.run(...)``: ``fn`` (sync or async) under the key of ``ctx``.

    A context whose release is a network round trip (the cluster scope's) has an
    ``_finish_async`` coroutine, awaited here so that the task's event loop never blocks
    on it; every other context releases with ``_finish``, synchronously.
    """
    check_fn(fn)
    abort = None
    try:
        await ctx.__aenter__()
        try:
            result = fn(*args, **kwargs)
            if is_awaitable(result):
                result = await result
        except Exception as exc:
            if stop:
                abort = exc
            raise
        finally:
            # In `finally`: even after an interrupt right as fn returns.
            finish_async = getattr(ctx, "_finish_async", None)
            if finish_async is None:
                ctx._finish(abort)
            else:
                await finish_async(abort)  # a release that is a round trip: never blocking
    except BaseException:
        complete(ctx._undo)  # interrupted between taking the key and the inner try: give it back
        raise
    return result


def run_blocking(
    ctx: LockContext,
    stop: bool,
    fn: Callable[..., R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    what: str,
) -> R:
    """``lock.run_sync(...)``: the sync ``fn`` under the key of ``ctx``, in this thread.

    ``what`` names the call in the error raised inside an event loop.
    """
    check_sync_fn(fn, "run_sync", "await run(...)")
    check_can_block(what)
    abort = None
    try:
        ctx.__enter__()
        try:
            result = fn(*args, **kwargs)
            if isinstance(result, CoroutineType):  # (no subclass of it exists)
                raise returned_coroutine(result, "run_sync", "await run(...)")
        except Exception as exc:
            if stop:
                abort = exc
            raise
        finally:
            ctx._finish(abort)
    except BaseException:
        complete(ctx._undo)
        raise
    return result


def make_guard(
    lock: Callable[..., LockContext],
    key: KeySpec,
    timeout: float | None,
    on_error: OnError,
) -> Decorator:
    """The decorator ``lock.guard(key, timeout=..., on_error=...)`` returns.

    Arguments are checked at once; the key spec against the decorated
    function's signature when it is decorated.
    """
    stop = check_on_error(on_error)
    timeout = check_timeout(timeout)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        check_not_generator(fn, "@guard", _UNGUARDED_GENERATOR)
        key_of = key_function(key, fn)
        if is_async_callable(fn):

            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                ctx = lock(key_of(*args, **kwargs), timeout=timeout)
                return await run_async(ctx, stop, fn, args, kwargs)

            return guarded_async

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            ctx = lock(key_of(*args, **kwargs), timeout=timeout)
            return run_blocking(ctx, stop, fn, args, kwargs, "a @guard-ed def")

        return guarded

    return decorate


class RunMixin:
    """``run``, ``run_sync`` and ``guard`` for any keyed lock.

    The lock only has to be callable as ``lock(key, timeout=...)``, returning
    its :class:`~keyedlock.LockContext` (every scope alike).
    """

    __slots__ = ()

    if TYPE_CHECKING:

        def __call__(self, key: Hashable, *, timeout: float | None = None) -> LockContext: ...

    # -- run a function under a key ----------------------------------------

    # Typing: fn's own arguments are checked in every call. Without options, through a
    # ParamSpec (positional and keyword arguments). Python's typing cannot put keyword options
    # next to a ParamSpec's arguments, so a call that passes timeout= or on_error= checks fn's
    # positional arguments (a TypeVarTuple, which can; those overloads need an option, so
    # that a call without one is reported against fn's own signature): fn's keyword
    # arguments then go through functools.partial.
    @overload
    async def run(
        self, key: Hashable, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    @overload
    async def run(
        self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    @overload
    async def run(
        self,
        key: Hashable,
        fn: Callable[[*Ts], Awaitable[R]],
        /,
        *args: *Ts,
        timeout: float | None,
        on_error: OnError = "continue",
    ) -> R: ...
    @overload
    async def run(
        self,
        key: Hashable,
        fn: Callable[[*Ts], R],
        /,
        *args: *Ts,
        timeout: float | None,
        on_error: OnError = "continue",
    ) -> R: ...
    @overload
    async def run(
        self, key: Hashable, fn: Callable[[*Ts], Awaitable[R]], /, *args: *Ts, on_error: OnError
    ) -> R: ...
    @overload
    async def run(
        self, key: Hashable, fn: Callable[[*Ts], R], /, *args: *Ts, on_error: OnError
    ) -> R: ...
    async def run(  # type: ignore[misc]  # (a ParamSpec's kwargs could name timeout)
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

        Returns its result. Raises :class:`~keyedlock.LockTimeout` if
        ``timeout`` elapses first. With ``on_error="stop"``, an exception
        from ``fn`` aborts every caller queued on ``key`` at that moment (they
        raise :class:`~keyedlock.Aborted`, caused by it); later callers start
        fresh. ``"continue"`` (the default) just passes the key on.
        ``timeout`` and ``on_error`` are the lock's: they never reach ``fn``
        (give ``fn`` an argument of one of these names through
        ``functools.partial``).
        """
        stop = check_on_error(on_error)
        # (self.__call__, not self(...): calling the instance with a keyword is a type slot more)
        return await run_async(self.__call__(key, timeout=timeout), stop, fn, args, kwargs)

    @overload
    def run_sync(
        self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    @overload
    def run_sync(
        self,
        key: Hashable,
        fn: Callable[[*Ts], R],
        /,
        *args: *Ts,
        timeout: float | None,
        on_error: OnError = "continue",
    ) -> R: ...
    @overload
    def run_sync(
        self, key: Hashable, fn: Callable[[*Ts], R], /, *args: *Ts, on_error: OnError
    ) -> R: ...
    def run_sync(  # type: ignore[misc]  # (a ParamSpec's kwargs could name timeout)
        self,
        key: Hashable,
        fn: Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        on_error: OnError = "continue",
        **kwargs: Any,
    ) -> Any:
        """Run the sync ``fn(*args, **kwargs)`` in this thread while holding ``key``.

        As :meth:`run`, for threads: it blocks, so it raises RuntimeError in
        a thread running an event loop.
        """
        stop = check_on_error(on_error)
        ctx = self.__call__(key, timeout=timeout)  # (as in run)
        return run_blocking(ctx, stop, fn, args, kwargs, "run_sync(...)")

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
        function is guarded like :meth:`run_sync` (blocking), an async one
        like :meth:`run`. A generator function is refused (TypeError): its body
        runs as it is iterated, after the call returned, without the key.
        """
        return make_guard(self, key, timeout, on_error)
