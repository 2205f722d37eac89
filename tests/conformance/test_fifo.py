"""FIFO by direct hand-off: waiters get the key in arrival order, and nobody barges in."""

from __future__ import annotations

from functools import partial

import anyio
import anyio.lowlevel
import pytest

from keyedlock import KeyedLock, LockTimeout

from ..drivers import VIAS, Driver, Via
from ..support import wait_waiters, wait_waiters_async

WAITERS = 5


@pytest.mark.parametrize("via", VIAS)
def test_waiters_get_the_key_in_arrival_order(driver: Driver, lock: KeyedLock, via: Via) -> None:
    order: list[int] = []
    lock.acquire("k")
    agents = []
    for i in range(WAITERS):
        agent = driver.hold(lock, "k", via=via, on_enter=partial(order.append, i))
        agent.leave()  # each leaves as soon as it is in
        agents.append(agent)
        wait_waiters(lock, "k", i + 1)  # i is queued before i + 1 starts
    lock.release("k")
    for agent in agents:
        assert agent.result() == "left"
    assert order == list(range(WAITERS))


def test_arrival_order_holds_across_apis(driver: Driver, lock: KeyedLock) -> None:
    order: list[int] = []
    lock.acquire("k")
    agents = []
    for i, via in enumerate(VIAS * 2):
        agent = driver.hold(lock, "k", via=via, on_enter=partial(order.append, i))
        agent.leave()
        agents.append(agent)
        wait_waiters(lock, "k", i + 1)
    lock.release("k")
    for agent in agents:
        agent.result()
    assert order == list(range(2 * len(VIAS)))


def test_waiters_with_timeouts_keep_their_place(driver: Driver, lock: KeyedLock) -> None:
    order: list[int] = []
    lock.acquire("k")
    agents = []
    for i in range(WAITERS):
        timeout = None if i % 2 else 60.0
        agent = driver.hold(lock, "k", timeout=timeout, on_enter=partial(order.append, i))
        agent.leave()
        agents.append(agent)
        wait_waiters(lock, "k", i + 1)
    lock.release("k")
    for agent in agents:
        agent.result()
    assert order == list(range(WAITERS))


def test_a_late_non_blocking_caller_does_not_barge(driver: Driver, lock: KeyedLock) -> None:
    lock.acquire("k")
    waiter = driver.hold(lock, "k")
    wait_waiters(lock, "k", 1)
    lock.release("k")
    # The key went straight to the queued waiter: it never looked free, even for an instant.
    assert lock.locked("k")
    assert lock.acquire("k", blocking=False) is False
    assert lock.acquire("k", timeout=0) is False
    with pytest.raises(LockTimeout), lock("k", timeout=0):
        pass
    late = driver.acquire(lock, "k", blocking=False)
    assert late.result() is False
    waiter.wait_entered()
    waiter.leave()
    assert waiter.result() == "left"


def test_a_late_blocking_caller_queues_behind(driver: Driver, lock: KeyedLock) -> None:
    order: list[str] = []
    lock.acquire("k")
    waiter = driver.hold(lock, "k", on_enter=partial(order.append, "waiter"))
    waiter.leave()
    wait_waiters(lock, "k", 1)
    lock.release("k")
    with lock("k"):
        order.append("late")
    assert waiter.result() == "left"
    assert order == ["waiter", "late"]


@pytest.mark.anyio
async def test_no_barging_inside_one_event_loop(lock: KeyedLock) -> None:
    order: list[str] = []

    async def waiter() -> None:
        async with lock("k"):
            order.append("waiter")

    async with anyio.create_task_group() as tg:
        await lock.acquire_async("k")
        tg.start_soon(waiter)
        await wait_waiters_async(lock, "k", 1)
        lock.release("k")
        # The waiter has not run yet, and yet the key is already its own. (A try yields
        # under trio once it found the key busy: the waiter may run from then on.)
        assert lock.acquire("k", blocking=False) is False
        with pytest.raises(LockTimeout):
            async with lock("k", timeout=0):
                pass
        async with lock("k"):
            order.append("late")
    assert order == ["waiter", "late"]


@pytest.mark.anyio
async def test_fifo_among_tasks_of_one_event_loop(lock: KeyedLock) -> None:
    order: list[int] = []

    async def waiter(i: int) -> None:
        async with lock("k"):
            order.append(i)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg, lock("k"):
        for i in range(WAITERS):
            tg.start_soon(waiter, i)
            await wait_waiters_async(lock, "k", i + 1)
    assert order == list(range(WAITERS))
