"""Single-flight in the process scope: calls in flight live in a ``FlightTable`` of the core.

The leader of a key's call is the key's holder in the table; followers are
its waiters, parked by the runtime adapters (asyncio followers on one loop wait
as a herd, one waiter for all: see :mod:`keyedlock._runtime._herd`). A follower
gets the leader's :class:`Outcome`: its value, or a copy of its exception made as the call
failed (so what the leader's caller does to its own exception afterwards,
notes or chaining, never reaches the followers), copied again for each
follower as it raises it.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Hashable
from time import monotonic
from typing import Any, Final

from .._core import GRANTED, IDLE, MISS, RELEASED, FlightTable, Hold, outcome_of
from .._errors import follower_copy, shown_key
from .._ki import internal
from .._runtime import ASYNCIO, READY, AsyncioHerd, Herds, HerdTicket, park_async, wait_thread
from .._statistics import FlightStatistics
from ._contract import Outcome
from ._forking import reset_in_child
from ._stats import by_runtime, owner_of, since

__all__ = ["LocalFlightBackend", "recursion_error"]


def recursion_error(key: Hashable) -> RuntimeError:
    return RuntimeError(
        f"the call for key {shown_key(key)} is being run by this same task or thread; "
        "joining it from inside would wait for itself forever"
    )


@internal
class LocalFlightBackend:
    """The :class:`~keyedlock._scopes.FlightBackend` of the process scope."""

    __slots__ = ("__weakref__", "herds", "table", "ttl")

    #: Any hashable key is taken as it is.
    map_key: Final = None

    def __init__(self, ttl: float) -> None:
        self.table = FlightTable(ttl)
        #: The asyncio followers of each key's call, on one loop (see AsyncioHerd).
        self.herds: Herds = {}
        #: (An attribute, not a property: every caller reads it.)
        self.ttl: float = ttl
        reset_in_child(self)

    def forked(self) -> None:
        """In a fork child: no call in flight (the parent's threads and tasks did not fork
        with it)."""
        self.table.forked()
        self.table = FlightTable(self.ttl)
        self.herds = {}

    def cached(self, key: Hashable) -> object:
        return self.table.cached(key, monotonic())

    #: ``ticket(owner)``: a new hold of the table (the class itself: no frame of ours).
    ticket: Final[Callable[[object], HerdTicket]] = HerdTicket

    def join(self, key: Hashable, ticket: Hold) -> None:
        table = self.table
        take = table.take  # (a slot's callable: a generic lookup if called as a method)
        leader = take(key, ticket)
        if leader is not ticket:
            if leader._owner == ticket._owner:
                raise recursion_error(key)
            wait_thread(table, key, ticket, None)

    def join_async(self, key: Hashable, ticket: HerdTicket, runtime: int) -> Awaitable[object]:
        """A plain method returning what to await: READY for the leader; for an asyncio
        follower, its future in the key's herd (the call's :class:`Outcome`, or None once
        the ticket leads); else the adapter's wait. No coroutine of its own: every
        follower of a herd pays for each layer."""
        table = self.table
        take = table.take  # (a slot's callable: see join)
        leader = take(key, ticket)
        if leader is ticket:
            return READY
        owner: Any = ticket._owner
        if leader._owner == owner:
            raise recursion_error(key)
        if runtime == ASYNCIO:
            # The herd's checks, written out: every follower of a herd pays for each call.
            # A follower joins the key's herd only while the herd is last in the key's
            # queue: its followers are then in arrival order with every other waiter.
            herd = self.herds.get(key)
            if herd is not None and not herd.closed and herd.loop is owner.get_loop():
                queue = leader._waiters
                try:  # (another thread may conclude the call, and empty its queue, meanwhile)
                    last = queue is herd.hold._queue and queue[-1] is herd.hold
                except IndexError:
                    last = False
                if last:
                    return herd.add(ticket)
            herd = AsyncioHerd(self.herds, table, key, owner)
            ticket.herd = herd  # (from here an interrupt leaves through the herd: see leave)
            if herd.enqueue():
                self.herds[key] = herd
                return herd.add(ticket)
            ticket.herd = None  # the call ended meanwhile (the herd gave its place back)
            return self.join_async(key, ticket, runtime)
        return park_async(table, key, ticket, None, runtime, owner)

    def again(self, ticket: HerdTicket, exc: BaseException) -> Awaitable[object] | None:
        """A follower on its herd's shared future, woken by another's cancellation, waits
        on (see AsyncioHerd.again); None for any other ticket or exception."""
        herd = getattr(ticket, "herd", None)
        return None if herd is None else herd.again(ticket, exc)

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
        holder = table.holder  # (a slot's callable: see join)
        # The holder took the key free, never in a herd: asked first (getattr raises inside).
        if state == IDLE and holder(key) is not ticket:
            herd = getattr(ticket, "herd", None)
            if herd is not None:  # a follower that left its herd (cancelled, interrupted)
                herd.leave(ticket)
                return False
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
        return len(self._snapshot(key)[1])

    def _snapshot(self, key: Hashable) -> tuple[Hold | None, list[Hold]]:
        """The call's leader and its followers, in arrival order: one consistent view, in
        which a herd's one place stands for its followers (and, handed the call, for the
        follower that takes it over, and the others)."""
        return self.table.snapshot(key, _callers)

    def busy(self) -> int:
        return len(self.table)

    def statistics(self, key: Hashable, shown: Hashable) -> FlightStatistics:
        leader, waiting = self._snapshot(key)
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


def _callers(hold: Hold) -> list[Hold]:
    """The callers ``hold`` stands for: a herd's followers, or the hold's own caller."""
    herd = hold._owner
    return herd.waiting() if isinstance(herd, AsyncioHerd) else [hold]
