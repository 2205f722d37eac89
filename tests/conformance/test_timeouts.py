"""Timeouts: 0 tries once, a timeout leaves no trace, LockTimeout is a TimeoutError, inf waits."""

from __future__ import annotations

import math
import threading
from functools import partial

import anyio
import pytest

from keyedlock import KeyedLock, KeyedLockError, LockTimeout

from ..drivers import VIAS, Agent, Driver, Via
from ..support import Threads, wait_waiters

SHORT = 0.02


def assert_timed_out(agent: Agent, via: Via) -> None:
    """acquire()/acquire_async() return False on timeout; every other API raises LockTimeout."""
    if via == "acquire":
        assert agent.result() is False
    else:
        with pytest.raises(LockTimeout) as info:
            agent.result()
        assert isinstance(info.value, TimeoutError)
    assert not agent.entered.is_set()


def test_lock_timeout_is_a_timeout_error() -> None:
    assert issubclass(LockTimeout, TimeoutError)
    assert issubclass(LockTimeout, KeyedLockError)


@pytest.mark.parametrize("via", VIAS)
def test_timeout_zero_on_a_busy_key_fails_at_once(
    driver: Driver, lock: KeyedLock, via: Via
) -> None:
    lock.acquire("k")
    agent = driver.hold(lock, "k", via=via, timeout=0)
    agent.leave()
    assert_timed_out(agent, via)  # while the key is still held: it did not wait
    assert lock.waiters("k") == 0
    lock.release("k")


@pytest.mark.parametrize("via", VIAS)
def test_timeout_zero_on_a_free_key_acquires(driver: Driver, lock: KeyedLock, via: Via) -> None:
    agent = driver.hold(lock, "k", via=via, timeout=0)
    agent.wait_entered()
    assert lock.locked("k")
    agent.leave()
    assert agent.result() == "left"


def test_non_blocking_acquire(driver: Driver, lock: KeyedLock) -> None:
    first = driver.acquire(lock, "k", blocking=False)
    assert first.result() is True
    second = driver.acquire(lock, "k", blocking=False)
    assert second.result() is False
    assert lock.waiters("k") == 0
    lock.release("k")


def test_timeout_zero_with_a_queue_fails_even_if_the_key_is_being_handed_on(
    driver: Driver, lock: KeyedLock
) -> None:
    lock.acquire("k")
    queued = driver.hold(lock, "k")
    wait_waiters(lock, "k", 1)
    lock.release("k")
    assert lock.acquire("k", timeout=0) is False
    queued.leave()
    assert queued.result() == "left"


@pytest.mark.parametrize("via", VIAS)
def test_timeout_elapses(driver: Driver, lock: KeyedLock, via: Via) -> None:
    lock.acquire("k")
    agent = driver.hold(lock, "k", via=via, timeout=SHORT)
    agent.leave()
    assert_timed_out(agent, via)
    assert lock.waiters("k") == 0
    assert lock.locked("k")  # the holder is unaffected
    lock.release("k")
    assert len(lock) == 0


def test_a_timed_out_waiter_leaves_the_queue_in_order(driver: Driver, lock: KeyedLock) -> None:
    order: list[str] = []
    lock.acquire("k")
    first = driver.hold(lock, "k", on_enter=partial(order.append, "first"))
    wait_waiters(lock, "k", 1)
    impatient = driver.hold(lock, "k", timeout=SHORT)
    wait_waiters(lock, "k", 2)
    last = driver.hold(lock, "k", on_enter=partial(order.append, "last"))
    wait_waiters(lock, "k", 3)
    with pytest.raises(LockTimeout):
        impatient.result()
    assert lock.waiters("k") == 2
    lock.release("k")
    first.leave()
    last.leave()
    first.result()
    last.result()
    assert order == ["first", "last"]


@pytest.mark.parametrize("via", VIAS)
def test_a_waiter_granted_before_its_timeout_gets_the_key(
    driver: Driver, lock: KeyedLock, via: Via
) -> None:
    lock.acquire("k")
    agent = driver.hold(lock, "k", via=via, timeout=60.0)
    wait_waiters(lock, "k", 1)
    lock.release("k")
    agent.wait_entered()
    agent.leave()
    assert agent.result() == "left"


@pytest.mark.parametrize("timeout", [math.inf, 1e300, threading.TIMEOUT_MAX * 2])
@pytest.mark.parametrize("via", VIAS)
def test_infinite_and_huge_timeouts_wait(
    driver: Driver, lock: KeyedLock, via: Via, timeout: float
) -> None:
    lock.acquire("k")
    agent = driver.hold(lock, "k", via=via, timeout=timeout)
    wait_waiters(lock, "k", 1)
    assert not agent.entered.is_set()
    lock.release("k")
    agent.wait_entered()
    agent.leave()
    assert agent.result() == "left"


def test_timeout_in_threads_with_every_api(lock: KeyedLock, threads: Threads) -> None:
    def other() -> None:
        assert lock.acquire("k", timeout=SHORT) is False
        with pytest.raises(LockTimeout, match="timed out"), lock("k", timeout=SHORT):
            pass
        with pytest.raises(LockTimeout, match="busy"), lock("k", timeout=0):
            pass
        with pytest.raises(LockTimeout):
            lock.run_sync("k", print, timeout=SHORT)

    with lock("k"):
        threads.start(other).result()
    assert lock.waiters("k") == 0


@pytest.mark.anyio
async def test_async_timeouts(lock: KeyedLock) -> None:
    async def body() -> None:
        pass

    async with anyio.create_task_group() as tg:
        await lock.acquire_async("k")
        done = anyio.Event()

        async def other() -> None:
            assert await lock.acquire_async("k", timeout=SHORT) is False
            assert await lock.acquire_async("k", timeout=0) is False
            with pytest.raises(LockTimeout):
                async with lock("k", timeout=SHORT):
                    pass
            with pytest.raises(LockTimeout):
                await lock.run("k", body, timeout=0)
            with pytest.raises(LockTimeout):
                await lock.guard("k", timeout=SHORT)(body)()
            assert lock.waiters("k") == 0
            done.set()

        tg.start_soon(other)
        with anyio.fail_after(10):
            await done.wait()
        lock.release("k")
