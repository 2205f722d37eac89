"""SingleFlight: concurrent callers of one key share one in-flight call, over any scope.

:class:`SingleFlight` is written once, over a single-flight backend (see
:mod:`keyedlock._scopes`): the process scope by default, the manager's and
Redis's across processes. Its calls (``do``, ``do_sync``, ``coalesce``, ...)
come from :class:`~._flightcalls.FlightCalls`; this module adds the group's
construction, control and introspection.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final

from ._flightcalls import FlightCalls, Result
from ._scopes import FlightBackend, LocalFlightBackend
from ._statistics import FlightStatistics
from ._validate import check_ttl

__all__ = ["Result", "SingleFlight", "flight"]  # (Result: the type of a call's outcome)


class SingleFlight(FlightCalls):
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

    @property
    def ttl(self) -> float:
        """Seconds a successful result is reused after it completes (0: never)."""
        return self._backend.ttl

    def __repr__(self) -> str:
        return f"<{type(self).__name__} in_flight={len(self)} ttl={self.ttl}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # (The wider scopes' classes define their own: a copy there shares the same calls.)
        raise TypeError(
            f"a {type(self).__name__} cannot be pickled or copied: its calls live in this "
            "process (share the object itself); "
            "across processes use KeyedLockManager().SingleFlight() or a RedisSingleFlight"
        )

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


flight: Final = SingleFlight()
"""A ready :class:`SingleFlight` shared by the whole process.

Two parts of a program that call one key through ``flight`` share the call.
Create a :class:`SingleFlight` of your own for a separate key space or a
``ttl``.
"""
