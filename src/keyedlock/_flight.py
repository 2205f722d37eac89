"""SingleFlight: concurrent callers of one key share one in-flight call."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from time import monotonic
from typing import Any, Final, Generic, TypeVar, final, overload

from ._core._flight import MISS, FlightTable
from ._core._keytable import ABORTED, GRANTED, IDLE, Hold, outcome_of
from ._errors import exception_state, rebuild_exception
from ._keys import Decorator, KeySpec, key_function
from ._runtime import park_async
from ._runtime._asyncio import wait_asyncio
from ._runtime._detect import (
    ASYNCIO,
    FLIGHT_INSTEAD,
    async_runtime,
    asyncio_task,
    check_can_block,
    get_ident,
    last_loop,
    task_of,
    thread_owners,
)
from ._runtime._threads import wait_thread
from ._validate import check_fn, check_key, check_sync_fn, check_ttl, is_async_callable

__all__ = ["Result", "SingleFlight", "flight"]

T = TypeVar("T")

_new_object = object.__new__
R = TypeVar("R")

#: The states of a hold that may lead a call: it arrived first (IDLE), or took over (GRANTED).
_LEADING: Final = (IDLE, GRANTED)


@final
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


@final
class _Outcome:
    """What followers of a finished call receive: a value or an exception."""

    __slots__ = ("error", "value")

    def __init__(self, value: object, error: BaseException | None) -> None:
        self.value = value
        self.error = error


def _follower_error(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for a follower, so tracebacks never mix across callers.

    Same type, args, attributes and ``__cause__``; the original when the type
    cannot be copied.
    """
    state = exception_state(exc)
    try:
        dup = copy.copy(exc) if state is None else rebuild_exception(*state)
    except Exception:
        return exc
    if type(dup) is not type(exc) or dup is exc:
        return exc
    dup.__cause__ = exc.__cause__
    dup.__context__ = exc.__context__
    dup.__suppress_context__ = exc.__suppress_context__
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        dup.__notes__ = list(notes)
    return dup


def _deliver(hold: Hold) -> Any:
    outcome = outcome_of(hold)
    assert isinstance(outcome, _Outcome)
    if outcome.error is not None:
        raise _follower_error(outcome.error)
    return outcome.value


def _recursion_error(key: Hashable) -> RuntimeError:
    return RuntimeError(
        f"the call for key {key!r} is being run by this same task or thread; "
        "joining it from inside would wait for itself forever"
    )


@final
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

    __slots__ = ("__weakref__", "_table")

    def __init__(self, *, ttl: float = 0) -> None:
        self._table = FlightTable(check_ttl(ttl))

    @property
    def ttl(self) -> float:
        """Seconds a successful result is reused after it completes (0: never)."""
        return self._table.ttl

    def __repr__(self) -> str:
        return f"<SingleFlight in_flight={len(self._table)} ttl={self._table.ttl}>"

    # -- async -------------------------------------------------------------

    # do() and do_ex() are plain methods returning the coroutine of _do(): no coroutine
    # of their own wrapped around it (every caller of a herd pays for each layer).

    @overload
    def do(
        self, key: Hashable, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, R]: ...
    @overload
    def do(
        self, key: Hashable, fn: Callable[..., R], /, *args: Any, **kwargs: Any
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
        self, key: Hashable, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any
    ) -> Coroutine[Any, Any, Result[R]]: ...
    @overload
    def do_ex(
        self, key: Hashable, fn: Callable[..., R], /, *args: Any, **kwargs: Any
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
        try:
            hash(key)
        except TypeError:
            check_key(key)
        check_fn(fn)
        table = self._table
        if table.ttl:
            kept = table.cached(key, monotonic())
            if kept is not MISS:
                return Result(kept, True) if ex else kept
        seen = last_loop[0]  # asyncio_task(), inlined as in LockContext.__aenter__
        owner: Any = (
            task_of(seen[0])
            if seen is not None and seen[0]._thread_id == get_ident()
            else asyncio_task()
        )
        runtime = ASYNCIO
        if owner is None:
            runtime, owner = async_runtime(None)
        hold = _new_object(Hold)
        hold.owner = owner
        hold.waiters = None
        hold.state = IDLE
        outcome = None
        value: Any = MISS
        try:
            leader = table.holds.setdefault(key, hold)
            if leader is not hold:
                if leader.owner == owner:
                    raise _recursion_error(key)
                if runtime == ASYNCIO:
                    state = await wait_asyncio(table, key, hold, None, owner.get_loop())
                else:
                    state = await park_async(table, key, hold, None, runtime, owner)
                if state == ABORTED:
                    result = _deliver(hold)
                    return Result(result, True) if ex else result
            # This caller runs the call (it arrived first, or took over).
            if table.ttl:
                kept = table.cached(key, monotonic())
                if kept is not MISS:
                    outcome = _Outcome(kept, None)
                    return Result(kept, True) if ex else kept
            try:
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
            except Exception as exc:
                outcome = _Outcome(None, _follower_error(exc))
                raise
            outcome = _Outcome(result, None)
            value = result
        finally:
            # Whatever happened, however far it got: nothing stays in flight.
            shared = hold.state in _LEADING and table.conclude(
                key, hold, outcome, value, monotonic() if table.ttl else 0.0
            )
        return Result(result, shared) if ex else result

    # -- threads -----------------------------------------------------------

    def do_sync(self, key: Hashable, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """As :meth:`do`, for threads: ``fn`` must be sync; blocks this thread.

        An async ``fn`` raises TypeError at once; a call from a thread running
        an event loop raises RuntimeError (it could deadlock; use ``await do``).
        """
        return self._do_sync(key, fn, args, kwargs)[0]  # type: ignore[no-any-return]

    def do_sync_ex(
        self, key: Hashable, fn: Callable[..., R], /, *args: Any, **kwargs: Any
    ) -> Result[R]:
        """As :meth:`do_sync`, returning a :class:`Result` with the ``shared`` flag."""
        return Result(*self._do_sync(key, fn, args, kwargs))

    def _do_sync(
        self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, bool]:
        check_key(key)
        check_sync_fn(fn, "do_sync", "await flight.do(...)")
        check_can_block("flight.do_sync(...)", FLIGHT_INSTEAD)
        table = self._table
        if table.ttl:
            kept = table.cached(key, monotonic())
            if kept is not MISS:
                return kept, True
        owner = thread_owners.token
        hold = Hold(owner)
        outcome = None
        value: Any = MISS
        try:
            leader = table.holds.setdefault(key, hold)
            if leader is not hold:
                if leader.owner == owner:
                    raise _recursion_error(key)
                if wait_thread(table, key, hold, None) == ABORTED:
                    return _deliver(hold), True
            if table.ttl:
                kept = table.cached(key, monotonic())
                if kept is not MISS:
                    outcome = _Outcome(kept, None)
                    return kept, True
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                outcome = _Outcome(None, _follower_error(exc))
                raise
            outcome = _Outcome(result, None)
            value = result
        finally:
            shared = hold.state in _LEADING and table.conclude(
                key, hold, outcome, value, monotonic() if table.ttl else 0.0
            )
        return result, shared

    # -- control and introspection -----------------------------------------

    def forget(self, key: Hashable) -> None:
        """Make the next call for ``key`` start a new execution.

        Callers already waiting still get the running call's outcome, and
        that call finishing never removes the newer one. Also drops a value
        kept by ``ttl``.
        """
        self._table.forget(check_key(key))

    def in_flight(self, key: Hashable) -> bool:
        """True if a call for ``key`` is running (kept ``ttl`` values do not count)."""
        return self._table.locked(check_key(key))

    def __len__(self) -> int:
        """Number of keys with a call in flight."""
        return len(self._table)

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


#: A ready module-level :class:`SingleFlight` shared by the whole process.
flight: Final = SingleFlight()
