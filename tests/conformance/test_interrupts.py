"""Interrupts and lost wake-ups: nothing is left locked.

A KeyboardInterrupt (or any exception raised by a signal handler) can land between any two calls.
These tests raise one at the exact points where it used to leave the table's guard or a key held
(a ``holds`` dict that raises on cue stands in for the signal), and check that a wake-up dropped
by a closed asyncio loop passes the key on.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Hashable, Iterator
from typing import Any

import pytest

from keyedlock import KeyedLock, SingleFlight
from keyedlock._core import guard_is_owned

from ..support import WAIT, Interrupts, start_thread, table_of, wait_until, wait_waiters


class InterruptingDict(dict[Hashable, Any]):
    """A ``holds`` table that raises KeyboardInterrupt once, right after the operation ``when``
    (the moment a signal handler would raise, after the call returned)."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.when: str | None = when

    def _fire(self, operation: str) -> None:
        if self.when == operation:
            self.when = None
            raise KeyboardInterrupt

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        self._fire("contains")
        return found

    def get(self, key: Hashable, default: Any = None) -> Any:
        value = super().get(key, default)
        self._fire("get")
        return value

    def setdefault(self, key: Hashable, default: Any = None) -> Any:
        value = super().setdefault(key, default)
        self._fire("setdefault")
        return value


@pytest.fixture
def interrupting(request: pytest.FixtureRequest) -> Iterator[tuple[KeyedLock, InterruptingDict]]:
    lock = KeyedLock()
    holds = InterruptingDict(request.param)
    table = table_of(lock)
    table._holds = holds
    table.take = holds.setdefault
    table.holder = holds.get
    yield lock, holds
    assert holds.when is None, "the interrupt was never raised: the test did not test anything"


def assert_nothing_left(lock: KeyedLock) -> None:
    """The guard is free, no key is held, and another thread can take the key at once."""
    assert not guard_is_owned(table_of(lock)._guard)
    assert len(lock) == 0
    assert start_thread(lambda: lock.acquire("k", timeout=0)).result() is True
    lock.release("k")


@pytest.mark.parametrize("interrupting", ["setdefault"], indirect=True)
def test_interrupt_right_after_the_fast_acquire_releases(
    interrupting: tuple[KeyedLock, InterruptingDict],
) -> None:
    lock, _ = interrupting
    with pytest.raises(KeyboardInterrupt), lock("k"):
        raise AssertionError("the body must not run")
    assert_nothing_left(lock)


@pytest.mark.parametrize("interrupting", ["get"], indirect=True)
def test_interrupt_inside_the_fast_release_frees_guard_and_key(
    interrupting: tuple[KeyedLock, InterruptingDict],
) -> None:
    lock, _ = interrupting
    with pytest.raises(KeyboardInterrupt), lock("k"):
        pass
    assert_nothing_left(lock)


@pytest.mark.anyio
@pytest.mark.parametrize("interrupting", ["setdefault", "get"], indirect=True)
async def test_interrupt_in_async_with_leaves_nothing(
    interrupting: tuple[KeyedLock, InterruptingDict],
) -> None:
    lock, _ = interrupting
    with pytest.raises(KeyboardInterrupt):
        async with lock("k"):
            pass
    assert not guard_is_owned(table_of(lock)._guard)
    assert len(lock) == 0
    assert await lock.acquire_async("k", timeout=0)
    lock.release("k")


def test_keyboard_interrupt_in_run_sync_releases() -> None:
    lock = KeyedLock()

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lock.run_sync("k", interrupted)
    assert_nothing_left(lock)


def test_keyboard_interrupt_in_a_shared_call_hands_it_over() -> None:
    """The thread running the call is interrupted: a waiting caller takes over, runs its own fn."""
    sf = SingleFlight()
    started = threading.Event()
    gate = threading.Event()

    def interrupted() -> str:
        started.set()
        assert gate.wait(WAIT)
        raise KeyboardInterrupt

    def leader() -> None:
        with pytest.raises(KeyboardInterrupt):
            sf.do_sync("k", interrupted)

    first = start_thread(leader)
    assert started.wait(WAIT)
    second = start_thread(lambda: sf.do_sync("k", lambda: "taken over"))
    wait_until(lambda: table_of(sf).waiters("k") == 1, "the second caller waits for the call")
    gate.set()
    first.result()
    assert second.result() == "taken over"
    assert len(sf) == 0


# -- wake-ups lost in a closed asyncio loop ------------------------------------------------------


def stopped_loop_with_waiter(lock: KeyedLock) -> asyncio.AbstractEventLoop:
    """A loop whose task queued for ``k`` (held by this thread); the loop then stopped."""

    async def waiter() -> None:
        async with lock("k"):
            raise AssertionError("its loop never runs again")

    loop = asyncio.new_event_loop()
    task = loop.create_task(waiter())
    loop.run_until_complete(asyncio.sleep(0))  # the task runs up to its wait, then the loop stops
    wait_waiters(lock, "k", 1)
    assert not task.done()
    return loop


def close_quietly(loop: asyncio.AbstractEventLoop) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Task was destroyed but it is pending!"
        loop.close()


def test_a_key_handed_to_a_task_whose_loop_is_then_closed_passes_on() -> None:
    lock = KeyedLock()
    assert lock.acquire("k")
    loop = stopped_loop_with_waiter(lock)
    after = start_thread(lambda: lock.acquire("k", timeout=WAIT), name="next")
    wait_waiters(lock, "k", 2)
    lock.release("k")  # handed to the stopped loop's task: its wake-up waits in that loop
    assert lock.locked("k")
    close_quietly(loop)  # the wake-up is dropped unrun: the key goes to the next waiter
    assert after.result() is True
    lock.release("k")
    assert len(lock) == 0


def test_a_lost_wake_up_with_nobody_after_frees_the_key() -> None:
    lock = KeyedLock()
    assert lock.acquire("k")
    loop = stopped_loop_with_waiter(lock)
    lock.release("k")
    close_quietly(loop)
    assert len(lock) == 0
    assert lock.acquire("k", timeout=0)
    lock.release("k")


def test_a_call_handed_to_a_task_whose_loop_is_then_closed_passes_on() -> None:
    """Single-flight: the leader gives up; the follower that takes over is a task whose loop is
    closed before it ever runs; a later caller starts the call afresh instead of waiting forever."""
    sf = SingleFlight()
    started = threading.Event()
    gate = threading.Event()

    def interrupted() -> int:
        started.set()
        assert gate.wait(WAIT)
        raise KeyboardInterrupt

    def leader() -> None:
        with pytest.raises(KeyboardInterrupt):
            sf.do_sync("k", interrupted)

    first = start_thread(leader)
    assert started.wait(WAIT)
    loop = asyncio.new_event_loop()
    task = loop.create_task(sf.do("k", lambda: 1))
    loop.run_until_complete(asyncio.sleep(0))
    assert not task.done()
    wait_until(lambda: table_of(sf).waiters("k") == 1, "the task waits for the call")
    gate.set()
    first.result()  # the call is handed to the stopped loop's task
    close_quietly(loop)
    assert start_thread(lambda: sf.do_sync("k", lambda: 2)).result() == 2
    assert len(sf) == 0


# -- owners ------------------------------------------------------------------------------------


def test_a_new_thread_reusing_a_finished_threads_ident_is_another_owner() -> None:
    """Thread idents are reused once a thread ends; a key left held by a finished thread is
    not the new thread's own, so the new thread waits (here: times out) instead of raising."""
    lock = KeyedLock()
    first = threading.Thread(target=lock.acquire, args=("k",))
    first.start()
    first.join(WAIT)
    outcome: dict[str, object] = {}

    def second() -> None:
        if threading.get_ident() == first.ident:
            try:
                outcome["acquired"] = lock.acquire("k", timeout=0.01)
            except RuntimeError as exc:  # pragma: no cover - the bug
                outcome["error"] = exc

    for _ in range(200):
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(WAIT)
        if outcome:
            break
    else:  # pragma: no cover - depends on the platform's thread library
        pytest.skip("no thread reused the finished thread's ident in 200 tries")
    assert outcome == {"acquired": False}
    lock.release("k")


class ScriptedGuard:
    """A table guard (a real RLock inside) whose next acquire or release is interrupted."""

    def __init__(self) -> None:
        self.inner = threading.RLock()
        self.interrupt: str | None = None
        self.entered = threading.Event()  # set by every acquire that is not interrupted

    def acquire(self) -> bool:
        if self.interrupt == "acquire":  # before the guard was taken
            self.interrupt = None
            raise KeyboardInterrupt
        self.entered.set()
        return self.inner.acquire()

    def release(self) -> None:
        self.inner.release()
        if self.interrupt == "release":  # right after it was given back
            self.interrupt = None
            raise KeyboardInterrupt

    def __enter__(self) -> bool:
        self.entered.set()
        return self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()

    def armed(self) -> str | None:
        """The interrupt still to come, if any."""
        return self.interrupt


def test_interrupt_right_after_the_guard_is_released_leaves_it_free() -> None:
    lock = KeyedLock()
    guard = ScriptedGuard()
    table_of(lock)._guard = guard
    guard.interrupt = "release"
    with pytest.raises(KeyboardInterrupt), lock("k"):
        pass
    assert guard.armed() is None
    assert not guard_is_owned(guard.inner)
    assert len(lock) == 0
    assert start_thread(lambda: lock.acquire("k", timeout=0)).result() is True
    lock.release("k")


def test_interrupt_before_the_guard_was_taken_never_releases_another_threads_hold() -> None:
    """An acquire of the guard interrupted before it took it: the exit must not release the
    guard another thread holds (the RLock refuses), and the key is still given back."""
    lock = KeyedLock()
    guard = ScriptedGuard()
    table_of(lock)._guard = guard
    held = threading.Event()
    checked: list[bool] = []

    def other_thread() -> None:
        with guard.inner:
            held.set()
            assert guard.entered.wait(WAIT)  # the interrupted exit now gives the key back
            checked.append(guard_is_owned(guard.inner))

    others = []

    def interrupted_exit() -> None:
        with lock("k"):
            others.append(start_thread(other_thread))
            assert held.wait(WAIT)
            guard.entered.clear()
            guard.interrupt = "acquire"  # the exit's acquire of the guard is interrupted

    with pytest.raises(KeyboardInterrupt):
        interrupted_exit()
    others[0].result()
    assert checked == [True], "the other thread's hold of the guard was released"
    assert len(lock) == 0


# -- trio's KeyboardInterrupt protection ---------------------------------------------------------


def test_internals_are_ki_protected_under_trio_and_user_code_is_not() -> None:
    """Under trio, a Ctrl-C that lands in keyedlock's own code is deferred to a checkpoint
    (trio's ``enable_ki_protection``); in the user's code (``run``'s function, a ``with``
    body) it is raised at once, as trio does for any code of the user's."""
    import trio
    import trio.lowlevel

    from keyedlock._core import Hold

    lock = KeyedLock()
    seen: dict[str, bool] = {}

    def wake() -> bool:  # called by the table, from inside keyedlock's release
        seen["in release"] = trio.lowlevel.currently_ki_protected()
        return True

    async def main() -> None:
        assert await lock.acquire_async("k")
        assert not table_of(lock).enqueue("k", Hold("someone"), wake)
        lock.release("k")
        lock.release("k")  # the hold that was handed the key
        async with lock("k"):
            seen["in the body"] = trio.lowlevel.currently_ki_protected()

        async def user_code() -> None:
            seen["in run's function"] = trio.lowlevel.currently_ki_protected()

        await lock.run("k", user_code)

    trio.run(main)
    assert seen == {"in release": True, "in the body": False, "in run's function": False}


class _InterruptOnce:
    """A stand-in for ``monotonic`` that raises KeyboardInterrupt on its first call: what a
    signal does right after an entry took its key, before the lock recorded the hold."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self) -> float:
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return 0.0


@pytest.mark.parametrize("recording", ["statistics", "warn_after"])
@pytest.mark.parametrize("entry", ["with", "async with"])
def test_interrupt_while_a_hold_is_recorded_gives_the_key_back(
    make_lock: Any, monkeypatch: pytest.MonkeyPatch, recording: str, entry: str
) -> None:
    import keyedlock._recording as recording_module

    lock = make_lock(warn_after=60) if recording == "warn_after" else make_lock()
    if recording == "statistics":
        lock.statistics("k")  # turns on recording when each hold took its key
    interrupt = _InterruptOnce()
    monkeypatch.setattr(recording_module, "monotonic", interrupt)

    def enter() -> None:
        with lock("k"):
            raise AssertionError("the body never runs")

    async def enter_async() -> None:
        async with lock("k"):
            raise AssertionError("the body never runs")

    with pytest.raises(KeyboardInterrupt):
        enter() if entry == "with" else asyncio.run(enter_async())
    assert interrupt.fired
    assert len(lock) == 0
    # (A wider scope may give it back there from a thread of its own: Redis.)
    wait_until(lambda: not lock.locked("k"), "the key is given back")
    monkeypatch.undo()
    with lock("k", timeout=WAIT):  # and the key works as always
        pass


# -- a second interrupt, in the recovery from the first ------------------------------------------


def test_a_second_interrupt_as_a_failed_wake_passes_the_key_on_still_wakes_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The key goes to a waiter that cannot be woken (its loop is gone), then to the next one;
    an interrupt lands as that one is woken. The exit's recovery wakes it all the same."""
    from keyedlock._core import ENTERED, GRANTED, Hold, KeyHold, KeyTable

    table = KeyTable()
    holder = KeyHold("holder")
    holder._key, holder._table, holder._phase, holder._ready = "k", table, ENTERED, None
    assert table.take("k", holder) is holder
    table.enqueue("k", Hold("gone"), lambda: False)
    woken: list[str] = []

    def wake_next() -> bool:
        woken.append("next")
        return True

    wake = Interrupts(monkeypatch).wrap(wake_next, "the next one's waker")
    following = Hold("next")
    table.enqueue("k", following, wake)
    with pytest.raises(KeyboardInterrupt):
        holder._exit(None, None, None)
    assert table.holder("k") is following
    assert following._state == GRANTED
    assert woken == ["next"]


def test_an_interrupt_as_a_thread_wakes_a_trio_task_does_not_lose_the_wake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread hands the key to a task of a trio run in another thread; a signal lands as it
    asks that run to reschedule the task (trio's own Python code). The task gets the key."""
    import trio
    import trio.lowlevel

    lock = KeyedLock()
    got = threading.Event()

    async def task() -> None:
        async with lock("k"):
            got.set()

    ctx = lock("k")
    ctx.__enter__()
    runner = start_thread(lambda: trio.run(task), "trio-run")
    wait_waiters(lock, "k", 1)
    interrupts = Interrupts(monkeypatch)
    interrupts.at_entry(trio.lowlevel.TrioToken, "run_sync_soon")
    with pytest.raises(KeyboardInterrupt):
        ctx.__exit__(None, None, None)
    assert interrupts.raised == ["run_sync_soon"]
    assert got.wait(WAIT), "the trio task never got the key"
    runner.result(WAIT)
    assert not lock.locked("k")
