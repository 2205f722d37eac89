"""The manager's answers about its tables: what a lock's or a group's key looks like now.

Owners travel as (process id, owner number): a positive number is a thread;
a negative one a task, even for asyncio and odd for trio (see :mod:`._owners`).
"""

from __future__ import annotations

from collections.abc import Hashable
from time import monotonic
from typing import Any

from ..._core import FlightTable, Hold, KeyTable

__all__ = ["Introspection", "runtime_of"]


def runtime_of(owner: int) -> str:
    """The runtime of an owner number: "thread", "asyncio" or "trio"."""
    if owner > 0:
        return "thread"
    return "trio" if owner % 2 else "asyncio"


def _described(hold: Hold) -> tuple[int, str]:
    owner: tuple[int, int] = hold._owner  # type: ignore[assignment]
    return owner[0], runtime_of(owner[1])


class Introspection:
    """The read-only requests of :class:`~._service.Service`."""

    def _table(self, tid: int) -> KeyTable:
        raise NotImplementedError

    def locked(self, state: Any, tid: int, key: Hashable) -> bool:
        return self._table(tid).locked(key)

    def waiters(self, state: Any, tid: int, key: Hashable) -> int:
        return self._table(tid).waiters(key)

    def length(self, state: Any, tid: int) -> int:
        return len(self._table(tid))

    def keys(self, state: Any, tid: int) -> list[Hashable]:
        return self._table(tid).busy_keys()

    def holds(self, state: Any, tid: int, serial: int) -> bool:
        """True if the caller's process's hold ``serial`` still holds its key of lock ``tid``
        (a release, by anyone, drops it from the process's holds)."""
        return state.proc.live_hold(serial, self._table(tid)) is not None

    def stats(self, state: Any, tid: int, key: Hashable) -> tuple[Any, ...]:
        """(held, (pid, runtime, seconds held or None, name or None) or None,
        [waiters' runtimes], a fresh kept value: True/False)."""
        table = self._table(tid)
        holder, waiting = table.snapshot(key)
        described = None
        if holder is not None:
            started = getattr(holder, "_since", None)
            held_for = None if started is None else max(0.0, monotonic() - started)
            described = (*_described(holder), held_for, getattr(holder, "name", None))
        kept = table.results.get(key) if isinstance(table, FlightTable) else None
        cached = kept is not None and kept[0] > monotonic()
        return (
            holder is not None,
            described,
            [_described(hold)[1] for hold in waiting],
            cached,
        )
