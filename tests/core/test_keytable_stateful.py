"""A hypothesis state machine driving KeyTable directly, without threads or event loops.

Callers are plain :class:`Hold` objects. A queued caller brings a fake ``wake`` that records its
calls and can be told to fail (as when the waiter's event loop is closed). The machine takes
keys (``try_acquire``, ``enqueue``), withdraws waiters (a cancellation while waiting, or just
after the hand-off, which must then release), and releases (plainly, as a context manager, or
aborting the queue). A model predicts every outcome; after each step the invariants of the
brief are checked against the table.
"""

from __future__ import annotations

from collections.abc import Hashable

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from keyedlock import QueueFull
from keyedlock._core._keytable import (
    ABORTED,
    CANCELLED,
    GRANTED,
    WAITING,
    Hold,
    KeyTable,
    guard_is_owned,
)
from keyedlock._core._keytable import RELEASED as RELEASED_STATE

KEYS = ("a", "b")
OWNERS = (1, 2, 3)

#: What the model knows about a caller.
HOLDING = "holding"  # took a free key at once (never queued)
QUEUED = "queued"  # waiting in the key's queue
GRANTED_ = "granted"  # handed the key from the queue; holds it now
RELEASED = "released"  # held the key once; released since
WITHDRAWN = "withdrawn"  # left the queue (timeout, cancellation)
DROPPED = "dropped"  # handed the key, but its wake failed: skipped
ABORTED_ = "aborted"  # its wait was aborted by a failing holder


class Waker:
    """A fake ``wake`` callable: counts its calls, returns False when told to fail."""

    def __init__(self, table: KeyTable, fail: bool) -> None:
        self.table = table
        self.fail = fail
        self.calls = 0

    def __call__(self) -> bool:
        assert not guard_is_owned(self.table.guard), "wake() must run outside the table's guard"
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
        return f"<Caller {self.key} owner={self.hold.owner} {self.fate}>"


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

    def _hand_off(self, key: str) -> None:
        """The holder of ``key`` released it: the first waiter whose wake works gets it."""
        old = self.holder[key]
        assert old is not None
        old.fate = RELEASED
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

    # -- taking a key ------------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), owner=st.sampled_from(OWNERS))
    def try_acquire(self, key: str, owner: int) -> None:
        hold = Hold(owner)
        got = self.table.try_acquire(key, hold)
        current = self.holder[key]
        if current is None:
            assert got is hold
            caller = Caller(key, hold, None, HOLDING)
            self.holder[key] = caller
            self.callers.append(caller)
        else:
            assert got is current.hold

    @rule(
        key=st.sampled_from(KEYS),
        owner=st.sampled_from(OWNERS),
        fail=st.sampled_from([False, False, False, True]),
    )
    def enqueue(self, key: str, owner: int, fail: bool) -> None:
        hold = Hold(owner)
        waker = Waker(self.table, fail)
        current = self.holder[key]
        limit = self.table.max_waiters
        if current is not None and current.hold.owner == owner:
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

    # -- withdrawing -------------------------------------------------------------------------

    def _queued_before(self) -> list[Caller]:
        return [c for c in self.callers if c.queued]

    @precondition(lambda self: any(c.fate == QUEUED for c in self.callers))
    @rule(data=st.data())
    def withdraw_while_waiting(self, data: st.DataObject) -> None:
        waiting = [c for c in self.callers if c.fate == QUEUED]
        caller = data.draw(st.sampled_from(waiting))
        assert self.table.withdraw(caller.key, caller.hold) == WAITING
        caller.fate = WITHDRAWN
        self.queue[caller.key].remove(caller)

    @precondition(lambda self: any(c.fate == GRANTED_ for c in self.callers))
    @rule(data=st.data())
    def withdraw_after_hand_off(self, data: st.DataObject) -> None:
        """Timed out in the instant it was handed the key: it owns the key, then releases it."""
        granted = [c for c in self.callers if c.fate == GRANTED_]
        caller = data.draw(st.sampled_from(granted))
        assert self.table.withdraw(caller.key, caller.hold) == GRANTED
        self.table.release(caller.key, caller.hold)
        self._hand_off(caller.key)

    @precondition(lambda self: any(c.fate == GRANTED_ for c in self.callers))
    @rule(data=st.data())
    def cancel_after_hand_off(self, data: st.DataObject) -> None:
        """Cancelled in the instant it was handed the key: the key passes on in one step."""
        granted = [c for c in self.callers if c.fate == GRANTED_]
        caller = data.draw(st.sampled_from(granted))
        assert self.table.cancel(caller.key, caller.hold) == GRANTED
        self._hand_off(caller.key)

    @precondition(lambda self: any(c.fate == QUEUED for c in self.callers))
    @rule(data=st.data())
    def cancel_while_waiting(self, data: st.DataObject) -> None:
        """Cancelled while queued: withdrawn, no trace."""
        waiting = [c for c in self.callers if c.fate == QUEUED]
        caller = data.draw(st.sampled_from(waiting))
        assert self.table.cancel(caller.key, caller.hold) == WAITING
        caller.fate = WITHDRAWN
        self.queue[caller.key].remove(caller)

    @precondition(
        lambda self: any(c.queued and c.fate not in (QUEUED, GRANTED_) for c in self.callers)
    )
    @rule(data=st.data(), cancel=st.booleans())
    def withdraw_once_decided(self, data: st.DataObject, cancel: bool) -> None:
        """Withdrawing or cancelling a caller whose wait is over (and whose hold, if it
        had one, is released) changes nothing: nothing is released or handed on twice."""
        decided = [c for c in self._queued_before() if c.fate not in (QUEUED, GRANTED_)]
        caller = data.draw(st.sampled_from(decided))
        expected = {
            WITHDRAWN: CANCELLED,
            DROPPED: CANCELLED,
            ABORTED_: ABORTED,
            RELEASED: RELEASED_STATE,
        }
        give_up = self.table.cancel if cancel else self.table.withdraw
        assert give_up(caller.key, caller.hold) == expected[caller.fate]

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

    @precondition(lambda self: any(c is not None for c in self.holder.values()))
    @rule(data=st.data())
    def release_a_stale_hold(self, data: st.DataObject) -> None:
        """A context manager whose hold someone else already released: refused, no change."""
        key = data.draw(st.sampled_from([k for k, c in self.holder.items() if c is not None]))
        stale = [c.hold for c in self.callers if c.key == key and c.fate == RELEASED]
        hold = data.draw(st.sampled_from(stale)) if stale else Hold("stranger")
        with pytest.raises(RuntimeError, match="already released"):
            self.table.release(key, hold)

    @precondition(lambda self: any(c is not None for c in self.holder.values()))
    @rule(data=st.data())
    def release_aborting(self, data: st.DataObject) -> None:
        """on_error="stop": every waiter queued now ends with the cause; the key is free."""
        key = data.draw(st.sampled_from([k for k, c in self.holder.items() if c is not None]))
        current = self.holder[key]
        assert current is not None
        cause = RuntimeError(f"failure of {current!r}")
        self.table.release(key, current.hold, cause)
        current.fate = RELEASED
        self.holder[key] = None
        for caller in self.queue[key]:
            caller.fate = ABORTED_
            caller.woken = True
            caller.cause = cause
        self.queue[key].clear()

    # -- invariants --------------------------------------------------------------------------

    @invariant()
    def one_holder_per_key_and_no_idle_entry(self) -> None:
        for key in KEYS:
            current = self.holder[key]
            expected: Hashable | None = None if current is None else current.hold
            assert self.table.holds.get(key) is expected
            assert self.table.locked(key) == (current is not None)
        assert len(self.table) == sum(c is not None for c in self.holder.values())
        assert set(self.table.holds) <= set(KEYS)

    @invariant()
    def waiters_counts_the_live_queue(self) -> None:
        for key in KEYS:
            assert self.table.waiters(key) == len(self.queue[key])

    @invariant()
    def no_waiter_without_a_holder(self) -> None:
        for caller in self.callers:
            if caller.fate == QUEUED:
                assert caller.hold.state == WAITING
                assert caller.key in self.table.holds

    @invariant()
    def states_match(self) -> None:
        expected = {
            QUEUED: WAITING,
            GRANTED_: GRANTED,
            WITHDRAWN: CANCELLED,
            DROPPED: CANCELLED,
            ABORTED_: ABORTED,
        }
        for caller in self._queued_before():
            if caller.fate in expected:
                assert caller.hold.state == expected[caller.fate], caller
            elif caller.fate == RELEASED:
                assert caller.hold.state == RELEASED_STATE, caller
            if caller.fate == ABORTED_:
                assert caller.hold.cause is caller.cause

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


KeyTableMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None
)
test_keytable_state_machine = KeyTableMachine.TestCase
