"""Single-flight in the process scope: calls in flight live in a ``FlightTable`` of the core.

The leader of a key's call is the key's holder in the table; followers are
its waiters, parked by the runtime adapters. A follower gets the leader's
:class:`Outcome`: its value, or a copy of its exception made as the call
failed (so what the leader's caller does to its own exception afterwards,
notes or chaining, never reaches the followers), copied again for each
follower as it raises it.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Hashable
from time import monotonic
from typing import Any, Final

from .._core import GRANTED, IDLE, MISS, RELEASED, WAITING, FlightTable, Hold, KeyTable, outcome_of
from .._errors import follower_copy
from .._ki import internal
from .._runtime import ASYNCIO, READY, park_async, park_asyncio, wait_thread, woken
from .._statistics import FlightStatistics
from ._contract import Outcome
from ._forking import reset_in_child
from ._stats import by_runtime, owner_of, since

__all__ = ["LocalFlightBackend", "recursion_error"]


def recursion_error(key: Hashable) -> RuntimeError:
    return RuntimeError(
        f"the call for key {key!r} is being run by this same task or thread; "
        "joining it from inside would wait for itself forever"
    )


@internal
class LocalFlightBackend:
    """The :class:`~keyedlock._scopes.FlightBackend` of the process scope."""

    __slots__ = ("__weakref__", "table", "ttl")

    #: Any hashable key is taken as it is.
    map_key: Final = None

    def __init__(self, ttl: float) -> None:
        self.table = FlightTable(ttl)
        #: (An attribute, not a property: every caller reads it.)
        self.ttl: float = ttl
        reset_in_child(self)

    def forked(self) -> None:
        """In a fork child: no call in flight (the parent's threads and tasks did not fork
        with it)."""
        self.table.forked()
        self.table = FlightTable(self.ttl)

    def cached(self, key: Hashable) -> object:
        return self.table.cached(key, monotonic())

    #: ``ticket(owner)``: a new hold of the table (the class itself: no frame of ours).
    ticket: Final[Callable[[object], Hold]] = Hold

    def join(self, key: Hashable, ticket: Hold) -> None:
        table = self.table
        leader = table.take(key, ticket)
        if leader is not ticket:
            if leader._owner == ticket._owner:
                raise recursion_error(key)
            wait_thread(table, key, ticket, None)

    def join_async(self, key: Hashable, ticket: Hold, runtime: int) -> Awaitable[object]:
        """A plain method returning what to await: READY for the leader, or the adapter's
        wait (no coroutine of its own: every follower of a herd pays for each layer)."""
        table = self.table
        leader = table.take(key, ticket)
        if leader is ticket:
            return READY
        owner: Any = ticket._owner
        if leader._owner == owner:
            raise recursion_error(key)
        if runtime == ASYNCIO:
            return _follow_asyncio(table, key, ticket, owner)
        return park_async(table, key, ticket, None, runtime, owner)

    def leads(self, ticket: Hold) -> bool:
        # decided(ticket) in (IDLE, GRANTED), without the call: RELEASED is GRANTED there,
        # and a joined WAITING ticket is ABORTED (its call concluded).
        state = ticket._state
        return state in (IDLE, GRANTED, RELEASED)

    def shared(self, ticket: Hold) -> object:
        outcome = outcome_of(ticket)
        assert isinstance(outcome, Outcome)
        return outcome.share()

    def conclude(
        self, key: Hashable, ticket: Hold, done: bool, payload: object, keep: bool = True
    ) -> bool:
        state = ticket._state
        if state != IDLE and state != GRANTED:
            return False  # a follower (or concluded already): nothing to do
        table = self.table
        if done:
            now = monotonic() if table.ttl and keep else 0.0
            return table.conclude(
                key, ticket, Outcome(payload, None), payload if keep else MISS, now
            )
        if payload is None:
            return table.conclude(key, ticket, None)
        assert isinstance(payload, BaseException)
        return table.conclude(key, ticket, Outcome(None, follower_copy(payload)))

    def forget(self, key: Hashable) -> None:
        self.table.forget(key)

    def in_flight(self, key: Hashable) -> bool:
        return self.table.locked(key)

    def waiters(self, key: Hashable) -> int:
        return self.table.waiters(key)

    def busy(self) -> int:
        return len(self.table)

    def statistics(self, key: Hashable, shown: Hashable) -> FlightStatistics:
        leader, waiting = self.table.snapshot(key)
        return FlightStatistics(
            key=shown,
            in_flight=leader is not None,
            leader=owner_of(leader, os.getpid()),
            running_for=since(leader),
            followers=len(waiting),
            followers_by_runtime=by_runtime(waiting),
            cached=bool(self.table.ttl) and self.table.cached(key, monotonic()) is not MISS,
        )

    def keys(self) -> list[Hashable]:
        return self.table.busy_keys()


async def _follow_asyncio(table: KeyTable, key: Hashable, ticket: Hold, task: Any) -> object:
    """An asyncio follower's wait: the call's :class:`Outcome` once it concludes, or None if
    the ticket took the call over (it leads now).

    ``wait_asyncio`` with no deadline, written out with the outcome read at the end: every
    follower of a herd pays for each frame. Whatever escapes (cancellation, an interrupt)
    withdraws the ticket, and passes the call on if it was handed over in the same instant.
    """
    try:
        fut = park_asyncio(table, key, ticket, task)
        if fut is None:
            return None  # the call ended meanwhile: this ticket leads the next one
        before = task.cancelling()
        try:
            await fut
        except BaseException as exc:
            if not woken(exc, fut, task, before):  # the task itself was cancelled
                raise
        if ticket._state == WAITING:  # still queued when woken: the call concluded
            outcome = outcome_of(ticket)
            if outcome is None:  # (never: a waiter is decided before it is woken)
                table.cancel(key, ticket)
            return outcome
        return None  # handed the call (it took over)
    except BaseException:
        table.cancel(key, ticket)
        raise
