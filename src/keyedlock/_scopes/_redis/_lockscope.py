"""The cluster scope as a wide scope: a key of this process's table, taken in Redis.

:class:`RedisScope` is the :class:`~keyedlock._scopes.WideScope` of the local-then-wide
model over the lock's scripts (:mod:`._lockscripts`): only a key's local holder reaches the
server, so each process has at most one caller per key there (one place in the queue, one
blocked connection).

Acquiring: ``acquire`` takes the key or a place in line; a waiter then blocks on its wake
list (``BLPOP``) for at most the holder's remaining lease and its own deadline, and asks
again when that runs out. So nothing polls while the holder is alive, and a holder that died
delays the queue by at most its lease. The lease (and a waiter's place) is renewed by the
process's renewal thread (:mod:`._renewal`), every third of the lease.

Records: ``held`` maps each hold the scope acts for to its :class:`Attempt` (waiter id,
state, token). As in the lock-file scope, a record is written *before* the server is asked
(an interrupt after the grant finds it), marked HELD only once the grant is known, and taken
for release in one step (``attempt = held[hold]; del held[hold]``, no call in between): of two
callers releasing one hold, one gets the record. Whatever is taken but cannot be finished
(an interrupted acquisition, a release whose reply was lost) is handed to the renewal thread
as a ``withdraw`` chore: compare-and-delete by waiter id, so it never touches another
holder's grant, and it never blocks the caller's event loop.

Losing the lease: see :mod:`._attempt`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Mapping
from time import monotonic
from typing import Any, Final, cast

from ..._core import Hold, claim, complete
from ..._errors import LockTimeout
from ..._ki import internal
from ._alarms import NO_ALARM, Armed, alarms
from ._attempt import HELD, Attempt, Fenced, LocalQueue, lose, nobody, not_held_error
from ._failures import NoAnswer, NoThread
from ._leaving import Leaving
from ._link import Link
from ._lockcalls import (
    RING,
    Granted,
    Inspected,
    acquire,
    inspect,
    parse_acquire,
    parse_inspect,
    parse_wake,
    release,
    ring,
    withdraw,
)
from ._lockrenewals import LockRenewals
from ._loops import MARGIN, reply_wait
from ._names import KeyNames, RedisKey
from ._renewal import renewer

__all__ = ["RedisScope"]

#: For how many leases a clean-up call (a withdraw) goes again while the server is away.
CLEAN_UP_LEASES: Final = 3


@internal
class RedisScope(LockRenewals):
    """The :class:`~keyedlock._scopes.WideScope` of a lock on Redis (module docstring)."""

    __slots__ = (
        "__weakref__",
        "_local",
        "abandoning",
        "changed_keys",
        "held",
        "lease",
        "lease_ms",
        "leaving",
        "link",
        "lost",
        "map_key",
        "patience",
        "period",
    )

    held: dict[Hold, Attempt]
    #: Attempts whose withdrawal ``abandon`` claimed and has not handed on (never renewed).
    abandoning: dict[Hold, Attempt]

    def __init__(self, link: Link, prefix: str, lease: float) -> None:
        self.link = link
        self.map_key = KeyNames(prefix, "RedisKeyedLock")
        self.lease = lease
        self.lease_ms = max(1, round(lease * 1000))
        self.period = lease / 3
        #: How long a clean-up call that cannot reach the server goes again: what a stopped
        #: server runs once it goes on (an acquire sent before it stopped) is then undone.
        self.patience = CLEAN_UP_LEASES * lease
        self.held, self.abandoning = {}, {}
        #: Places whose withdraw went to the renewal thread: not counted meanwhile.
        self.leaving = Leaving(self.patience + lease)
        #: Keys whose count of callers queued here changed since it was last sent.
        self.changed_keys: set[Hashable] = set()
        self._local: Callable[[], LocalQueue | None] = lambda: nobody
        #: (See WideScope.lost: set by the backend; called by the renewal thread.)
        self.lost: Callable[[Hashable, Hold], None] | None = None
        renewer.add(self)

    def count_with(self, local: LocalQueue) -> None:
        """Count this process's callers behind each attempt with ``local`` (a bound method
        of the backend, held weakly: the backend holds this scope)."""
        self._local = weakref.WeakMethod(local)

    def _behind(self, local_key: Hashable) -> tuple[Hold | None, int]:
        local = self._local()
        return (None, 0) if local is None else local(local_key)

    def forked(self) -> None:
        """In a fork child: nothing is held (the parent's holds did not fork with it)."""
        self.held, self.abandoning = {}, {}
        self.leaving = Leaving(self.leaving.keep)  # (its guard may have been held)
        self.changed_keys = set()

    @property
    def mapped_keys(self) -> Mapping[type, Mapping[Any, Hashable]]:
        return self.map_key.cache

    @staticmethod
    def user_key(local_key: Hashable) -> Hashable:
        return cast(RedisKey, local_key).key

    # -- acquiring -----------------------------------------------------------

    def _ask(self, attempt: Attempt, queue: bool) -> Any:
        attempt.behind = attempt.asked = behind = self._behind(attempt.key)[1]
        return acquire(
            attempt.key.names,
            attempt.waiter,
            lease_ms=self.lease_ms,
            place_ms=self.lease_ms,
            queue=queue,
            behind=behind,
        )

    def _asked(self, attempt: Attempt) -> None:
        """After a reply to :meth:`_ask`: if callers joined or left the queue here while it
        was on its way, their count goes again (the renewal thread sends it): a report sent
        meanwhile may have reached the server before the acquire that made its place."""
        if self._behind(attempt.key)[1] != attempt.asked:
            attempt.behind = attempt.asked
            self.queue_changed(attempt.key)

    def _granted(self, hold: Hold, attempt: Attempt, token: int, sent: float) -> bool:
        attempt.token = token
        attempt.expires = sent + self.lease
        cast(Fenced, hold).token = token
        attempt.state = HELD  # last: until here, an interrupt finds a waiting record
        return True

    def _arm(self, attempt: Attempt, wait_ms: int, deadline: float | None) -> tuple[float, Armed]:
        """How long to block on the wake list (the holder's lease left, at most), and the alarm
        that rings it at the deadline if that comes first (see :mod:`._alarms`)."""
        block = max(wait_ms, 1) / 1000
        left = block if deadline is None else deadline - monotonic()
        if deadline is None or left > block:
            return block, NO_ALARM
        call = ring(attempt.key.names, attempt.waiter, self.lease_ms)
        return max(left, 0.001), alarms.set(self.link, call, deadline)

    def _no_answer(self, local_key: Hashable, timeout: float | None, why: NoAnswer) -> LockTimeout:
        """The error of a timed acquire whose server did not answer by its deadline (or,
        under trio, that found no worker thread free by then)."""
        if isinstance(why, NoThread):
            return LockTimeout(
                f"timed out after {timeout} s waiting for key {self.user_key(local_key)!r}: {why}"
            )
        return LockTimeout(
            f"{self.link.server} did not answer in time: no reply to the acquire of key "
            f"{self.user_key(local_key)!r} (timeout={timeout} s, plus {MARGIN} s of grace at "
            "most); its process may be stopped or stuck"
        )

    def try_acquire(self, local_key: Hashable, hold: Hold) -> bool:
        """Take the key if it is free and nobody waits for it, without waiting."""
        return self.acquire_sync(local_key, hold, 0)

    # With a timeout, every round trip is bounded by the deadline (plus MARGIN): a server
    # that stops answering (SIGSTOP, stuck) ends the acquire with LockTimeout, not after the
    # client's socket timeout; what it may have taken is withdrawn by the renewal thread.

    def acquire_sync(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """Take the key, blocking this thread; False (nothing held or queued) on timeout."""
        attempt = Attempt(cast(RedisKey, local_key))
        held = self.held
        held[hold] = attempt  # recorded first: an interrupt from here on finds it
        renewer.running()  # (its place, then its lease, are renewed from now on)
        link = self.link
        deadline = None if timeout is None else monotonic() + timeout
        try:
            sent = monotonic()
            reply = parse_acquire(link.run(self._ask(attempt, timeout != 0), reply_wait(deadline)))
            self._asked(attempt)
            while not isinstance(reply, Granted):
                if timeout == 0:
                    del held[hold]  # it took no place in line
                    return False
                if deadline is not None and deadline <= monotonic():
                    self._give_up(hold, attempt)
                    return False
                wake = attempt.key.names.wake(attempt.waiter)
                block, alarm = self._arm(attempt, reply.wait_ms, deadline)
                with alarm:
                    message = link.pop(wake, block)
                if message == RING:  # the deadline came
                    self._give_up(hold, attempt)
                    return False
                if message is not None:
                    return self._granted(hold, attempt, parse_wake(message).token, sent)
                sent = monotonic()
                reply = parse_acquire(link.run(self._ask(attempt, True), reply_wait(deadline)))
                self._asked(attempt)
        except NoAnswer as why:
            if deadline is None:
                raise
            raise self._no_answer(local_key, timeout, why) from None  # (the undo withdraws)
        return self._granted(hold, attempt, reply.token, sent)

    async def acquire_async(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """As :meth:`acquire_sync`, from an asyncio or trio task; cancellation (or any other
        exception) leaves the record for :meth:`abandon`."""
        attempt = Attempt(cast(RedisKey, local_key))
        held = self.held
        held[hold] = attempt
        renewer.running()
        link = self.link
        deadline = None if timeout is None else monotonic() + timeout
        try:
            sent = monotonic()
            call = self._ask(attempt, timeout != 0)
            reply = parse_acquire(await link.run_async(call, reply_wait(deadline)))
            self._asked(attempt)
            while not isinstance(reply, Granted):
                if timeout == 0:
                    del held[hold]
                    return False
                if deadline is not None and deadline <= monotonic():
                    await self._give_up_async(hold, attempt)
                    return False
                wake = attempt.key.names.wake(attempt.waiter)
                block, alarm = self._arm(attempt, reply.wait_ms, deadline)
                with alarm:
                    message = await link.pop_async(wake, block)
                if message == RING:
                    await self._give_up_async(hold, attempt)
                    return False
                if message is not None:
                    return self._granted(hold, attempt, parse_wake(message).token, sent)
                sent = monotonic()
                call = self._ask(attempt, True)
                reply = parse_acquire(await link.run_async(call, reply_wait(deadline)))
                self._asked(attempt)
        except NoAnswer as why:
            if deadline is None:
                raise
            raise self._no_answer(local_key, timeout, why) from None
        return self._granted(hold, attempt, reply.token, sent)

    def _give_up(self, hold: Hold, attempt: Attempt) -> None:
        """Timed out: leave the queue (and hand on a key handed to it meanwhile). A server
        that does not answer within MARGIN leaves it to the renewal thread. (The record goes
        once that is settled: interrupted before, the caller's undo withdraws it.)"""
        try:
            self.link.run(withdraw(attempt.key.names, attempt.waiter), MARGIN)
        except NoAnswer:
            self._withdraw_later(attempt)
        self.held.pop(hold, None)

    async def _give_up_async(self, hold: Hold, attempt: Attempt) -> None:
        try:
            await self.link.run_async(withdraw(attempt.key.names, attempt.waiter), MARGIN)
        except NoAnswer:
            self._withdraw_later(attempt)
        self.held.pop(hold, None)

    def _withdraw_later(self, attempt: Attempt) -> None:
        """Withdraw ``attempt`` from the renewal thread (it goes again while the server
        cannot be reached); until it surely has, this process does not count its place."""
        renewer.chore(self.link, withdraw(attempt.key.names, attempt.waiter), self.patience)
        self.leaving.add(attempt.waiter, attempt.key)

    # -- holding and releasing -------------------------------------------------

    def holds(self, hold: Hold) -> bool:
        """True if ``hold`` holds its key in Redis (as far as this process knows)."""
        attempt = self.held.get(hold)  # (one step: a release in another thread may take it)
        return attempt is not None and attempt.state == HELD

    def waiter_of(self, hold: Hold) -> str | None:
        """The waiter id of ``hold``'s attempt in Redis, if it made one."""
        attempt = self.held.get(hold)
        return None if attempt is None else attempt.waiter

    def _claim(self, hold: Hold) -> Attempt | None:
        """Take ``hold``'s record if it holds the key (one step: see the module docstring)."""
        held = self.held
        try:
            attempt = held[hold]
            if attempt.state != HELD:
                return None  # still waiting for another process: it holds nothing yet
            del held[hold]
        except KeyError:
            return None
        return attempt

    def _released(self, hold: Hold, attempt: Attempt, reply: object) -> bool:
        if reply != 1:  # not the owner any more: the lease ran out (never deleted)
            lose(hold, attempt, "the release found it held by someone else or by nobody")
        return True

    def release(self, local_key: Hashable, hold: Hold) -> bool:
        """Release the key ``hold`` holds (compare-and-delete; a refusal marks it lost);
        False if it holds nothing here."""
        attempt = self._claim(hold)
        if attempt is None:
            return False
        try:
            reply = self.link.run(release(attempt.key.names, attempt.waiter))
        except BaseException:
            complete(self._withdraw_later, attempt)  # (again if another interrupt lands)
            raise
        return self._released(hold, attempt, reply)

    async def release_async(
        self, local_key: Hashable, hold: Hold
    ) -> tuple[bool, BaseException | None]:
        """As :meth:`release`, from an asyncio or trio task: the round trip finishes even
        if the task is cancelled meanwhile. Returns what :meth:`release` would, and the
        cancellation that came meanwhile (None if none), for the caller to raise once it
        has finished the release on its side."""
        attempt = self._claim(hold)
        if attempt is None:
            return False, None
        try:
            call = release(attempt.key.names, attempt.waiter)
            reply, cancelled = await self.link.finish_async(call)
        except BaseException:
            complete(self._withdraw_later, attempt)  # (again if another interrupt lands)
            raise
        return self._released(hold, attempt, reply), cancelled

    def abandon(self, local_key: Hashable, hold: Hold) -> bool:
        """After an interrupt or a cancellation: give back whatever ``hold`` holds or waits
        for, from the renewal thread; False if nothing."""
        # Claimed, then handed on: run again after an interrupt, it hands on what it
        # claimed; interrupted for good, the attempt is no longer renewed, and its place or
        # lease runs out.
        attempt = claim(self.held, self.abandoning, hold)
        if attempt is None:
            return False
        self._withdraw_later(attempt)
        del self.abandoning[hold]
        return True

    # -- the key, for anyone ---------------------------------------------------------

    def locked(self, local_key: Hashable) -> bool:
        """True if anyone holds the key in Redis (one round trip)."""
        return self.inspect(local_key)[0]

    def waiting(self, local_key: Hashable) -> int:
        """How many callers of other processes wait for the key (one round trip): a place
        in its queue per waiting process, and the callers queued behind it in that process
        (this process's own place and callers are not counted: its table counts them)."""
        found = self.inspect(local_key)
        return found.places + found.behind

    def inspect(self, local_key: Hashable) -> Inspected:
        """Held, the other processes' places, the holder's waiter id, and the callers that
        wait behind the others' attempts, in one round trip (this process's own count goes
        with it)."""
        holder, behind = self._behind(local_key)
        attempt = None if holder is None else self.held.get(holder)
        leaving = self.leaving.of(local_key)
        names = cast(RedisKey, local_key).names
        if attempt is None:
            call = inspect(names, leaving)
        else:
            attempt.behind = behind
            waiter = attempt.waiter
            call = inspect(names, leaving, waiter=waiter, behind=behind, keep_ms=self.lease_ms)
        return parse_inspect(self.link.run(call))

    # -- this process's callers behind its attempts --------------------------------

    def queue_changed(self, local_key: Hashable) -> None:
        """Callers joined or left ``local_key``'s queue here: their count goes to the
        server soon (from the renewal thread), if it has an attempt there."""
        self.changed_keys.add(local_key)
        renewer.report(self)

    not_held = staticmethod(not_held_error)
