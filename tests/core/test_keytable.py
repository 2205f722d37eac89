"""Targeted interleavings of KeyTable, written out step by step."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from keyedlock import QueueFull
from keyedlock._core import (
    ABORTED,
    CANCELLED,
    GRANTED,
    WAITING,
    Hold,
    KeyTable,
    outcome_of,
    state_of,
)


class Log:
    """Wake callables that log which waiter was woken."""

    def __init__(self) -> None:
        self.woken: list[str] = []

    def waker(self, name: str, works: bool = True) -> Callable[[], bool]:
        def wake() -> bool:
            self.woken.append(name)
            return works

        return wake


def queued(table: KeyTable, log: Log, *names: str, works: bool = True) -> list[Hold]:
    holds = []
    for name in names:
        hold = Hold(name)
        assert table.enqueue("k", hold, log.waker(name, works)) is False
        holds.append(hold)
    return holds


def test_an_idle_key_has_no_entry() -> None:
    table = KeyTable()
    hold = Hold("h")
    assert table.take("k", hold) is hold
    assert table._holds == {"k": hold}
    table.release("k")
    assert table._holds == {}
    assert table.waiters("k") == 0
    assert not table.locked("k")


def test_hand_off_is_fifo_and_direct() -> None:
    table, log = KeyTable(), Log()
    holder = Hold("h")
    assert table.enqueue("k", holder, log.waker("h")) is True
    first, second = queued(table, log, "first", "second")
    table.release("k")
    assert table._holds["k"] is first  # the key never looked free
    assert first._state == GRANTED
    assert table.take("k", Hold("late")) is first
    table.release("k", first)
    assert table._holds["k"] is second
    table.release("k", second)
    assert log.woken == ["first", "second"]
    assert table._holds == {}


def test_a_waiter_that_cannot_be_woken_is_skipped() -> None:
    table, log = KeyTable(), Log()
    table.take("k", Hold("h"))
    (dead,) = queued(table, log, "dead", works=False)
    (alive,) = queued(table, log, "alive")
    table.release("k")
    assert dead._state == CANCELLED
    assert table._holds["k"] is alive
    assert log.woken == ["dead", "alive"]
    table.release("k")
    assert table._holds == {}


def test_a_key_whose_waiters_all_cannot_be_woken_is_freed() -> None:
    table, log = KeyTable(), Log()
    table.take("k", Hold("h"))
    queued(table, log, "dead-1", "dead-2", works=False)
    table.release("k")
    assert table._holds == {}
    assert log.woken == ["dead-1", "dead-2"]


def test_withdraw_while_waiting_and_after_hand_off() -> None:
    table, log = KeyTable(), Log()
    table.take("k", Hold("h"))
    first, second, third = queued(table, log, "first", "second", "third")
    assert table.withdraw("k", second) == WAITING
    assert table.withdraw("k", second) == CANCELLED
    assert table.waiters("k") == 2
    table.release("k")
    assert table.withdraw("k", first) == GRANTED  # handed over in the same instant
    table.release("k", first)  # ...so the withdrawing caller passes the key on
    assert table._holds["k"] is third
    table.release("k", third)
    assert log.woken == ["first", "third"]
    assert table._holds == {}


def test_on_queue_hears_of_every_caller_joining_or_leaving_a_queue() -> None:
    """A wide scope counts the callers queued here (see RedisScope): it hears of each one
    that queues or withdraws, and of nothing else."""
    table, log = KeyTable(), Log()
    heard: list[tuple[str, int]] = []
    table.on_queue = lambda key: heard.append((str(key), table.waiters(key)))
    holder = Hold("h")
    assert table.take("k", holder) is holder  # (the uncontended path: nothing to hear)
    first, second, third = queued(table, log, "first", "second", "third")
    assert heard == [("k", 1), ("k", 2), ("k", 3)]
    assert table.withdraw("k", second) == WAITING
    assert table.withdraw("k", second) == CANCELLED  # (already gone: nothing new)
    assert table.cancel("k", third) == WAITING
    assert heard[3:] == [("k", 2), ("k", 1)]
    table.release("k")  # a hand-off: the new holder asks with its own count
    assert table.cancel("k", first) == GRANTED
    assert len(heard) == 5
    assert table._holds == {}
    table.take("k", holder)
    queued(table, log, "fourth")
    assert table.abandon("k", holder, ValueError("its owner ended"))
    assert heard[5:] == [("k", 1), ("k", 0)]  # (its waiters end: none is left behind it)
    table.release("k")


def test_a_failing_on_queue_does_not_break_the_table() -> None:
    table, log = KeyTable(), Log()

    def fail(key: object) -> None:
        raise OSError("a count that cannot be sent")

    table.on_queue = fail
    table.take("k", Hold("h"))
    (waiter,) = queued(table, log, "w")
    assert table.withdraw("k", waiter) == WAITING
    table.release("k")
    assert table._holds == {}


def test_abort_ends_every_wait_with_the_cause() -> None:
    table, log = KeyTable(), Log()
    holder = Hold("h")
    table.take("k", holder)
    first, second = queued(table, log, "first", "second")
    cause = ValueError("failed")
    table.release("k", holder, cause)
    assert (state_of(first), state_of(second)) == (ABORTED, ABORTED)
    assert outcome_of(first) is cause
    assert outcome_of(second) is cause
    assert table._holds == {}
    assert table.withdraw("k", first) == ABORTED
    assert log.woken == ["first", "second"]


def test_many_withdrawals_keep_the_order_of_the_rest() -> None:
    table, log = KeyTable(), Log()
    table.take("k", Hold("h"))
    names = [f"w{i}" for i in range(40)]
    holds = queued(table, log, *names)
    keep = {0, 17, 33, 39}
    for i, hold in enumerate(holds):
        if i not in keep:
            assert table.withdraw("k", hold) == WAITING
    assert table.waiters("k") == len(keep)
    for _ in keep:
        table.release("k")
    table.release("k")
    assert log.woken == [names[i] for i in sorted(keep)]
    assert table._holds == {}


def test_max_waiters_counts_live_waiters_only() -> None:
    table, log = KeyTable(max_waiters=1), Log()
    table.take("k", Hold("h"))
    (first,) = queued(table, log, "first")
    with pytest.raises(QueueFull):
        table.enqueue("k", Hold("second"), log.waker("second"))
    assert table.withdraw("k", first) == WAITING
    queued(table, log, "third")
    assert table.waiters("k") == 1
    table.release("k")
    table.release("k")


def test_a_failed_wake_racing_a_release_does_not_grant_twice() -> None:
    """The key is handed to ``dead``, whose wake fails (its loop is closed); between the
    hand-off and that failure, another thread calls ``release(key)``, which releases whoever
    holds: ``dead``'s hold, so the key goes to ``second``. The failed wake must not then hand
    the key on a second time: ``second`` holds it, ``third`` still waits."""
    table, log = KeyTable(), Log()
    table.take("k", Hold("h"))

    def wake_dead() -> bool:
        log.woken.append("dead")
        table.release("k")  # another thread, in the instant before this wake fails
        return False

    dead = Hold("dead")
    assert table.enqueue("k", dead, wake_dead) is False
    second, third = queued(table, log, "second", "third")
    table.release("k")
    assert log.woken == ["dead", "second"]
    assert table._holds["k"] is second
    assert second._state == GRANTED
    assert third._state == WAITING  # not also granted: that would be two holders at once
    assert table.waiters("k") == 1
