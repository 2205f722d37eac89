"""The manager scope as a single-flight backend: the calls in flight live in the manager.

Concurrent callers of one key, in any processes, threads, asyncio or trio
tasks, share one call: the first runs its function (in its own process), the
others wait in the manager and get the outcome, pickled (see
:mod:`._payloads`). A result that cannot be pickled makes *every* caller,
the one that ran it included, raise TypeError naming its type. If the caller
running the call is cancelled, interrupted, or its process dies, the earliest
waiting caller takes over and runs its own function.

Round trips: the caller running the call pays two (join, finish), a
synchronous waiter one; an async waiter two (a try, then the wait in a
helper thread).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable

from ..._core import MISS
from ..._ki import internal
from ..._statistics import FlightStatistics, Owner
from ._client import client_for, next_serial
from ._lockbackend import check_wire_key, wait_off_loop
from ._owners import owner_id, owner_name
from ._payloads import outcome, pack_error, pack_value
from ._protocol import (
    ABANDON,
    FINISH,
    FLIGHT_LEN,
    FLIGHT_WAITERS,
    FORGET,
    IN_FLIGHT,
    JOIN,
    KEYS,
    STATS,
    Reply,
    encode,
)
from ._transport import NoAnswer, deadline_for
from ._wait import Wait

__all__ = ["ManagerFlightBackend"]


class _Ticket:
    """One caller's part in a call: who it is, and its JOIN request (whose reply decides).
    (``_since``, as a Hold's, is left unread: the manager records when calls start.)"""

    __slots__ = ("_since", "key", "name", "owner", "serial", "wait")

    def __init__(self, owner: int, name: str | None) -> None:
        self.owner = owner
        self.name = name
        self.serial = next_serial()
        self.key: Hashable = None
        self.wait: Wait | None = None


@internal
class ManagerFlightBackend:
    """The :class:`~keyedlock._scopes.FlightBackend` of a group living in a manager process."""

    __slots__ = ("address", "fid", "ttl")

    def __init__(self, address: str, fid: int, ttl: float) -> None:
        self.address = address
        self.fid = fid
        self.ttl = ttl

    @property
    def map_key(self) -> Callable[[object], Hashable] | None:
        return check_wire_key

    def cached(self, key: Hashable) -> object:
        return MISS  # (the manager answers a JOIN with a kept value itself)

    def ticket(self, owner: object) -> _Ticket:
        return _Ticket(owner_id(owner), owner_name(owner))

    # -- joining --------------------------------------------------------------------

    def _abandon_reply(self, key: Hashable, serial: int) -> Callable[[object], None]:
        def undo(reply: object) -> None:
            if reply == Reply.LEAD:
                self._abandon(key, serial)

        return undo

    def _join(
        self, key: Hashable, ticket: _Ticket, wait: bool, deadline: float | None = None
    ) -> Wait:
        ticket.key = key
        data = encode(JOIN, self.fid, key, ticket.owner, ticket.serial, wait, ticket.name)
        request = ticket.wait = Wait(
            client_for(self.address),
            data,
            ticket.serial,
            self._abandon_reply(key, ticket.serial),
            deadline,
        )
        return request

    def join(self, key: Hashable, ticket: _Ticket) -> None:
        self._join(key, ticket, True).run()

    def join_async(self, key: Hashable, ticket: _Ticket, runtime: int) -> Awaitable[object]:
        return self._join_async(key, ticket)

    async def _join_async(self, key: Hashable, ticket: _Ticket) -> object:
        # One round trip on the loop (at most REPLY_GRACE if the manager does not answer);
        # if busy, or not answered by then, wait in a helper thread (as acquire_async).
        reply = self._join(key, ticket, False, deadline_for(0)).run()
        if reply == Reply.NO_ANSWER:
            ticket.serial = next_serial()
        if reply in (Reply.BUSY, Reply.NO_ANSWER):
            await wait_off_loop(self._join(key, ticket, True))
        return None

    def again(self, ticket: _Ticket, exc: BaseException) -> Awaitable[object] | None:
        return None  # (no wait here is shared: what ends one is its caller's own)

    def leads(self, ticket: _Ticket) -> bool:
        return ticket.wait is not None and ticket.wait.reply == Reply.LEAD

    def shared(self, ticket: _Ticket) -> object:
        assert ticket.wait is not None
        reply = ticket.wait.reply
        if reply == Reply.CANCELLED:
            raise RuntimeError("the wait for the shared call was withdrawn")
        return outcome(reply, ticket.key)

    # -- concluding -------------------------------------------------------------------

    def _abandon(self, key: Hashable, serial: int) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError, NoAnswer):
            client_for(self.address).call(encode(ABANDON, self.fid, key, serial))

    def conclude(
        self, key: Hashable, ticket: _Ticket, done: bool, payload: object, keep: bool = True
    ) -> bool:
        wait = ticket.wait
        if wait is None or wait.reply != Reply.LEAD:
            return False  # a follower, or concluded already
        if not done and payload is None:
            self._abandon(key, ticket.serial)  # gave up: the earliest follower takes over
            wait.reply = None
            return False
        error: TypeError | None = None
        if done:
            data, error = pack_value(payload, key)
        else:
            assert isinstance(payload, BaseException)
            data = pack_error(payload, key)
        request = encode(FINISH, self.fid, key, ticket.serial, not done or error is not None, data)
        shared = bool(client_for(self.address).call(request))
        wait.reply = None  # (after: interrupted before, the conclusion again abandons, harmlessly)
        if error is not None:
            raise error  # every caller raises it, this one too
        return shared

    # -- control and introspection ------------------------------------------------------

    def forget(self, key: Hashable) -> None:
        client_for(self.address).call(encode(FORGET, self.fid, key))

    def in_flight(self, key: Hashable) -> bool:
        return bool(client_for(self.address).call(encode(IN_FLIGHT, self.fid, key)))

    def waiters(self, key: Hashable) -> int:
        return int(client_for(self.address).call(encode(FLIGHT_WAITERS, self.fid, key)))

    def busy(self) -> int:
        return int(client_for(self.address).call(encode(FLIGHT_LEN, self.fid)))

    def statistics(self, key: Hashable, shown: Hashable) -> FlightStatistics:
        running, leader, waiting, cached = client_for(self.address).call(
            encode(STATS, self.fid, key)
        )
        return FlightStatistics(
            key=shown,
            in_flight=running,
            leader=None if leader is None else Owner(leader[1], leader[3], leader[0]),
            running_for=None if leader is None else leader[2],
            followers=len(waiting),
            followers_by_runtime=dict(Counter(waiting)),
            cached=cached,
        )

    def keys(self) -> list[Hashable]:
        return list(client_for(self.address).call(encode(KEYS, self.fid)))
