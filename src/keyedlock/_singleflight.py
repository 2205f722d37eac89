"""SingleFlight: concurrent callers of one key share one in-flight call, over any scope.

:class:`SingleFlight` is written once, over a single-flight backend (see
:mod:`keyedlock._scopes`): the process scope by default, the manager's across
processes. Every caller concludes its part in ``finally``: an interrupt
anywhere, even right after it became the leader, never leaves a call in
flight.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from time import monotonic
from types import CoroutineType
from typing import Any, Final, Generic, ParamSpec, TypeVar, final, overload

from ._core import MISS, complete
from ._errors import follower_copy
from ._frozen import frozen
from ._keyspec import Decorator, KeySpec, key_function
from ._runtime import (
    ASYNCIO,
    FLIGHT_INSTEAD,
    READY,
    async_runtime,
    asyncio_task,
    blocking_call_error,
    get_ident,
    last_loop,
    running_loop,
    sniffio_local,
    task_of,
    thread_owners,
)
from ._scopes import FlightBackend, LocalFlightBackend, Outcome
from ._statistics import FlightStatistics
from ._validate import (
    check_fn,
    check_key,
    check_sync_fn,
    check_ttl,
    is_async_callable,
    is_awaitable,
    returned_coroutine,
)

__all__ = ["Result", "SingleFlight", "flight"]

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


@final
@frozen
@dataclass(frozen=True, slots=True)
class Result(Generic[T]):
    """A single-flight outcome with Go's ``shared`` flag.

    ``shared`` is True if the value went to more than one caller: a follower
    always gets ``shared=True``; the caller that ran the call gets it when at
    least one other caller received the same value; a value reused within
    ``ttl`` is shared too.
    """

    value: T
    shared: bool


class SingleFlight:
    """Concurrent callers asking for one key share one in-flight call.

    The first caller of a key runs ``fn``; callers arriving while it runs wait
    and get its result, or its exception (each a copy of it). Errors are
    never kept: the next call after a failure runs again. Callers may be
    threads (:meth:`do_sync`), asyncio tasks and trio tasks (:meth:`do`), all
    sharing one call. Go's ``singleflight.Group``, for every runtime::

        flight = SingleFlight()

        async def get_token() -> str:
            return await flight.do("token", refresh_token)

    Cancellation of a caller never cancels or fails the others. If the caller
    running the call is cancelled (or interrupted), the earliest remaining
    caller takes over and runs its own ``fn``.

    Args:
        ttl: seconds to reuse a successful result after it completes
            (stampede protection for cache fills); 0 (default) reuses
            nothing. Errors are never reused.
    """

    __slots__ = ("__weakref__", "_backend", "_conclude_async", "_map_key", "_timed")

    _backend: FlightBackend

    def __init__(self, *, ttl: float = 0) -> None:
        self._bind(LocalFlightBackend(check_ttl(ttl)))

    def _bind(self, backend: FlightBackend) -> None:
        """Serve this group from ``backend`` (what the scopes' constructors call)."""
        self._backend = backend
        self._map_key = backend.map_key
        self._timed = False
        # A backend whose conclusion is a round trip (the cluster scope's) also has an
        # awaitable one, for tasks.
        self._conclude_async = getattr(backend, "conclude_async", None)

    def _local(self, key: object) -> Hashable:
        """Validate ``key`` and map it to the backend's key."""
        map_key = self._map_key
        if map_key is not None:
            return map_key(key)
        return check_key(key)

    @property
    def ttl(self) -> float:
        """Seconds a successful result is reused after it completes (0: never)."""
        return self._backend.ttl

    def __repr__(self) -> str:
        return f"<{type(self).__name__} in_flight={len(self)} ttl={self.ttl}>"

    # -- async -------------------------------------------------------------

    # do() and do_ex() are plain methods returning the coroutine of _do(): no coroutine
    # of their own wrapped around it (every caller of a herd pays for each layer).

    @overload
    def do(
        self, key: Hashable, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]: ...
    @overload
    def do(
        self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, R]: ...
    def do(
        self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Any]:
        """Run ``fn(*args, **kwargs)`` once for every concurrent caller of ``key``.

        ``fn`` may be sync (it then runs inline in the calling task, as
        calling it would) or async. From an asyncio or trio task: ``await
        flight.do(key, fn)``.
        """
        return self._do(key, fn, args, kwargs, False)

    @overload
    def do_ex(
        self, key: Hashable, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, Result[R]]: ...
    @overload
    def do_ex(
        self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, Result[R]]: ...
    def do_ex(
        self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Result[Any]]:
        """As :meth:`do`, returning a :class:`Result` that says whether the value was shared."""
        return self._do(key, fn, args, kwargs, True)

    async def _do(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ex: bool,
    ) -> Any:
        """The value (``ex``: the :class:`Result`) of the call for ``key``."""
        # _local(), check_fn() and async_owner() written out: every caller of a herd pays
        # for each call.
        if self._map_key is None:
            try:
                hash(key)
            except TypeError:
                check_key(key)
        else:
            key = self._map_key(key)
        given: object = fn  # (typed callable; a caller may pass anything)
        if not callable(given):
            check_fn(given)
        backend = self._backend
        if backend.ttl:
            kept = backend.cached(key)
            if kept is not MISS:
                return Result(kept, True) if ex else kept
        seen = last_loop[0]  # asyncio_task(), written out as in LocalContext.__aenter__
        owner: Any = (
            task_of(seen[0])
            if seen is not None and seen[0]._thread_id == get_ident()
            else asyncio_task()
        )
        if owner is None:
            runtime, owner = async_runtime(None)
        else:
            runtime = ASYNCIO
        ticket = backend.ticket(owner)
        done = False
        payload: Any = None
        keep = True
        follows = False
        try:
            waiting = backend.join_async(key, ticket, runtime)
            # READY: the ticket leads at once (nothing to await, nothing to ask): every
            # uncontended call.
            if waiting is not READY:
                while True:
                    try:
                        joined = await waiting
                        break
                    except BaseException as exc:
                        # A wait shared with others that another caller's cancellation
                        # woke goes on (see FlightBackend.again); anything else is its own.
                        waiting_on = backend.again(ticket, exc)
                        if waiting_on is None:
                            raise
                        waiting = waiting_on
                if isinstance(joined, Outcome):  # a follower, handed the outcome by its wait
                    follows = True  # (a follower never leads: nothing to conclude)
                    # Outcome.share(), written out: a frame less for every follower of a herd.
                    if joined.error is not None:
                        raise follower_copy(joined.error)
                    return Result(joined.value, True) if ex else joined.value
                if not backend.leads(ticket):
                    follows = True  # (a follower never leads: nothing to conclude)
                    result = backend.shared(ticket)
                    return Result(result, True) if ex else result
            # This caller runs the call (it arrived first, or took over).
            if self._timed:
                ticket._since = monotonic()
            if backend.ttl:
                kept = backend.cached(key)
                if kept is not MISS:
                    done, payload, keep = True, kept, False
                    return Result(kept, True) if ex else kept
            try:
                result = fn(*args, **kwargs)
                if is_awaitable(result):
                    result = await result
            except Exception as exc:
                payload = exc
                raise
            done, payload = True, result
        finally:
            # Whatever happened, however far it got: nothing stays in flight. Interrupted while
            # concluding (even at its first instruction), it concludes again without an outcome:
            # the earliest follower takes over, or nothing, if the first try got through.
            if not follows:
                try:
                    conclude_async = self._conclude_async
                    if conclude_async is None:
                        shared = backend.conclude(key, ticket, done, payload, keep)
                    else:
                        shared = await conclude_async(key, ticket, done, payload, keep)
                except Exception:
                    raise
                except BaseException:
                    complete(backend.conclude, key, ticket, False, None)
                    raise
        return Result(result, shared) if ex else result

    # -- threads -----------------------------------------------------------

    def do_sync(self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """As :meth:`do`, for threads: ``fn`` must be sync; blocks this thread.

        An async ``fn`` raises TypeError at once; a call from a thread running
        an event loop raises RuntimeError (it could deadlock; use ``await do``).
        """
        return self._do_sync(key, fn, args, kwargs)[0]  # type: ignore[no-any-return]

    def do_sync_ex(
        self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Result[R]:
        """As :meth:`do_sync`, returning a :class:`Result` with the ``shared`` flag."""
        return Result(*self._do_sync(key, fn, args, kwargs))

    def _do_sync(
        self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, bool]:
        key = self._local(key)
        check_sync_fn(fn, "do_sync", "await flight.do(...)")
        # check_can_block(), written out as in KeyedLock.acquire: every call.
        if running_loop() is not None or sniffio_local.name is not None:
            raise blocking_call_error("flight.do_sync(...)", FLIGHT_INSTEAD)
        backend = self._backend
        if backend.ttl:
            kept = backend.cached(key)
            if kept is not MISS:
                return kept, True
        ticket = backend.ticket(thread_owners.token)
        done = False
        payload: Any = None
        keep = True
        try:
            backend.join(key, ticket)
            if not backend.leads(ticket):
                return backend.shared(ticket), True
            if self._timed:
                ticket._since = monotonic()
            if backend.ttl:
                kept = backend.cached(key)
                if kept is not MISS:
                    done, payload, keep = True, kept, False
                    return kept, True
            try:
                result = fn(*args, **kwargs)
                if type(result) is CoroutineType:
                    raise returned_coroutine(result, "do_sync", "await flight.do(...)")
            except Exception as exc:
                payload = exc
                raise
            done, payload = True, result
        finally:
            try:  # (as in _do)
                shared = backend.conclude(key, ticket, done, payload, keep)
            except Exception:
                raise
            except BaseException:
                complete(backend.conclude, key, ticket, False, None)
                raise
        return result, shared

    # -- control and introspection -----------------------------------------

    def forget(self, key: Hashable) -> None:
        """Make the next call for ``key`` start a new execution.

        Callers already waiting still get the running call's outcome, and
        that call finishing never removes the newer one. Also drops a value
        kept by ``ttl``.
        """
        self._backend.forget(self._local(key))

    def in_flight(self, key: Hashable) -> bool:
        """True if a call for ``key`` is running (kept ``ttl`` values do not count)."""
        return self._backend.in_flight(self._local(key))

    def __len__(self) -> int:
        """Number of keys with a call in flight (for a
        :class:`~keyedlock.redis.RedisSingleFlight`: calls that this process's callers
        run or wait for; :meth:`in_flight` asks the server)."""
        return self._backend.busy()

    def statistics(self, key: Hashable) -> FlightStatistics:
        """A snapshot of ``key``: a call in flight or not, who runs it, for how long, who
        waits for it, and whether a value kept by ``ttl`` is fresh.

        As :meth:`KeyedLock.statistics`: the first call turns on recording when
        each call starts (``running_for`` is None for a call started before).
        """
        self._timed = True
        return self._backend.statistics(self._local(key), key)

    def keys(self) -> list[Hashable]:
        """The keys with a call in flight at this moment (a snapshot; for a
        :class:`~keyedlock.redis.RedisSingleFlight`, as :meth:`__len__`: this process's)."""
        return self._backend.keys()

    # -- decorator ---------------------------------------------------------

    def coalesce(self, key: KeySpec) -> Decorator:
        """Decorate a ``def`` or ``async def`` so concurrent calls with one key share a call.

        ``key`` is a ``str.format`` template over the call's bound arguments
        (``"user:{user_id}"``) or a callable taking the same arguments. The
        wrapped function keeps its signature. A sync function is shared like
        :meth:`do_sync`, an async one like :meth:`do`.
        """

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            key_of = key_function(key, fn)
            if is_async_callable(fn):

                @functools.wraps(fn)
                async def coalesced_async(*args: Any, **kwargs: Any) -> Any:
                    return await self._do(key_of(*args, **kwargs), fn, args, kwargs, False)

                return coalesced_async

            @functools.wraps(fn)
            def coalesced(*args: Any, **kwargs: Any) -> Any:
                return self._do_sync(key_of(*args, **kwargs), fn, args, kwargs)[0]

            return coalesced

        return decorate


flight: Final = SingleFlight()
"""A ready :class:`SingleFlight` shared by the whole process.

Two parts of a program that call one key through ``flight`` share the call.
Create a :class:`SingleFlight` of your own for a separate key space or a
``ttl``.
"""
