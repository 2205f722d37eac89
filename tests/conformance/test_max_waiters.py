"""max_waiters bounds each key's queue: one caller too many gets QueueFull at once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from keyedlock import KeyedLock, KeyedLockError, LockTimeout, QueueFull

from ..drivers import VIAS, Driver, Via
from ..support import Threads, wait_waiters


@pytest.fixture
def bounded(request: pytest.FixtureRequest, make_lock: Callable[..., KeyedLock]) -> KeyedLock:
    """A lock with ``max_waiters`` from the test's ``bounded`` parameter."""
    return make_lock(max_waiters=request.param)


def test_queue_full_is_a_keyed_lock_error() -> None:
    assert issubclass(QueueFull, KeyedLockError)


def test_max_waiters_is_kept(make_lock: Callable[..., KeyedLock]) -> None:
    assert make_lock().max_waiters is None
    assert make_lock(max_waiters=0).max_waiters == 0
    assert make_lock(max_waiters=3).max_waiters == 3
    assert "max_waiters=3" in repr(make_lock(max_waiters=3))


@pytest.mark.parametrize("bounded", [0], indirect=True)
@pytest.mark.parametrize("via", VIAS)
def test_zero_never_queues(driver: Driver, bounded: KeyedLock, via: Via) -> None:
    bounded.acquire("k")
    agent = driver.hold(bounded, "k", via=via)
    agent.leave()
    with pytest.raises(QueueFull):
        agent.result()  # at once, while the key is still held
    assert bounded.waiters("k") == 0
    bounded.release("k")


@pytest.mark.parametrize("bounded", [0], indirect=True)
def test_zero_still_acquires_a_free_key_and_tries_once(driver: Driver, bounded: KeyedLock) -> None:
    agent = driver.hold(bounded, "k")
    agent.wait_entered()
    agent.leave()
    assert agent.result() == "left"
    bounded.acquire("k")
    assert driver.acquire(bounded, "k", blocking=False).result() is False
    tried = driver.hold(bounded, "k", timeout=0)
    with pytest.raises(LockTimeout):  # trying once never queues: a timeout, not QueueFull
        tried.result()
    bounded.release("k")


@pytest.mark.parametrize("bounded", [2], indirect=True)
@pytest.mark.parametrize("via", VIAS)
def test_one_waiter_too_many_is_refused_at_once(
    driver: Driver, bounded: KeyedLock, via: Via
) -> None:
    bounded.acquire("k")
    queued = [driver.hold(bounded, "k")]
    wait_waiters(bounded, "k", 1)
    queued.append(driver.hold(bounded, "k"))
    wait_waiters(bounded, "k", 2)
    extra = driver.hold(bounded, "k", via=via)
    with pytest.raises(QueueFull, match=r"^key 'k' already has 2 waiter\(s\) \(max_waiters=2\)$"):
        extra.result()
    assert bounded.waiters("k") == 2
    bounded.release("k")  # the first waiter now holds the key: one place is free again
    queued[0].wait_entered()
    assert bounded.waiters("k") == 1
    late = driver.hold(bounded, "k", via=via)
    wait_waiters(bounded, "k", 2)
    for agent in [*queued, late]:
        agent.leave()
    for agent in [*queued, late]:
        assert agent.result() == "left"


@pytest.mark.parametrize("bounded", [1], indirect=True)
def test_a_waiter_that_gave_up_frees_its_place(driver: Driver, bounded: KeyedLock) -> None:
    bounded.acquire("k")
    impatient = driver.hold(bounded, "k", timeout=0.01)
    with pytest.raises(LockTimeout):
        impatient.result()
    patient = driver.hold(bounded, "k")
    wait_waiters(bounded, "k", 1)
    bounded.release("k")
    patient.leave()
    assert patient.result() == "left"


@pytest.mark.parametrize("bounded", [1], indirect=True)
def test_the_bound_is_per_key(driver: Driver, bounded: KeyedLock) -> None:
    bounded.acquire("a")
    bounded.acquire("b")
    on_a = driver.hold(bounded, "a")
    on_b = driver.hold(bounded, "b")
    wait_waiters(bounded, "a", 1)
    wait_waiters(bounded, "b", 1)
    bounded.release("a")
    bounded.release("b")
    for agent in (on_a, on_b):
        agent.leave()
        assert agent.result() == "left"


@pytest.mark.parametrize("bounded", [None], indirect=True)
def test_none_is_unbounded(driver: Driver, bounded: KeyedLock) -> None:
    bounded.acquire("k")
    agents = []
    for i in range(20):
        agents.append(driver.hold(bounded, "k"))
        agents[-1].leave()
        wait_waiters(bounded, "k", i + 1)
    bounded.release("k")
    for agent in agents:
        assert agent.result() == "left"


@pytest.mark.anyio
async def test_queue_full_in_tasks(threads: Threads, make_lock: Callable[..., KeyedLock]) -> None:
    lock = make_lock(max_waiters=0)
    assert threads.start(lambda: lock.acquire("k")).result()  # held by another owner
    try:
        with pytest.raises(
            QueueFull, match=r"^key 'k' is held and max_waiters=0: nobody may wait for it$"
        ):
            await lock.acquire_async("k")
        with pytest.raises(QueueFull):
            async with lock("k", timeout=5):
                pass
        assert await lock.acquire_async("k", timeout=0) is False
    finally:
        lock.release("k")
    assert len(lock) == 0
