"""Mutual exclusion per key; different keys never wait for each other; no key is left behind."""

from __future__ import annotations

import pytest

from keyedlock import KeyedLock, LockTimeout

from ..drivers import VIAS, Driver, Tracker, Via
from ..support import WAIT, Handle, start_thread, wait_waiters, wait_waiters_async
from .scopes import Scope

ROUNDS = 40
AGENTS = 4


@pytest.mark.parametrize("via", VIAS)
def test_one_holder_at_a_time(driver: Driver, lock: KeyedLock, via: Via) -> None:
    counter = {"k": 0}
    tracker = Tracker()
    agents = [
        driver.work(lock, "k", counter, tracker, rounds=ROUNDS, via=via) for _ in range(AGENTS)
    ]
    for agent in agents:
        assert agent.result() == ROUNDS
    assert tracker.violations == []
    assert counter["k"] == AGENTS * ROUNDS  # no update lost between a read and its write
    assert len(lock) == 0


def test_every_api_excludes_every_other(driver: Driver, lock: KeyedLock) -> None:
    counter = {"k": 0}
    tracker = Tracker()
    agents = [driver.work(lock, "k", counter, tracker, rounds=ROUNDS, via=via) for via in VIAS]
    for agent in agents:
        agent.result()
    assert tracker.violations == []
    assert counter["k"] == len(VIAS) * ROUNDS


def test_keys_are_independent_under_load(driver: Driver, lock: KeyedLock) -> None:
    keys = ["a", "b", "c"]
    counter = dict.fromkeys(keys, 0)
    tracker = Tracker()
    agents = [
        driver.work(lock, key, counter, tracker, rounds=ROUNDS) for key in keys for _ in range(2)
    ]
    for agent in agents:
        agent.result()
    assert tracker.violations == []
    assert counter == dict.fromkeys(keys, 2 * ROUNDS)


@pytest.mark.parametrize("via", VIAS)
def test_different_keys_never_wait(driver: Driver, lock: KeyedLock, via: Via) -> None:
    first = driver.hold(lock, "a", via=via)
    first.wait_entered()
    # timeout=0 tries once: it fails at once if "b" had to wait for "a".
    second = driver.hold(lock, "b", via=via, timeout=0)
    second.wait_entered()
    assert lock.locked("a")
    assert lock.locked("b")
    assert len(lock) == 2
    first.leave()
    second.leave()
    assert first.result() == "left"
    assert second.result() == "left"


def test_a_busy_key_does_not_slow_other_keys(driver: Driver, lock: KeyedLock) -> None:
    lock.acquire("busy")
    queued = driver.hold(lock, "busy")
    wait_waiters(lock, "busy", 1)
    others = [driver.hold(lock, f"other-{i}", timeout=0) for i in range(20)]
    for agent in others:
        agent.leave()
        assert agent.result() == "left"
    assert lock.waiters("busy") == 1
    lock.release("busy")
    queued.leave()
    assert queued.result() == "left"


def test_equal_keys_are_the_same_key(scope: Scope, lock: KeyedLock) -> None:
    if scope.keys != "any hashable":
        # Keys are str, bytes or int, each its own kind: 1, "1" and b"1" are three keys.
        with lock(1), lock("1"), lock(b"1"):
            assert len(lock) == 3
            assert lock.acquire(1, blocking=False) is False
        return
    with lock(1):
        assert lock.locked(1.0)
        assert lock.acquire(1.0, blocking=False) is False
        with pytest.raises(LockTimeout), lock(True, timeout=0):
            pass
        with lock((1,)), lock("1"):  # not equal to 1: other keys
            assert len(lock) == 3


@pytest.mark.parametrize("via", VIAS)
def test_no_key_is_left_behind(driver: Driver, lock: KeyedLock, via: Via) -> None:
    keys = [f"key-{i}" for i in range(10)]
    agents = [driver.hold(lock, key, via=via) for key in keys for _ in range(3)]
    for agent in agents:
        agent.leave()
    for agent in agents:
        assert agent.result() == "left"
    assert len(lock) == 0
    assert not any(lock.locked(key) for key in keys)
    assert all(lock.waiters(key) == 0 for key in keys)


class BodyError(Exception):
    """Raised inside a critical section."""


def test_an_error_in_the_body_propagates_and_releases(lock: KeyedLock) -> None:
    """The context manager never swallows the body's exception, with or without waiters."""
    waiters: list[Handle[bool]] = []

    def critical(with_waiter: bool) -> None:
        with lock("k"):
            if with_waiter:
                waiters.append(start_thread(lambda: lock.acquire("k", timeout=WAIT)))
                wait_waiters(lock, "k", 1)
            raise BodyError

    with pytest.raises(BodyError):
        critical(with_waiter=False)
    assert len(lock) == 0
    with pytest.raises(BodyError):
        critical(with_waiter=True)
    assert waiters[0].result() is True  # the key was handed on all the same
    lock.release("k")
    assert len(lock) == 0


@pytest.mark.anyio
async def test_an_error_in_an_async_body_propagates_and_releases(lock: KeyedLock) -> None:
    waiters: list[Handle[bool]] = []

    async def critical(with_waiter: bool) -> None:
        async with lock("k"):
            if with_waiter:
                waiters.append(start_thread(lambda: lock.acquire("k", timeout=WAIT)))
                await wait_waiters_async(lock, "k", 1)
            raise BodyError

    with pytest.raises(BodyError):
        await critical(with_waiter=False)
    assert len(lock) == 0
    with pytest.raises(BodyError):
        await critical(with_waiter=True)
    assert waiters[0].result() is True
    lock.release("k")
    assert len(lock) == 0
