"""What ``statistics(key)`` reports: frozen snapshots of one key, for every scope.

A snapshot is taken in one step and never changes afterwards; by the time
it is read the key may have moved on. Nothing is recorded for it on the
uncontended path until a lock's statistics are first asked for (see
:meth:`keyedlock.KeyedLock.statistics`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._frozen import frozen

__all__ = ["FlightStatistics", "LockStatistics", "Owner"]


@frozen
@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a key (or leads a single-flight call).

    Attributes:
        runtime: ``"thread"``, ``"asyncio"`` or ``"trio"`` (``"unknown"`` where the
            scope cannot tell; ``"process"`` for a holder in another process whose
            runtime the scope does not know).
        name: the thread's or the task's name, where the scope knows it.
        pid: the process id of the holder, where the scope knows it.
        host: the name of the holder's host, for a holder in another process of a
            cluster scope (Redis); None otherwise.
    """

    runtime: str
    name: str | None
    pid: int | None
    host: str | None = None


class _Counts(dict[str, int]):
    """Counts by runtime in a snapshot: a dict that refuses changes (TypeError), so that the
    snapshot is frozen all through; it copies, pickles and converts (``dataclasses.asdict``)
    as a dict does."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> Any:
        raise TypeError("a statistics snapshot does not change")

    __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return type(self), (dict(self),)


class _Snapshot:
    """A frozen snapshot whose counts by runtime are read-only too (a copy of what it was
    given: hashing leaves them out)."""

    __slots__ = ()

    def _freeze(self, name: str) -> None:
        object.__setattr__(self, name, _Counts(getattr(self, name)))


@frozen
@dataclass(frozen=True, slots=True)
class LockStatistics(_Snapshot):
    """A snapshot of one key of a keyed lock.

    Attributes:
        key: the key, as given.
        locked: True if someone holds it (in the lock's whole scope: for
            :class:`~keyedlock.FileKeyedLock`, any process of the host).
        holder: who holds it, if known (None if free, or held where the scope
            cannot see).
        held_for: seconds since the holder acquired it, if recorded (see
            :meth:`~keyedlock.KeyedLock.statistics`).
        waiters: how many callers wait for it (as :meth:`~keyedlock.KeyedLock.waiters`).
        waiters_by_runtime: those waiters by runtime (``{"thread": 2, "asyncio": 1}``);
            runtimes with no waiter are left out; the counts add up to ``waiters``. In
            the Redis scope, the callers of other processes count under ``"process"``
            (the first of each process, which waits in Redis, and those it queues
            behind it).
    """

    key: Hashable
    locked: bool
    holder: Owner | None
    held_for: float | None
    waiters: int
    waiters_by_runtime: Mapping[str, int] = field(hash=False)

    def __post_init__(self) -> None:
        self._freeze("waiters_by_runtime")


@frozen
@dataclass(frozen=True, slots=True)
class FlightStatistics(_Snapshot):
    """A snapshot of one key of a single-flight group.

    Attributes:
        key: the key, as given.
        in_flight: True if a call for it runs.
        leader: who runs the call, if known.
        running_for: seconds since the call started, if recorded.
        followers: how many callers wait for its outcome.
        followers_by_runtime: those followers by runtime; the counts add up to
            ``followers`` (in the Redis scope, other processes' followers count under
            ``"process"``).
        cached: True if a value kept by ``ttl`` is fresh (the next caller reuses it).
    """

    key: Hashable
    in_flight: bool
    leader: Owner | None
    running_for: float | None
    followers: int
    followers_by_runtime: Mapping[str, int] = field(hash=False)
    cached: bool

    def __post_init__(self) -> None:
        self._freeze("followers_by_runtime")
