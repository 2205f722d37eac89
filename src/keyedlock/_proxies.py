"""The objects a :class:`~keyedlock.multiprocessing.KeyedLockManager` makes: the one
:class:`~keyedlock.KeyedLock` and :class:`~keyedlock.SingleFlight` over the manager's
backends, and how they travel to other processes (pickled by the manager's address and the
object's id). Public as :mod:`keyedlock.multiprocessing`'s names."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, final

from ._lock import KeyedLock
from ._scopes._manager import ManagerFlightBackend, ManagerLockBackend, ManagerLockContext
from ._singleflight import SingleFlight

__all__ = ["KeyedLockProxy", "ManagerLockContext", "SingleFlightProxy"]


def _rebuild_lock(
    address: str,
    tid: int,
    max_waiters: int | None,
    fast_acquire: bool = False,
    warn_after: float | None = None,
) -> KeyedLockProxy:
    return KeyedLockProxy._make(address, tid, max_waiters, fast_acquire, warn_after)


@final
class KeyedLockProxy(KeyedLock):
    """A :class:`~keyedlock.KeyedLock` living in a :class:`KeyedLockManager`, for every process.

    Made by :meth:`KeyedLockManager.KeyedLock`; pickles into worker
    processes. Same API and semantics as :class:`~keyedlock.KeyedLock`
    (``with`` / ``async with klock(key, timeout=...)``, ``acquire``,
    ``acquire_async``, ``release``, ``locked``, ``waiters``, ``len``, ``run``,
    ``run_sync``, ``guard``; :class:`~keyedlock.LockTimeout`,
    :class:`~keyedlock.Aborted`, :class:`~keyedlock.QueueFull`), with the
    exclusion, the FIFO queue and ``max_waiters`` spanning every process.

    Round trips: a synchronous acquire costs one (its wait happens in the
    manager), a release one; an async acquire one if the key is free, else
    two (a try, then the wait, in a helper thread). Cancelling an async
    waiter sends a cancel request; a grant that raced with it is released
    (asyncio) or kept until the task's next checkpoint (trio), never leaked.
    With ``on_error="stop"``, the exception reaches the aborted waiters of
    other processes pickled (as :class:`~keyedlock.Aborted`'s ``__cause__``;
    a stand-in RuntimeError if it cannot be pickled). If a holder's process
    dies, its keys pass to the next waiters at once.
    """

    __slots__ = ()

    _backend: ManagerLockBackend

    def __init__(self) -> None:
        raise TypeError("make a KeyedLockProxy with KeyedLockManager.KeyedLock()")

    @classmethod
    def _make(
        cls,
        address: str,
        tid: int,
        max_waiters: int | None,
        fast_acquire: bool = False,
        warn_after: float | None = None,
    ) -> KeyedLockProxy:
        self = object.__new__(cls)
        self._bind(ManagerLockBackend(address, tid, max_waiters, fast_acquire), warn_after)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        backend = self._backend
        return (
            _rebuild_lock,
            (
                backend.address,
                backend.tid,
                backend.max_waiters,
                backend.fast_acquire,
                self.warn_after,
            ),
        )

    def __repr__(self) -> str:
        backend = self._backend
        return (
            f"<KeyedLockProxy #{backend.tid} at {backend.address!r} "
            f"max_waiters={backend.max_waiters}>"
        )


def _rebuild_flight(address: str, fid: int, ttl: float) -> SingleFlightProxy:
    return SingleFlightProxy._make(address, fid, ttl)


@final
class SingleFlightProxy(SingleFlight):
    """A :class:`~keyedlock.SingleFlight` living in a :class:`KeyedLockManager`, for every process.

    Made by :meth:`KeyedLockManager.SingleFlight`; pickles into worker
    processes. Concurrent callers of one key, in any processes, threads,
    asyncio or trio tasks, share one call: the first runs its ``fn`` (in
    its own process), the others wait in the manager and get the outcome.

    - The result reaches the other callers pickled. A result that cannot
      be pickled makes *every* caller, the one that ran it included, raise
      :class:`TypeError` naming its type (so the outcome never depends on
      who ran the call).
    - An exception from ``fn`` is raised in the caller that ran it as is,
      and in every other caller as an unpickled copy: same type, ``args``
      and attributes, even when the class's ``__init__`` formats its
      message, with notes and its ``__cause__``/``__context__`` chain (copies;
      tracebacks stay behind). One that cannot be pickled reaches them as a
      :class:`TypeError` describing it.
    - If the caller running the call is cancelled, interrupted, or its
      process dies, the earliest waiting caller takes over and runs its own
      ``fn``; the others keep waiting.

    Round trips: the caller running the call pays two (join, finish), a
    synchronous waiter one; an async waiter two (a try, then the wait in a
    helper thread).
    """

    __slots__ = ()

    _backend: ManagerFlightBackend

    def __init__(self) -> None:
        raise TypeError("make a SingleFlightProxy with KeyedLockManager.SingleFlight()")

    @classmethod
    def _make(cls, address: str, fid: int, ttl: float) -> SingleFlightProxy:
        self = object.__new__(cls)
        self._bind(ManagerFlightBackend(address, fid, ttl))
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        backend = self._backend
        return (_rebuild_flight, (backend.address, backend.fid, backend.ttl))

    def __repr__(self) -> str:
        backend = self._backend
        return f"<SingleFlightProxy #{backend.fid} at {backend.address!r} ttl={backend.ttl}>"

    def _waiting(self, key: Hashable) -> int:
        """How many callers wait for the call in flight for ``key`` (for tests and diagnostics)."""
        return self._backend.waiters(self._local(key))
