"""FlightTable, the runtime-free single-flight state machine, against a model (hypothesis).

The machine drives :class:`~keyedlock._core._flight.FlightTable` directly, without threads or
event loops: callers join a key (``enqueue``), followers withdraw (a cancellation), leaders
finish with a value or an error (``finish``) or give up (``release``: a cancelled leader, whose
earliest follower takes over), a follower is cancelled in the very instant it is handed the
lead (asyncio passes it on, trio keeps it), the wake of a follower taking over is lost (its
loop closed), a leader standing for several callers passes the call to one of them
(``take_over``, waiting again for the others or not), keys are forgotten while a call runs
(the detached call must never disturb the newer one), and a fake clock moves for ``ttl``.
Each follower brings a fake ``wake`` that counts its calls; some report that their runtime
is gone.

Invariants: one leader per busy key and no entry for idle keys; every call's live followers are
queued behind its leader in arrival order, reachable from it and counted exactly; followers
woken exactly once, with the outcome of the call they joined; takeover in arrival order; only
unexpired successful values kept. At teardown every call ends: nobody may be left waiting.

The default run takes a couple of seconds; ``KEYEDLOCK_STRESS=long`` raises the number of
examples of the ``slow`` variant.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from keyedlock._core import (
    ABORTED,
    CANCELLED,
    GRANTED,
    IDLE,
    MISS,
    RELEASED,
    WAITING,
    FlightTable,
    Hold,
    outcome_of,
    state_of,
)

from ..support import LONG_STRESS

KEYS = ("a", "b", "c")

#: The ways the next operation on the table notices a lost wake.
LOST_NOTICED_BY = ("locked", "waiters", "len", "enqueue", "give_back_lost")


@dataclass(eq=False)
class Call:
    """The model of one call: its leader and its live followers in arrival order."""

    key: str
    leader: Hold
    followers: list[Hold] = field(default_factory=list)
    detached: bool = False  # forgotten: no longer the key's call, still serving its followers
    leaders: list[Hold] = field(default_factory=list)  # every leader it had, in order

    @property
    def taken_over(self) -> bool:
        """The current leader was a follower handed the lead (its state says GRANTED)."""
        return self.leader._state == GRANTED


class FlightMachine(RuleBasedStateMachine):
    """Drives a FlightTable and checks it against :class:`Call` models."""

    def __init__(self) -> None:
        super().__init__()
        self.ttl = 0.0
        self.table = FlightTable(self.ttl)
        self.now = 0.0
        self.calls: list[Call] = []
        self.wakes: dict[Hold, int] = {}
        self.dead: set[Hold] = set()  # followers whose runtime is gone: their wake fails
        self.outcomes: dict[Hold, object] = {}  # decided follower -> outcome it must hold
        self.ended: list[tuple[str, Hold]] = []  # followers no longer waiting (any way)
        self.kept: dict[str, tuple[float, object]] = {}  # model of table.results
        self.swept_at = -math.inf  # last time the table dropped expired values
        self.serial = 0
        self.joined: list[tuple[str, Hold]] = []  # every caller, in arrival order

    @initialize(ttl=st.sampled_from([0.0, 5.0]))
    def choose_ttl(self, ttl: float) -> None:
        self.ttl = ttl
        self.table = FlightTable(ttl)

    # -- helpers -----------------------------------------------------------

    def current(self, key: str) -> Call | None:
        """The key's call (not forgotten), if any."""
        found = [call for call in self.calls if call.key == key and not call.detached]
        assert len(found) <= 1, f"two current calls for {key!r}"
        return found[0] if found else None

    def wake_for(self, hold: Hold, alive: bool) -> Callable[[], bool]:
        def wake() -> bool:
            self.wakes[hold] += 1
            return alive

        return wake

    def sweep(self) -> None:
        """Model of the table dropping every expired value."""
        self.kept = {key: entry for key, entry in self.kept.items() if entry[0] > self.now}
        self.swept_at = self.now

    def with_followers(self) -> list[Call]:
        return [call for call in self.calls if call.followers]

    def taken_over(self) -> list[Call]:
        return [call for call in self.calls if call.taken_over]

    def pass_lead(self, call: Call) -> None:
        """Model: ``call``'s leader gave up; the earliest follower that can still run leads."""
        while call.followers:
            nxt = call.followers.pop(0)  # arrival order
            assert self.wakes[nxt] == 1
            if nxt in self.dead:  # its runtime is gone: the key passes on
                assert nxt._state == CANCELLED
                self.ended.append((call.key, nxt))
                continue
            assert nxt._state == GRANTED
            call.leader = nxt
            call.leaders.append(nxt)
            return
        self.calls.remove(call)

    # -- rules -------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), alive=st.sampled_from([True, True, True, False]))
    def join(self, key: str, alive: bool) -> None:
        """A caller arrives: it leads a new call, or follows the key's current one."""
        self._join(key, alive)

    def _join(self, key: str, alive: bool) -> None:
        hold = Hold(owner=object())
        self.wakes[hold] = 0
        self.joined.append((key, hold))
        leads = self.table.enqueue(key, hold, self.wake_for(hold, alive))
        call = self.current(key)
        if call is None:
            assert leads, "a caller of an idle key must lead"
            self.calls.append(Call(key, hold, leaders=[hold]))
        else:
            assert not leads, "a second leader for a busy key"
            assert hold._state == WAITING
            call.followers.append(hold)
            if not alive:
                self.dead.add(hold)

    @precondition(lambda self: self.with_followers())
    @rule(data=st.data(), cancel=st.booleans())
    def withdraw(self, data: st.DataObject, cancel: bool) -> None:
        """A waiting follower is cancelled (asyncio ``cancel``, trio's abort ``withdraw``):
        it leaves and nobody else notices."""
        call = data.draw(st.sampled_from(self.with_followers()))
        hold = data.draw(st.sampled_from(call.followers))
        give_up = self.table.cancel if cancel else self.table.withdraw
        assert give_up(call.key, hold) == WAITING
        assert hold._state == CANCELLED
        call.followers.remove(hold)
        self.ended.append((call.key, hold))

    @precondition(lambda self: self.ended)
    @rule(data=st.data())
    def withdraw_too_late(self, data: st.DataObject) -> None:
        """Withdrawing a follower whose wait already ended reports how it ended, changes nothing."""
        key, hold = data.draw(st.sampled_from(self.ended))
        state = state_of(hold)
        assert state in (ABORTED, CANCELLED)
        assert self.table.withdraw(key, hold) == state
        assert state_of(hold) == state

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data: st.DataObject, ok: bool) -> None:
        """The leader's call ends: every follower gets its outcome; a success may be kept."""
        call = data.draw(st.sampled_from(self.calls))
        self.serial += 1
        value: object = ("value", self.serial) if ok else MISS
        outcome = ("outcome", self.serial)
        shared = self.table.finish(call.key, call.leader, outcome, value, self.now)
        assert shared == bool(call.followers)
        for hold in call.followers:
            assert state_of(hold) == ABORTED
            assert outcome_of(hold) is outcome
            assert self.wakes[hold] == 1
            self.outcomes[hold] = outcome
            self.ended.append((call.key, hold))
        self.calls.remove(call)
        if ok and not call.detached and self.ttl > 0:
            self.kept.pop(call.key, None)
            self.kept[call.key] = (self.now + self.ttl, value)
            self.sweep()

    @precondition(lambda self: self.calls)
    @rule(data=st.data())
    def give_up(self, data: st.DataObject) -> None:
        """The leader is cancelled: the earliest follower that can still run takes over."""
        call = data.draw(st.sampled_from(self.calls))
        self.table.release(call.key, call.leader)
        assert call.leader._state == RELEASED
        self.pass_lead(call)

    @precondition(lambda self: self.taken_over())
    @rule(data=st.data(), asyncio=st.booleans())
    def cancel_as_the_lead_arrives(self, data: st.DataObject, asyncio: bool) -> None:
        """A follower is cancelled in the instant it is handed the lead.

        asyncio (``cancel``): it never runs its function, the lead passes on to the next
        follower at once. trio (abort, ``withdraw``): the hand-off wins, it resumes as the
        leader (and meets the cancellation inside its function later).
        """
        call = data.draw(st.sampled_from(self.taken_over()))
        leader = call.leader
        if asyncio:
            assert self.table.cancel(call.key, leader) == GRANTED
            assert leader._state == RELEASED
            self.pass_lead(call)
        else:
            assert self.table.withdraw(call.key, leader) == GRANTED
            assert leader._state == GRANTED

    @precondition(lambda self: self.calls)
    @rule(data=st.data(), again=st.booleans())
    def take_over(self, data: st.DataObject, again: bool) -> None:
        """The leader stands for several callers (an asyncio herd handed the call): one of
        them leads in its place with a hold of its own. With ``again`` the old hold waits
        again, first in line, for the others; else it is done. A detached call's first
        leader cannot be taken over (it is no longer the key's entry, and was never handed
        the call): nothing changes."""
        call = data.draw(st.sampled_from(self.calls))
        old = call.leader
        new = Hold(owner=object())
        self.wakes[new] = 0
        wake = self.wake_for(old, True) if again else None
        leads = old._state == GRANTED or not call.detached
        assert self.table.take_over(call.key, old, new, wake) == leads
        if not leads:
            assert new._state == IDLE
            return
        # The new hold is the earliest of the callers the old one stood for, which stands
        # for the later ones (if it waits again); it only passed the call on.
        at = next(i for i, (_, h) in enumerate(self.joined) if h is old)
        self.joined.insert(at, (call.key, new))
        assert new._state == GRANTED
        call.leader = new
        call.leaders[-1] = new
        if again:
            assert old._state == WAITING
            self.wakes[old] = 0  # a waiter again, woken once more
            self.dead.discard(old)
            call.followers.insert(0, old)
        else:
            assert old._state == RELEASED

    @precondition(lambda self: self.taken_over())
    @rule(
        data=st.data(),
        gave_up_first=st.booleans(),
        noticed_by=st.sampled_from(LOST_NOTICED_BY),
    )
    def lose_the_lead_wake(self, data: st.DataObject, gave_up_first: bool, noticed_by: str) -> None:
        """The wake handing the lead to a follower is lost (its loop closed with it queued).

        The next operation on the table passes the lead on; if the lead was already given up
        in between, the lost wake changes nothing.
        """
        call = data.draw(st.sampled_from(self.taken_over()))
        key = call.key
        leader = call.leader
        self.table.lost(key, leader)
        if gave_up_first:
            self.table.release(key, leader)
        other = next(k for k in KEYS if k != key)
        if noticed_by == "locked":
            self.table.locked(other)
        elif noticed_by == "waiters":
            self.table.waiters(other)
        elif noticed_by == "len":
            len(self.table)
        elif noticed_by == "enqueue":
            self._join(other, True)
        else:
            self.table.give_back_lost()
        assert leader._state == (RELEASED if gave_up_first else CANCELLED)
        self.pass_lead(call)

    @rule(key=st.sampled_from(KEYS))
    def forget(self, key: str) -> None:
        """New callers of the key start a new call; the current one keeps its followers."""
        self.table.forget(key)
        call = self.current(key)
        if call is not None:
            call.detached = True
        self.kept.pop(key, None)

    @precondition(lambda self: any(not call.detached for call in self.calls))
    @rule(data=st.data())
    def forget_and_call_again(self, data: st.DataObject) -> None:
        """``forget`` during a call, and a caller right after: a newer call beside the detached
        one, which keeps its followers and, whatever it does next, never removes the newer."""
        call = data.draw(st.sampled_from([c for c in self.calls if not c.detached]))
        self.forget(call.key)
        self._join(call.key, True)
        newer = self.current(call.key)
        assert newer is not None
        assert newer is not call
        assert self.table._holds[call.key] is newer.leader
        assert self.table.waiters(call.key) == 0

    @rule(dt=st.sampled_from([0.5, 2.0, 5.0, 20.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(key=st.sampled_from(KEYS))
    def lookup(self, key: str) -> None:
        """A kept value is found while fresh; an expired one is not. A look sweeps the table
        if any value expired (for any key: the oldest is first)."""
        entry = self.kept.get(key)
        oldest = next(iter(self.kept.values()), None)
        found = self.table.cached(key, self.now)
        if entry is not None and entry[0] > self.now:
            assert found is entry[1]
        else:
            assert found is MISS
        if oldest is not None and oldest[0] <= self.now:
            self.sweep()

    # -- invariants --------------------------------------------------------

    @invariant()
    def one_leader_per_busy_key_and_no_idle_key(self) -> None:
        current = {key: call for key in KEYS if (call := self.current(key)) is not None}
        assert set(self.table._holds) == set(current)
        assert len(self.table) == len(current)
        for key, call in current.items():
            assert self.table._holds[key] is call.leader
            assert self.table.locked(key)
            assert self.table.waiters(key) == len(call.followers)

    @invariant()
    def followers_queue_behind_their_leader_in_arrival_order(self) -> None:
        """For current and detached calls alike: the live queue is the model's, in order,
        and every waiting follower is reachable from its leader (its wait will end)."""
        order = {hold: i for i, (_, hold) in enumerate(self.joined)}
        for call in self.calls:
            queue = call.leader._waiters
            live = [] if queue is None else [h for h in queue if h._state == WAITING]
            assert live == call.followers
            assert (0 if queue is None else queue.live) == len(live)
            assert [order[h] for h in live] == sorted(order[h] for h in live)
            for hold in call.followers:
                assert hold._queue is queue
        waiting = {h for _, h in self.joined if state_of(h) == WAITING}
        assert waiting == {h for call in self.calls for h in call.followers}

    @invariant()
    def takeovers_follow_arrival_order(self) -> None:
        order = {hold: i for i, (_, hold) in enumerate(self.joined)}
        for call in self.calls:
            assert call.leaders[-1] is call.leader
            indices = [order[h] for h in call.leaders]
            assert indices == sorted(indices)

    @invariant()
    def waiting_followers_are_untouched(self) -> None:
        for call in self.calls:
            if call.leader._state != IDLE:  # it took over
                assert call.leader._state == GRANTED
            for hold in call.followers:
                assert hold._state == WAITING
                assert self.wakes[hold] == 0

    @invariant()
    def followers_are_woken_once_with_their_calls_outcome(self) -> None:
        assert all(count <= 1 for count in self.wakes.values())
        for hold, outcome in self.outcomes.items():
            assert state_of(hold) == ABORTED
            assert outcome_of(hold) is outcome
            assert self.wakes[hold] == 1

    @invariant()
    def only_unexpired_successes_are_kept(self) -> None:
        results = self.table.results
        assert list(results.items()) == list(self.kept.items())
        for expiry, value in results.values():
            assert expiry > self.swept_at
            assert isinstance(value, tuple)
            assert value[0] == "value"
        if self.ttl == 0:
            assert not results

    def teardown(self) -> None:
        """Every call ends in turn (current and detached): nobody may be left waiting."""
        if sys.exc_info()[0] is not None:
            return  # a step failed: that failure is the report
        while self.calls:
            call = self.calls[0]
            self.serial += 1
            outcome = ("outcome", self.serial)
            self.table.finish(call.key, call.leader, outcome, MISS, self.now)
            for hold in call.followers:
                self.outcomes[hold] = outcome
            self.calls.remove(call)
        assert not self.table._holds
        assert len(self.table) == 0
        stuck = [h for _, h in self.joined if state_of(h) in (WAITING, GRANTED)]
        assert not stuck, f"callers left waiting or leading: {stuck}"
        self.followers_are_woken_once_with_their_calls_outcome()
        for _, hold in self.joined:
            assert self.wakes[hold] <= 1


FlightMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFlightTable = FlightMachine.TestCase


class FlightMachineLong(FlightMachine):
    """The same machine, many more and longer runs (``nox -s stress``)."""


FlightMachineLong.TestCase.settings = settings(
    max_examples=1000 if LONG_STRESS else 200,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestFlightTableLong = pytest.mark.timeout(900)(pytest.mark.slow(FlightMachineLong.TestCase))
