"""Joining and running a single-flight call: the callers' side of :class:`SingleFlight`.

:class:`FlightCalls` holds the ways in (``do``, ``do_ex`` for tasks, ``do_sync``,
``do_sync_ex`` for threads, and the ``coalesce`` decorator) over the group's
backend; :class:`~keyedlock.SingleFlight` adds its construction, control and
introspection. Every caller concludes its part in ``finally``: an interrupt
anywhere, even right after it became the leader, never leaves a call in flight.
"""

from __future__ import annotations

import contextlib
import copy
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
    raise_own,
    running_loop,
    sniffio_local,
    task_of,
    thread_owners,
)
from ._scopes import FlightBackend, Outcome
from ._validate import (
    check_fn,
    check_key,
    check_not_generator,
    check_sync_fn,
    is_async_callable,
    is_awaitable,
    returned_coroutine,
)

__all__ = ["FlightCalls", "Result"]

#: How the error raised inside an event loop names a call of a ``@coalesce``-d def.
_COALESCED: Final = "a @coalesce-d def"

#: Why ``@coalesce`` refuses a generator function.
_SHARED_GENERATOR: Final = (
    "its callers would share one generator object, and the work would run as it is "
    "iterated, after the call ended; coalesce a function that returns the values (a list)"
)

#: (Covariant: a Result is frozen, so a Result[bool] is a Result[object].)
T_co = TypeVar("T_co", covariant=True)
P = ParamSpec("P")
R = TypeVar("R")


@final
@frozen
@dataclass(frozen=True, slots=True)
class Result(Generic[T_co]):
    """A single-flight outcome with Go's ``shared`` flag.

    ``shared`` is True if the value went to more than one caller: a follower
    always gets ``shared=True``; the caller that ran the call gets it when at
    least one other caller received the same value; a value reused within
    ``ttl`` is shared too.
    """

    value: T_co
    shared: bool


class FlightCalls:
    """The calls of a single-flight group over its backend (see :class:`~keyedlock.SingleFlight`,
    which sets the attributes)."""

    __slots__ = ()

    _backend: FlightBackend
    _map_key: Callable[[object], Hashable] | None
    #: True once statistics() was asked for: each call records when it starts.
    _timed: bool
    _conclude_async: Callable[..., Awaitable[bool]] | None

    def _local(self, key: object) -> Hashable:
        """Validate ``key`` and map it to the backend's key."""
        map_key = self._map_key
        if map_key is not None:
            return map_key(key)
        return check_key(key)

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
                            raise_own(exc, owner)  # (not a wake-up's)
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
                    try:
                        conclude_async = self._conclude_async
                        if conclude_async is None:
                            shared = backend.conclude(key, ticket, done, payload, keep)
                        else:
                            shared = await conclude_async(key, ticket, done, payload, keep)
                    except Exception as exc:
                        if not self._undelivered(key, ticket, exc, done, payload):
                            raise
                except BaseException:
                    complete(backend.conclude, key, ticket, False, None)  # (no-op if concluded)
                    raise
        return Result(result, shared) if ex else result

    # -- threads -----------------------------------------------------------

    def do_sync(self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """As :meth:`do`, for threads: ``fn`` must be sync; blocks this thread.

        An async ``fn`` raises TypeError at once; a call from a thread running
        an event loop raises RuntimeError (it could deadlock; use ``await do``).
        """
        return self._do_sync(key, fn, args, kwargs, "flight.do_sync(...)")[0]  # type: ignore[no-any-return]

    def do_sync_ex(
        self, key: Hashable, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Result[R]:
        """As :meth:`do_sync`, returning a :class:`Result` with the ``shared`` flag."""
        return Result(*self._do_sync(key, fn, args, kwargs, "flight.do_sync_ex(...)"))

    def _do_sync(
        self,
        key: Hashable,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        what: str,
    ) -> tuple[Any, bool]:
        """(value, shared) of the call for ``key``; ``what`` names the call in the error
        raised inside an event loop."""
        key = self._local(key)
        check_sync_fn(fn, "do_sync", "await flight.do(...)")
        # check_can_block(), written out as in KeyedLock.acquire: every call.
        if running_loop() is not None or sniffio_local.name is not None:
            raise blocking_call_error(what, FLIGHT_INSTEAD)
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
                try:
                    shared = backend.conclude(key, ticket, done, payload, keep)
                except Exception as exc:
                    if not self._undelivered(key, ticket, exc, done, payload):
                        raise
            except BaseException:
                complete(backend.conclude, key, ticket, False, None)  # (no-op if concluded)
                raise
        return result, shared

    def _undelivered(
        self, key: Hashable, ticket: Any, error: Exception, done: bool, payload: object
    ) -> bool:
        """The leader's conclusion raised ``error`` (its outcome could not be sent: too
        large for the manager's messages, say): its followers get a copy of ``error``
        (without what it was raised in, which may be what could not be sent) or, if that
        fails too, the call is given up (the earliest follower takes over). Never left in
        flight. Returns True if the leader's own exception (``fn``'s) goes on, the call
        given up here; False if it raises ``error``: for a value (no caller gets one the
        others could not) and for a give-up that failed, the caller's ``except`` then
        giving the call up, as it does after an interrupt anywhere here."""
        if not done and payload is None:
            return False
        backend = self._backend
        with contextlib.suppress(Exception):  # (not shared either: given up)
            backend.conclude(key, ticket, False, _bare(error))
        if done:
            return False
        complete(backend.conclude, key, ticket, False, None)  # (no-op if it was shared)
        return True

    # -- decorator ---------------------------------------------------------

    def coalesce(self, key: KeySpec) -> Decorator:
        """Decorate a ``def`` or ``async def`` so concurrent calls with one key share a call.

        ``key`` is a ``str.format`` template over the call's bound arguments
        (``"user:{user_id}"``) or a callable taking the same arguments. The
        wrapped function keeps its signature. A sync function is shared like
        :meth:`do_sync`, an async one like :meth:`do`. A generator function is
        refused (TypeError): its callers would share one generator object.
        """

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            check_not_generator(fn, "@coalesce", _SHARED_GENERATOR)
            key_of = key_function(key, fn)
            if is_async_callable(fn):

                @functools.wraps(fn)
                async def coalesced_async(*args: Any, **kwargs: Any) -> Any:
                    return await self._do(key_of(*args, **kwargs), fn, args, kwargs, False)

                return coalesced_async

            @functools.wraps(fn)
            def coalesced(*args: Any, **kwargs: Any) -> Any:
                return self._do_sync(key_of(*args, **kwargs), fn, args, kwargs, _COALESCED)[0]

            return coalesced

        return decorate


def _bare(error: Exception) -> Exception:
    """A copy of ``error`` without its context, cause and traceback: what the followers of
    a call whose conclusion failed get (its context may be what could not be sent)."""
    try:
        bare = copy.copy(error)
    except Exception:
        bare = RuntimeError(f"the call's outcome could not be shared: {type(error).__name__}")
    bare.__context__ = bare.__cause__ = None
    bare.__traceback__ = None
    return bare
