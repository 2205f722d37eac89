"""A hypothesis state machine driving KeyTable directly, without threads or event loops.

Callers are plain :class:`Hold` objects. A queued caller brings a fake ``wake`` that records its
calls and can be told to fail (as when the waiter's event loop is closed). The machine takes
keys (``try_acquire``, which is also what ``timeout=0`` does, and ``enqueue``, alone or a herd
at once), withdraws waiters (a timeout or a cancellation while waiting, or in the instant of
the hand-off, which must then release), loses a wake that was sent (a loop closed with the
wake-up still queued), and releases (plainly, as a context manager, or aborting the queue as
``on_error="stop"`` does). A model predicts every outcome.

Invariants, after every step: at most one holder per key and no entry for an idle key; the live
queue is exactly the model's, in arrival order (FIFO), and ``waiters()`` counts it; every
waiting caller is reachable from its key's holder, so a release reaches it; grants follow
arrival order; every decided waiter was woken exactly once. At teardown the holders release
until the table is empty, and no caller may be left waiting (none parked forever).

The default run takes a couple of seconds; ``KEYEDLOCK_STRESS=long`` raises the number of
examples of the ``slow`` variant.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from keyedlock import QueueFull
from keyedlock._core import (
    ABORTED,
    CANCELLED,
    GRANTED,
    WAITING,
    Hold,
    KeyTable,
    decided,
    guard_is_owned,
    outcome_of,
    state_of,
)
from keyedlock._core import RELEASED as RELEASED_STATE
from keyedlock._core._keytable import _COMPACT_SLACK

from ..support import LONG_STRESS

KEYS = ("a", "b")
OWNERS = (1, 2, 3)

#: What the model knows about a caller.
HOLDING = "holding"  # took a free key at once (never queued)
QUEUED = "queued"  # waiting in the key's queue
GRANTED_ = "granted"  # handed the key from the queue; holds it now
RELEASED = "released"  # held the key once; released since
WITHDRAWN = "withdrawn"  # left the queue (timeout, cancellation)
DROPPED = "dropped"  # handed the key, but its wake failed or was lost: skipped
ABORTED_ = "aborted"  # its wait was aborted by a failing holder

#: The table state each decided fate must show.
STATE_OF = {
    QUEUED: WAITING,
    GRANTED_: GRANTED,
    WITHDRAWN: CANCELLED,
    DROPPED: CANCELLED,
    ABORTED_: ABORTED,
    RELEASED: RELEASED_STATE,
}

#: Whether a waiter's wake will fail (its runtime is gone): one in four.
FAILS = st.sampled_from([False, False, False, True])

#: The ways a caller's next operation on the table notices a lost wake.
LOST_NOTICED_BY = ("locked", "waiters", "len", "enqueue", "give_back_lost")


class Waker:
    """A fake ``wake`` callable: counts its calls, returns False when told to fail."""

    def __init__(self, table: KeyTable, fail: bool) -> None:
        self.table = table
        self.fail = fail
        self.calls = 0

    def __call__(self) -> bool:
        assert not guard_is_owned(self.table._guard), "wake() must run outside the table's guard"
        self.calls += 1
        return not self.fail


class Caller:
    """One hold under test and what the model expects of it."""

    def __init__(self, key: str, hold: Hold, waker: Waker | None, fate: str) -> None:
        self.key = key
        self.hold = hold
        self.waker = waker
        self.fate = fate
        self.queued = fate == QUEUED  # it waited in a queue at some point
        self.woken = False  # the model's view: decided (granted, aborted, dropped) by a wake
        self.cause: object = None

    def __repr__(self) -> str:
        return f"<Caller {self.key} owner={self.hold._owner} {self.fate}>"


class KeyTableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.table = KeyTable()
        self.holder: dict[str, Caller | None] = dict.fromkeys(KEYS)
        self.queue: dict[str, list[Caller]] = {key: [] for key in KEYS}
        self.callers: list[Caller] = []
        self.enqueued: dict[str, list[Caller]] = {key: [] for key in KEYS}
        self.granted: dict[str, list[Caller]] = {key: [] for key in KEYS}

    @initialize(max_waiters=st.none() | st.integers(0, 3))
    def make_table(self, max_waiters: int | None) -> None:
        self.table = KeyTable(max_waiters)

    # -- the model's hand-off ----------------------------------------------------------------

    def _hand_off(self, key: str, old_fate: str = RELEASED) -> None:
        """The holder of ``key`` gave it up: the first waiter whose wake works gets it."""
        old = self.holder[key]
        assert old is not None
        old.fate = old_fate
        self.holder[key] = None
        queue = self.queue[key]
        while queue:
            nxt = queue.pop(0)
            nxt.woken = True
            assert nxt.waker is not None
            if nxt.waker.fail:
                nxt.fate = DROPPED
                continue
            nxt.fate = GRANTED_
            self.holder[key] = nxt
            self.granted[key].append(nxt)
            return

    def _withdrawn(self, caller: Caller) -> None:
        """The model's side of a successful withdrawal; checks the queue stays compact."""
        caller.fate = WITHDRAWN
        self.queue[caller.key].remove(caller)
        queue = caller.hold._queue
        assert len(queue) <= 2 * queue.live + _COMPACT_SLACK, "withdrawn waiters pile up"

    def _waiting(self) -> list[Caller]:
        return [c for c in self.callers if c.fate == QUEUED]

    def _granted(self) -> list[Caller]:
        return [c for c in self.callers if c.fate == GRANTED_]

    def _held_keys(self) -> list[str]:
        return [k for k, c in self.holder.items() if c is not None]

    # -- taking a key ------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS))
    def try_acquire(self, key: str, owner: int) -> None:
        """``acquire(blocking=False)`` and ``timeout=0``: take a free key, else change nothing.

        Never raises (not even for the holder's own owner), never queues, wakes nobody.
        """
        hold = Hold(owner)
        current = self.holder[key]
        before = None if current is None else current.hold._waiters
        snapshot = None if before is None else (list(before), before.live)
        calls = [c.waker.calls for c in self.callers if c.waker is not None]
        got = self.table.take(key, hold)
        if current is None:
            assert got is hold
            caller = Caller(key, hold, None, HOLDING)
            self.holder[key] = caller
            self.callers.append(caller)
        else:
            assert got is current.hold
            after = current.hold._waiters
            assert after is before
            assert (None if after is None else (list(after), after.live)) == snapshot
        assert [c.waker.calls for c in self.callers if c.waker is not None] == calls

    def _enqueue(self, key: str, owner: object, fail: bool) -> None:
        hold = Hold(owner)
        waker = Waker(self.table, fail)
        current = self.holder[key]
        limit = self.table.max_waiters
        if current is not None and current.hold._owner == owner:
            with pytest.raises(RuntimeError, match="already held by this owner"):
                self.table.enqueue(key, hold, waker)
            return
        if current is not None and limit is not None and len(self.queue[key]) >= limit:
            with pytest.raises(QueueFull):
                self.table.enqueue(key, hold, waker)
            return
        took = self.table.enqueue(key, hold, waker)
        if current is None:
            assert took is True
            caller = Caller(key, hold, waker, HOLDING)
            self.holder[key] = caller
        else:
            assert took is False
            caller = Caller(key, hold, waker, QUEUED)
            self.queue[key].append(caller)
            self.enqueued[key].append(caller)
        self.callers.append(caller)

    @rule(
        key=st.sampled_from(KEYS),
        owner=st.sampled_from(OWNERS),
        fail=FAILS,
    )
    def enqueue(self, key: str, owner: int, fail: bool) -> None:
        self._enqueue(key, owner, fail)

    @rule(key=st.sampled_from(KEYS), fails=st.lists(FAILS, min_size=3, max_size=14))
    def enqueue_herd(self, key: str, fails: list[bool]) -> None:
        """Many callers with owners of their own arrive one after another (fills the queue)."""
        for fail in fails:
            self._enqueue(key, object(), fail)

    # -- withdrawing -------------------------------------------------------------------------

    @precondition(lambda self: self._waiting())
    @rule(data=st.data())
    def time_out_while_waiting(self, data: st.DataObject) -> None:
        """The timer fired first (the adapters look at the state, then withdraw): no trace."""
        caller = data.draw(st.sampled_from(self._waiting()))
        assert decided(caller.hold) == WAITING
        assert self.table.withdraw(caller.key, caller.hold) == WAITING
        self._withdrawn(caller)

    @precondition(lambda self: self._waiting())
    @rule(data=st.data())
    def cancel_while_waiting(self, data: st.DataObject) -> None:
        """Cancelled while queued (asyncio; a thread's KeyboardInterrupt): withdrawn, no trace."""
        caller = data.draw(st.sampled_from(self._waiting()))
        assert self.table.cancel(caller.key, caller.hold) == WAITING
        self._withdrawn(caller)

    @precondition(lambda self: self._waiting())
    @rule(data=st.data())
    def withdraw_many(self, data: st.DataObject) -> None:
        """Several waiters of one key give up (a burst of timeouts): the rest keep their order."""
        key = data.draw(st.sampled_from(sorted({c.key for c in self._waiting()})))
        for caller in list(self.queue[key]):
            if data.draw(st.booleans()):
                assert self.table.withdraw(key, caller.hold) == WAITING
                self._withdrawn(caller)

    @precondition(lambda self: self._granted())
    @rule(data=st.data())
    def time_out_after_hand_off(self, data: st.DataObject) -> None:
        """Timed out in the instant it was handed the key: it owns the key, then releases it."""
        caller = data.draw(st.sampled_from(self._granted()))
        assert decided(caller.hold) == GRANTED
        assert self.table.withdraw(caller.key, caller.hold) == GRANTED
        self.table.release(caller.key, caller.hold)
        self._hand_off(caller.key)

    @precondition(lambda self: self._granted())
    @rule(data=st.data())
    def cancel_after_hand_off(self, data: st.DataObject) -> None:
        """Cancelled in the instant it was handed the key: the key passes on in one step."""
        caller = data.draw(st.sampled_from(self._granted()))
        assert self.table.cancel(caller.key, caller.hold) == GRANTED
        self._hand_off(caller.key)

    @precondition(lambda self: any(c.fate == ABORTED_ and c.queued for c in self.callers))
    @rule(data=st.data())
    def time_out_as_aborted(self, data: st.DataObject) -> None:
        """The timer fired as the wait was aborted: the abort wins, with its cause."""
        aborted = [c for c in self.callers if c.fate == ABORTED_]
        caller = data.draw(st.sampled_from(aborted))
        assert decided(caller.hold) == ABORTED
        assert self.table.withdraw(caller.key, caller.hold) == ABORTED
        assert outcome_of(caller.hold) is caller.cause

    @precondition(
        lambda self: any(c.queued and c.fate not in (QUEUED, GRANTED_) for c in self.callers)
    )
    @rule(data=st.data(), cancel=st.booleans())
    def withdraw_once_decided(self, data: st.DataObject, cancel: bool) -> None:
        """Withdrawing or cancelling a caller whose wait is over (and whose hold, if it
        had one, is released) changes nothing: nothing is released or handed on twice."""
        done = [c for c in self.callers if c.queued and c.fate not in (QUEUED, GRANTED_)]
        caller = data.draw(st.sampled_from(done))
        give_up = self.table.cancel if cancel else self.table.withdraw
        assert give_up(caller.key, caller.hold) == STATE_OF[caller.fate]

    @precondition(lambda self: self._granted())
    @rule(
        data=st.data(),
        released_first=st.booleans(),
        noticed_by=st.sampled_from(LOST_NOTICED_BY),
    )
    def lose_a_wake(self, data: st.DataObject, released_first: bool, noticed_by: str) -> None:
        """The wake sent to a granted waiter is lost (its loop closed with the wake-up queued).

        The next operation on the table passes the key on; if someone released the key in
        between, the lost wake changes nothing.
        """
        caller = data.draw(st.sampled_from(self._granted()))
        key = caller.key
        self.table.lost(key, caller.hold)
        if released_first:
            self.table.release(key)
            self._hand_off(key)
        else:
            self._hand_off(key, DROPPED)
        other = next(k for k in KEYS if k != key)
        if noticed_by == "locked":
            self.table.locked(other)
        elif noticed_by == "waiters":
            self.table.waiters(other)
        elif noticed_by == "len":
            len(self.table)
        elif noticed_by == "enqueue":
            self._enqueue(other, object(), False)
        else:
            self.table.give_back_lost()

    # -- releasing ---------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), as_owner=st.booleans())
    def release(self, key: str, as_owner: bool) -> None:
        """``release(key)`` (anyone), or a context manager releasing its own hold."""
        current = self.holder[key]
        if current is None:
            with pytest.raises(RuntimeError, match="not held"):
                self.table.release(key)
            return
        self.table.release(key, current.hold if as_owner else None)
        self._hand_off(key)

    @precondition(lambda self: self._held_keys())
    @rule(data=st.data())
    def release_a_stale_hold(self, data: st.DataObject) -> None:
        """A context manager whose hold someone else already released: refused, no change."""
        key = data.draw(st.sampled_from(self._held_keys()))
        stale = [c.hold for c in self.callers if c.key == key and c.fate == RELEASED]
        hold = data.draw(st.sampled_from(stale)) if stale else Hold("stranger")
        with pytest.raises(RuntimeError, match="already released"):
            self.table.release(key, hold)

    @precondition(lambda self: self._held_keys())
    @rule(data=st.data(), newcomer=st.booleans())
    def release_aborting(self, data: st.DataObject, newcomer: bool) -> None:
        """on_error="stop": exactly the waiters queued now end with the cause; the key is free.

        Callers that withdrew before keep their withdrawal; a caller arriving right after the
        abort starts fresh and takes the key.
        """
        key = data.draw(st.sampled_from(self._held_keys()))
        current = self.holder[key]
        assert current is not None
        cause = RuntimeError(f"failure of {current!r}")
        queued_now = list(self.queue[key])
        calls = {id(c): c.waker.calls for c in self.callers if c.waker is not None}
        self.table.release(key, current.hold, cause)
        current.fate = RELEASED
        self.holder[key] = None
        for caller in queued_now:
            caller.fate = ABORTED_
            caller.woken = True
            caller.cause = cause
        self.queue[key].clear()
        hit = [
            c for c in self.callers if state_of(c.hold) == ABORTED and outcome_of(c.hold) is cause
        ]
        assert hit == queued_now, "the abort must reach exactly the waiters queued at that moment"
        for caller in self.callers:
            if caller.waker is not None:
                assert caller.waker.calls == calls[id(caller)] + (caller in queued_now)
        assert key not in self.table._holds
        if newcomer:
            self._enqueue(key, object(), False)
            assert self.holder[key] is not None
            assert self.holder[key] is self.callers[-1]

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def one_holder_per_key_and_no_idle_entry(self) -> None:
        for key in KEYS:
            current = self.holder[key]
            expected: Hashable | None = None if current is None else current.hold
            assert self.table._holds.get(key) is expected
            assert self.table.locked(key) == (current is not None)
        assert len(self.table) == sum(c is not None for c in self.holder.values())
        assert set(self.table._holds) <= set(KEYS)

    @invariant()
    def waiters_counts_the_live_queue(self) -> None:
        for key in KEYS:
            assert self.table.waiters(key) == len(self.queue[key])

    @invariant()
    def the_live_queue_is_the_arrival_order(self) -> None:
        """FIFO: the table's live waiters are exactly the model's queue, in the same order."""
        for key in KEYS:
            current = self.holder[key]
            if current is None:
                assert not self.queue[key]
                continue
            queue = current.hold._waiters
            live = [] if queue is None else [h for h in queue if h._state == WAITING]
            assert live == [c.hold for c in self.queue[key]]
            assert (0 if queue is None else queue.live) == len(live)

    @invariant()
    def every_waiter_is_reachable_from_its_holder(self) -> None:
        """A waiting caller sits in its key's holder's queue: some release will decide it."""
        for caller in self.callers:
            if caller.fate == QUEUED:
                assert caller.hold._state == WAITING
                holder = self.table._holds.get(caller.key)
                assert holder is not None
                assert holder._waiters is caller.hold._queue
                assert caller.hold in holder._waiters
            elif caller.queued:
                assert state_of(caller.hold) != WAITING, caller

    @invariant()
    def states_match(self) -> None:
        for caller in self.callers:
            if caller.queued:
                assert state_of(caller.hold) == STATE_OF[caller.fate], caller
            if caller.fate == ABORTED_:
                assert outcome_of(caller.hold) is caller.cause

    @invariant()
    def fifo(self) -> None:
        for key in KEYS:
            handed = [c for c in self.enqueued[key] if c in self.granted[key]]
            assert self.granted[key] == handed

    @invariant()
    def every_decided_waiter_was_woken_exactly_once(self) -> None:
        for caller in self.callers:
            if caller.waker is not None:
                assert caller.waker.calls == (1 if caller.woken else 0), caller

    def teardown(self) -> None:
        """Every holder releases in turn: nobody may be left waiting, and the table empties."""
        if sys.exc_info()[0] is not None:
            return  # a step failed: that failure is the report
        for key in KEYS:
            while (current := self.holder[key]) is not None:
                self.table.release(key, current.hold)
                self._hand_off(key)
        assert not self.table._holds
        assert len(self.table) == 0
        stuck = [c for c in self.callers if c.fate == QUEUED or state_of(c.hold) == WAITING]
        assert not stuck, f"waiters left parked forever: {stuck}"
        self.states_match()
        self.fifo()
        self.every_decided_waiter_was_woken_exactly_once()


KeyTableMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None
)
test_keytable_state_machine = KeyTableMachine.TestCase


class KeyTableMachineLong(KeyTableMachine):
    """The same machine, many more and longer runs (``nox -s stress``)."""


KeyTableMachineLong.TestCase.settings = settings(
    max_examples=1000 if LONG_STRESS else 200,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_keytable_state_machine_long = pytest.mark.timeout(900)(
    pytest.mark.slow(KeyTableMachineLong.TestCase)
)
