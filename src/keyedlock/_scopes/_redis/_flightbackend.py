"""Single-flight across hosts: one call per key, its outcome shared by every caller everywhere.

:class:`RedisFlightBackend` is a :class:`~keyedlock._scopes.FlightBackend` in two steps, as
the lock is:

1. this process's callers of a key coalesce in a local
   :class:`~keyedlock._core.FlightTable`: one of them, the local leader, goes on; the others
   wait for it (any runtime, as the process scope's single-flight);
2. the local leader joins the key's call in Redis (:mod:`._flightscripts`): it leads it (and
   its caller runs the function), or follows it (blocking on its wake list for at most the
   leader's remaining lease, as a lock waiter does), or finds its outcome there already.

An outcome from Redis concludes the local call at once: the local leader and every local
follower get it. The leader that ran the function publishes its outcome to its followers in
Redis (serialized, see :mod:`._outcomes`), then concludes locally. A leader that gives up
(cancelled, interrupted) tells its followers to ask again, and the earliest local follower
takes over in this process; a leader whose process dies lets its lease run out, and a
follower takes over then. The leader's lease and the followers' places are renewed by the
process's renewal thread.

From a task, ``SingleFlight`` awaits :meth:`RedisFlightBackend.conclude_async`, whose round
trip never blocks the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Hashable
from time import monotonic
from typing import Any, cast

from ..._core import GRANTED, IDLE, MISS, FlightTable, decided, outcome_of
from ..._errors import follower_copy
from ..._ki import internal
from ..._runtime import (
    ASYNCIO,
    in_event_loop,
    park_async,
    wait_asyncio,
    wait_thread,
)
from ..._statistics import FlightStatistics
from .._contract import Outcome
from .._localflight import recursion_error
from .._stats import by_runtime, owner_of, since
from ._flightscripts import (
    Done,
    Following,
    flight_abandon,
    flight_finish,
    flight_forget,
    flight_inspect,
    flight_join,
    flight_refresh,
    flight_renew,
    parse_flight_inspect,
    parse_flight_join,
    parse_flight_wake,
)
from ._flightticket import FOLLOWING, LEADING, Ticket
from ._link import Link
from ._names import KeyNames, RedisKey, id_owner, new_id
from ._outcomes import Serializer, decode, encode_error, encode_value
from ._renewal import Renewal, renewer

__all__ = ["RedisFlightBackend"]


@internal
class RedisFlightBackend:
    """The :class:`~keyedlock._scopes.FlightBackend` of ``RedisSingleFlight``."""

    __slots__ = (
        "__weakref__",
        "active",
        "keep_ms",
        "lease",
        "lease_ms",
        "link",
        "map_key",
        "period",
        "serializer",
        "table",
    )

    def __init__(self, link: Link, prefix: str, lease: float, ttl: float, serializer: Any) -> None:
        self.link = link
        self.map_key = KeyNames(prefix, "RedisSingleFlight")
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self.keep_ms = round(ttl * 1000)
        self.period = lease / 3
        self.serializer: Serializer = serializer
        self.table = FlightTable(ttl)
        #: The tickets taking part in a call in Redis (a local leader each), by ticket.
        self.active: dict[Ticket, RedisKey] = {}
        renewer.add(self)

    def forked(self) -> None:
        """In a fork child: no call in flight (the parent's did not fork with it)."""
        self.table.forked()
        self.table = FlightTable(self.table.ttl)
        self.active = {}

    @property
    def ttl(self) -> float:
        return self.table.ttl

    def cached(self, key: Hashable) -> object:
        return self.table.cached(key, monotonic())

    def ticket(self, owner: object) -> Ticket:
        return Ticket(owner)

    def again(self, ticket: Ticket, exc: BaseException) -> Awaitable[object] | None:
        return None  # (no wait here is shared: what ends one is its caller's own)

    def leads(self, ticket: Ticket) -> bool:
        return ticket.remote is None and decided(ticket) in (IDLE, GRANTED)

    def shared(self, ticket: Ticket) -> object:
        outcome = ticket.remote if ticket.remote is not None else outcome_of(ticket)
        assert isinstance(outcome, Outcome)
        return outcome.share()

    # -- joining -------------------------------------------------------------

    def join(self, key: Hashable, ticket: Ticket) -> None:
        table = self.table
        leader = table.take(key, ticket)
        if leader is not ticket:
            if leader._owner == ticket._owner:
                raise recursion_error(key)
            wait_thread(table, key, ticket, None)
            if decided(ticket) != GRANTED:
                return  # the local call's outcome came
        # This process's leader (first, or took over): the call in Redis.
        rkey = cast(RedisKey, key)
        member = self._enter(rkey, ticket)
        link = self.link
        while True:
            reply = parse_flight_join(link.run(self._join_call(rkey, ticket, member)))
            if not isinstance(reply, Following):
                return self._joined(rkey, ticket, reply)
            self._follow(ticket, reply)
            message = link.pop(rkey.flight.wake(member), max(reply.wait_ms, 1) / 1000)
            if message is not None and self._woken(rkey, ticket, message):
                return None

    def join_async(self, key: Hashable, ticket: Ticket, runtime: int) -> Awaitable[object]:
        table = self.table
        leader = table.take(key, ticket)
        local: Awaitable[int] | None = None
        if leader is not ticket:
            owner: Any = ticket._owner
            if leader._owner == owner:
                raise recursion_error(key)
            if runtime == ASYNCIO:
                local = wait_asyncio(table, key, ticket, None, owner.get_loop())
            else:
                local = park_async(table, key, ticket, None, runtime, owner)
        return self._join_async(cast(RedisKey, key), ticket, local)

    async def _join_async(
        self, key: RedisKey, ticket: Ticket, local: Awaitable[int] | None
    ) -> None:
        if local is not None:
            await local
            if decided(ticket) != GRANTED:
                return
        member = self._enter(key, ticket)
        link = self.link
        while True:
            reply = parse_flight_join(await link.run_async(self._join_call(key, ticket, member)))
            if not isinstance(reply, Following):
                return self._joined(key, ticket, reply)
            self._follow(ticket, reply)
            message = await link.pop_async(key.flight.wake(member), max(reply.wait_ms, 1) / 1000)
            if message is not None and self._woken(key, ticket, message):
                return

    def _enter(self, key: RedisKey, ticket: Ticket) -> str:
        member = new_id()
        ticket.member = member
        self.active[ticket] = key  # recorded first: conclude and the renewals find it
        renewer.running()
        return member

    def _join_call(self, key: RedisKey, ticket: Ticket, member: str) -> Any:
        lease_ms = self.lease_ms
        return flight_join(
            key.flight, member, lease_ms=lease_ms, place_ms=lease_ms, previous=ticket.lead
        )

    def _follow(self, ticket: Ticket, reply: Following) -> None:
        ticket.lead = reply.lead
        ticket.role = FOLLOWING

    def _joined(self, key: RedisKey, ticket: Ticket, reply: object) -> None:
        if isinstance(reply, Done):
            self._deliver(key, ticket, reply.outcome)
        else:
            ticket.role = LEADING  # its caller runs the function

    def _woken(self, key: RedisKey, ticket: Ticket, message: bytes) -> bool:
        """A wake-up: the outcome (delivered: True), or "ask again" (False)."""
        done = parse_flight_wake(message)
        if done is None:
            return False
        self._deliver(key, ticket, done.outcome)
        return True

    def _deliver(self, key: RedisKey, ticket: Ticket, data: bytes) -> None:
        """The call's outcome came from Redis: it concludes the local call too."""
        outcome = decode(self.serializer, data, key)
        self.active.pop(ticket, None)
        ticket.remote = outcome
        self.table.conclude(key, ticket, outcome)

    # -- concluding ------------------------------------------------------------

    # The call in Redis hears first (the outcome for its followers, or "ask again"), then
    # this process's followers. A publication that fails is left to the renewal thread for
    # one more try (the caller keeps its own outcome); a gave-up leader's followers ask
    # again at once.

    def _ending(
        self, key: RedisKey, ticket: Ticket, done: bool, payload: object
    ) -> tuple[Any, TypeError | None]:
        """The call telling Redis how ``ticket``'s part ends (None: nothing to tell), and the
        TypeError every caller raises if its value cannot be serialized. Takes the ticket
        out of the renewals."""
        member = ticket.member
        self.active.pop(ticket, None)
        if member is None:
            return None, None
        if ticket.role != LEADING or (not done and payload is None):
            # Gave up (or never led): its followers in Redis ask again; a follower leaves
            # the call it followed (whose leader it may have become as it asked again).
            lead = ticket.lead if ticket.role == FOLLOWING else ""
            return flight_abandon(key.flight, member, place_ms=self.lease_ms, lead=lead), None
        error = None
        keep_ms = 0  # errors are never kept for later callers
        if done:
            data, error = encode_value(self.serializer, payload, key)
            if error is None:
                keep_ms = self.keep_ms
        else:
            data = encode_error(self.serializer, cast(BaseException, payload), key)
        call = flight_finish(key.flight, member, data, keep_ms=keep_ms, place_ms=self.lease_ms)
        return call, error

    def _end_here(
        self,
        key: Hashable,
        ticket: Ticket,
        done: bool,
        payload: object,
        keep: bool,
        error: TypeError | None,
    ) -> bool:
        """Conclude the local call: this process's followers get the outcome."""
        table = self.table
        if error is not None:
            table.conclude(key, ticket, Outcome(None, error))
            raise error
        if done:
            now = monotonic() if table.ttl and keep else 0.0
            value = payload if keep else MISS
            return table.conclude(key, ticket, Outcome(payload, None), value, now)
        if payload is None:
            return table.conclude(key, ticket, None)
        error_copy = follower_copy(cast(BaseException, payload))
        return table.conclude(key, ticket, Outcome(None, error_copy))

    def conclude(
        self, key: Hashable, ticket: Ticket, done: bool, payload: object, keep: bool = True
    ) -> bool:
        state = ticket._state
        if state != IDLE and state != GRANTED:
            return False  # a local follower, or concluded already (or delivered)
        call, error = self._ending(cast(RedisKey, key), ticket, done, payload)
        woken = 0
        if call is not None:
            if in_event_loop():
                renewer.chore(self.link, call, self.lease)  # (a task here: never blocking)
            else:
                try:
                    woken = int(self.link.run(call))
                except Exception:
                    renewer.chore(self.link, call, self.lease)  # the server is away: again
        return self._end_here(key, ticket, done, payload, keep, error) or woken > 0

    async def conclude_async(
        self, key: Hashable, ticket: Ticket, done: bool, payload: object, keep: bool = True
    ) -> bool:
        """As :meth:`conclude`, from a task: the round trip is awaited, never blocking the
        loop, and finishes even if the task is cancelled meanwhile (the cancellation is
        raised after it). Interrupted meanwhile, it concludes all the same (the renewal
        thread tells Redis) and raises."""
        state = ticket._state
        if state != IDLE and state != GRANTED:
            return False
        call, error = self._ending(cast(RedisKey, key), ticket, done, payload)
        woken = 0
        cancelled = None
        if call is not None:
            try:
                reply, cancelled = await self.link.finish_async(call)
                woken = int(reply)
            except Exception:
                renewer.chore(self.link, call, self.lease)
            except BaseException:
                renewer.chore(self.link, call, self.lease)
                self._end_here(key, ticket, done, payload, keep, error)
                raise
        try:
            return self._end_here(key, ticket, done, payload, keep, error) or woken > 0
        finally:
            if cancelled is not None:
                raise cancelled

    # -- control and introspection ---------------------------------------------------

    def forget(self, key: Hashable) -> None:
        self.table.forget(key)
        self.link.run(flight_forget(cast(RedisKey, key).flight))

    def statistics(self, key: Hashable, shown: Hashable) -> FlightStatistics:
        """In flight and followers cluster-wide (one round trip); followers by runtime as this
        process sees them; the leader named if it is in this process, else by its process
        id and host."""
        leader, waiting = self.table.snapshot(key)
        busy, followers, member = parse_flight_inspect(
            self.link.run(flight_inspect(cast(RedisKey, key).flight))
        )
        # This process's first caller leads in Redis (or is about to: its reply is on its
        # way), unless Redis names another leader, which it follows.
        elsewhere = busy and not (
            isinstance(leader, Ticket)
            and (leader.role == LEADING or (member is not None and member == leader.member))
        )
        if elsewhere and leader is not None:
            # This process's first caller follows in Redis, ahead of the others here.
            waiting = [leader, *waiting]
            followers -= 1
        followers = max(0, followers)
        return FlightStatistics(
            key=shown,
            in_flight=leader is not None or busy,
            leader=id_owner(member) if elsewhere else owner_of(leader, os.getpid()),
            running_for=None if elsewhere else since(leader),
            followers=len(waiting) + followers,
            followers_by_runtime=by_runtime(waiting, followers),
            cached=bool(self.table.ttl) and self.cached(key) is not MISS,
        )

    def keys(self) -> list[Hashable]:
        return [cast(RedisKey, key).key for key in self.table.busy_keys()]

    def in_flight(self, key: Hashable) -> bool:
        if self.table.locked(key):
            return True
        return parse_flight_inspect(self.link.run(flight_inspect(cast(RedisKey, key).flight)))[0]

    def waiters(self, key: Hashable) -> int:
        reply = self.link.run(flight_inspect(cast(RedisKey, key).flight))
        return self.table.waiters(key) + parse_flight_inspect(reply)[1]

    def busy(self) -> int:
        return len(self.table)

    # -- renewal ---------------------------------------------------------------

    def renewals(self) -> list[Renewal]:
        """This round's calls: the lease of each call led here, each follower's place."""
        calls: list[Renewal] = []
        lease_ms = self.lease_ms
        for ticket, key in list(self.active.items()):
            member = ticket.member
            if member is None:
                continue
            if ticket.role == LEADING:
                call = flight_renew(key.flight, member, lease_ms=lease_ms)
            elif ticket.role == FOLLOWING:
                call = flight_refresh(key.flight, member, ticket.lead, place_ms=lease_ms)
            else:
                continue
            calls.append((call, _ignore))
        return calls


def _ignore(reply: object) -> None:
    """A renewal's reply needs no action: a lead or place that is gone shows on the next
    join (a follower asks again when its wait runs out)."""
