"""statistics(key) and keys(): what a key looks like now, in every scope, cheap until asked."""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import pickle
import threading

import pytest

from keyedlock import FlightStatistics, KeyedLock, LockStatistics, Owner, Result

from ..drivers import RUNTIMES, Driver
from ..support import wait_waiters
from .scopes import Scope


def test_a_free_key() -> None:
    stats = KeyedLock().statistics("k")
    assert stats == LockStatistics(
        key="k", locked=False, holder=None, held_for=None, waiters=0, waiters_by_runtime={}
    )


def test_a_snapshot_is_frozen(lock: KeyedLock) -> None:
    stats = lock.statistics("k")
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.locked = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.waiters_by_runtime["thread"] = 1  # type: ignore[index]
    assert hash(stats) == hash(lock.statistics("k"))


@pytest.mark.parametrize(
    "snapshot",
    [
        LockStatistics("k", False, None, None, 0, {}),
        FlightStatistics("k", False, None, None, 0, {}, False),
        Owner("thread", "worker", 1),
        Result(1, True),
    ],
    ids=lambda snapshot: type(snapshot).__name__,
)
def test_every_assignment_to_a_snapshot_is_refused_alike(snapshot: object) -> None:
    """A field or any other name, set or deleted: FrozenInstanceError (an AttributeError),
    not the TypeError a frozen dataclass with slots raises on CPython 3.11-3.13 for a name
    that is not a field."""
    for name in (dataclasses.fields(snapshot)[0].name, "not_a_field"):  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(snapshot, name, 1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(snapshot, name)


def test_a_snapshot_pickles() -> None:
    counts = {"thread": 2, "trio": 1}
    stats = LockStatistics(
        key="k",
        locked=True,
        holder=Owner("thread", "t", 1),
        held_for=0.5,
        waiters=3,
        waiters_by_runtime=counts,
    )
    counts["thread"] = 5  # a copy was kept
    assert stats.waiters_by_runtime == {"thread": 2, "trio": 1}
    assert pickle.loads(pickle.dumps(stats)) == stats
    flight = FlightStatistics(
        key="k",
        in_flight=True,
        leader=None,
        running_for=None,
        followers=1,
        followers_by_runtime={"asyncio": 1},
        cached=False,
    )
    assert pickle.loads(pickle.dumps(flight)) == flight
    with pytest.raises(TypeError):
        flight.followers_by_runtime["asyncio"] = 2  # type: ignore[index]
    assert copy.deepcopy(stats) == stats
    assert dataclasses.asdict(stats)["waiters_by_runtime"] == {"thread": 2, "trio": 1}
    assert dataclasses.astuple(flight)[5] == {"asyncio": 1}
    assert repr(stats).endswith("waiters_by_runtime={'thread': 2, 'trio': 1})")


def test_holder_time_and_waiters_by_runtime(
    scope: Scope, drivers: dict[str, Driver], lock: KeyedLock
) -> None:
    lock.statistics("k")  # the first call turns on recording the acquisition time
    holder = drivers["asyncio"].hold(lock, "k")
    holder.wait_entered()
    waiters = []
    for runtime in RUNTIMES:
        for _ in range(2):
            waiters.append(drivers[runtime].hold(lock, "k"))
            wait_waiters(lock, "k", len(waiters))  # queued in this order

    stats = lock.statistics("k")
    assert stats.key == "k"
    assert stats.locked
    assert stats.holder is not None
    assert stats.holder.runtime == "asyncio"
    assert stats.holder.pid == os.getpid()
    assert stats.holder.name is not None
    assert stats.holder.name.startswith("Task-")
    assert stats.held_for is not None
    assert stats.held_for >= 0
    assert stats.waiters == len(waiters) == lock.waiters("k")
    assert stats.waiters_by_runtime == {"thread": 2, "asyncio": 2, "trio": 2}
    assert lock.keys() == ["k"]

    holder.leave()
    assert holder.result() == "left"
    for agent in waiters:
        agent.leave()
        assert agent.result() == "left"
    assert lock.statistics("k").locked is False
    assert lock.keys() == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_waiter_that_gave_up_is_not_counted(
    drivers: dict[str, Driver], lock: KeyedLock, runtime: str
) -> None:
    """A waiter that timed out between two others is not in the statistics (it may still
    be in the queue, withdrawn)."""
    holder = drivers["thread"].hold(lock, "k")
    holder.wait_entered()
    first = drivers["thread"].hold(lock, "k")
    wait_waiters(lock, "k", 1)
    assert drivers[runtime].acquire(lock, "k", timeout=0.05).result() is False
    last = drivers["asyncio"].hold(lock, "k")
    wait_waiters(lock, "k", 2)
    stats = lock.statistics("k")
    assert stats.waiters == 2
    assert stats.waiters_by_runtime == {"thread": 1, "asyncio": 1}
    for agent in (holder, first, last):
        agent.leave()
        assert agent.result() == "left"
    assert lock.keys() == []


def test_a_thread_holder_is_named(lock: KeyedLock) -> None:
    entered, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with lock("warm-up"):  # (the thread's first use of the lock, under its first name)
            pass
        threading.current_thread().name = "checkout-worker"  # the name now is the one shown
        with lock("k"):
            entered.set()
            assert leave.wait(10)

    thread = threading.Thread(target=hold, name="first-name")
    thread.start()
    try:
        assert entered.wait(10)
        holder = lock.statistics("k").holder
        assert holder == Owner("thread", "checkout-worker", os.getpid())
    finally:
        leave.set()
        thread.join(10)


def test_a_thread_that_ended_holding_is_named_by_its_last_name(lock: KeyedLock) -> None:
    def run() -> None:
        with lock("warm-up"):  # (the thread's first use of the lock, under its first name)
            pass
        threading.current_thread().name = "renamed"
        assert lock.acquire("k")  # and it ends holding the key

    thread = threading.Thread(target=run, name="first-name")
    thread.start()
    thread.join(10)
    del thread  # (the lock alone keeps what it needs to name the holder)
    gc.collect()
    try:
        holder = lock.statistics("k").holder
        assert holder is not None
        assert (holder.runtime, holder.name) == ("thread", "renamed")
    finally:
        lock.release("k")


def test_held_for_is_known_from_the_first_question_on(scope: Scope, lock: KeyedLock) -> None:
    with lock("before"):
        if not scope.remote:  # (the manager records it on its side, always)
            assert lock.statistics("before").held_for is None  # taken before anyone asked
    with lock("after"):
        held_for = lock.statistics("after").held_for
        assert held_for is not None
        assert held_for >= 0
    assert lock.acquire("explicit")
    try:
        assert lock.statistics("explicit").held_for is not None
    finally:
        lock.release("explicit")


@pytest.mark.anyio
async def test_statistics_from_a_task(lock: KeyedLock) -> None:
    lock.statistics("k")
    async with lock("k"):
        stats = lock.statistics("k")
        assert stats.locked
        assert stats.holder is not None
        assert stats.holder.runtime in ("asyncio", "trio")
        assert stats.held_for is not None


def test_keys_lists_the_busy_keys(lock: KeyedLock) -> None:
    assert lock.keys() == []
    with lock("a"), lock("b"):
        assert set(lock.keys()) == {"a", "b"}
    assert lock.keys() == []


def test_a_bad_key_is_refused(lock: KeyedLock) -> None:
    with pytest.raises(TypeError):
        lock.statistics([1])  # type: ignore[arg-type]
