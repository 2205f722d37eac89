"""One key, callers of every runtime at once: threads, asyncio tasks on several loops in several
threads, and trio tasks in several runs. They exclude each other, queue in one FIFO, and wake
each other across runtimes."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import partial

import pytest

from keyedlock import KeyedLock

from .drivers import RUNTIMES, VIAS, Driver, Tracker, make_driver
from .support import wait_waiters

ROUNDS = 30


@pytest.fixture
def mixed(lock: KeyedLock) -> Iterator[list[Driver]]:
    """Threads, two asyncio loops and two trio runs, each loop and run in a thread of its own."""
    made = [
        make_driver("thread"),
        make_driver("asyncio", "asyncio-1"),
        make_driver("trio", "trio-1"),
        make_driver("asyncio", "asyncio-2"),
        make_driver("trio", "trio-2"),
    ]
    yield made
    for driver in made:
        driver.close()


def test_exclusion_across_every_runtime(mixed: list[Driver], lock: KeyedLock) -> None:
    counter = {"k": 0}
    tracker = Tracker()
    agents = [
        driver.work(lock, "k", counter, tracker, rounds=ROUNDS, via=via)
        for driver, via in itertools.product(mixed, VIAS)
    ]
    for agent in agents:
        assert agent.result() == ROUNDS
    assert tracker.violations == []
    assert counter["k"] == len(agents) * ROUNDS
    assert len(lock) == 0


def test_fifo_across_every_runtime(mixed: list[Driver], lock: KeyedLock) -> None:
    order: list[int] = []
    lock.acquire("k")
    agents = []
    arrivals = [(mixed[i % len(mixed)], VIAS[i % len(VIAS)]) for i in range(15)]
    for i, (driver, via) in enumerate(arrivals):
        agent = driver.hold(lock, "k", via=via, on_enter=partial(order.append, i))
        agent.leave()
        agents.append(agent)
        wait_waiters(lock, "k", i + 1)
    lock.release("k")
    for agent in agents:
        assert agent.result() == "left"
    assert order == list(range(len(arrivals)))


def test_fifo_when_the_first_holder_is_a_task(mixed: list[Driver], lock: KeyedLock) -> None:
    order: list[str] = []
    holder = mixed[2].hold(lock, "k")  # a trio task
    holder.wait_entered()
    agents = []
    for i, driver in enumerate(mixed):
        agent = driver.hold(lock, "k", on_enter=partial(order.append, driver.name))
        agent.leave()
        agents.append(agent)
        wait_waiters(lock, "k", i + 1)
    holder.leave()
    holder.result()
    for agent in agents:
        agent.result()
    assert order == [driver.name for driver in mixed]


@pytest.mark.parametrize(("holder", "waiter"), list(itertools.product(RUNTIMES, RUNTIMES)))
def test_a_holder_wakes_a_waiter_of_any_runtime(
    drivers: dict[str, Driver], lock: KeyedLock, holder: str, waiter: str
) -> None:
    holding = drivers[holder].hold(lock, "k")
    holding.wait_entered()
    waiting = drivers[waiter].hold(lock, "k")
    wait_waiters(lock, "k", 1)
    holding.leave()
    assert holding.result() == "left"
    waiting.wait_entered()
    waiting.leave()
    assert waiting.result() == "left"


@pytest.mark.parametrize(("releaser", "waiter"), list(itertools.product(RUNTIMES, RUNTIMES)))
def test_a_release_from_any_runtime_wakes_a_waiter_of_any_runtime(
    drivers: dict[str, Driver], lock: KeyedLock, releaser: str, waiter: str
) -> None:
    lock.acquire("k")
    waiting = drivers[waiter].hold(lock, "k")
    wait_waiters(lock, "k", 1)
    drivers[releaser].call(lambda: lock.release("k")).result()
    waiting.wait_entered()
    waiting.leave()
    assert waiting.result() == "left"


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_several_event_loops_in_several_threads(lock: KeyedLock, runtime: str) -> None:
    loops = [make_driver(runtime, f"{runtime}-{i}") for i in range(3)]
    try:
        counter = {"a": 0, "b": 0}
        tracker = Tracker()
        agents = [
            loop.work(lock, key, counter, tracker, rounds=ROUNDS, via=via)
            for loop, key, via in itertools.product(loops, counter, VIAS)
        ]
        for agent in agents:
            agent.result()
        assert tracker.violations == []
        assert counter == {
            "a": len(loops) * len(VIAS) * ROUNDS,
            "b": len(loops) * len(VIAS) * ROUNDS,
        }

        order: list[int] = []
        lock.acquire("a")
        waiting = []
        for i, loop in enumerate(loops * 2):
            waiter = loop.hold(lock, "a", on_enter=partial(order.append, i))
            waiter.leave()
            waiting.append(waiter)
            wait_waiters(lock, "a", i + 1)
        lock.release("a")
        for waiter in waiting:
            waiter.result()
        assert order == list(range(2 * len(loops)))
    finally:
        for loop in loops:
            loop.close()
