"""Cancellation: while waiting it leaves no trace; in the instant of hand-off the key passes on;
a holder cancelled inside its body releases."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import anyio.lowlevel
import pytest
import trio

from keyedlock import KeyedLock

from ..drivers import VIAS, Driver, Via, under_async
from ..support import WAIT, TaskCancelled, wait_waiters, wait_waiters_async
from .scopes import Scope, differs

SHORT = 0.02


def recorder(log: list[str], name: str) -> Callable[[], Awaitable[None]]:
    """An async critical section that logs its entry, then reaches a checkpoint."""

    async def body() -> None:
        log.append(name)
        await anyio.lowlevel.checkpoint()

    return body


def release_from_another_thread(lock: KeyedLock, key: str) -> None:
    """Release ``key`` in a new thread and join it, blocking the calling event loop meanwhile:
    the waiter's wake-up is then pending in its loop, not yet delivered."""
    thread = threading.Thread(target=lock.release, args=(key,))
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()


def take_in_another_thread(lock: KeyedLock, key: str) -> None:
    """Acquire ``key`` for another owner (a short-lived thread), so this task has to wait."""
    thread = threading.Thread(target=lock.acquire, args=(key,))
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    assert lock.locked(key)


# -- any asyncio or trio task, driven from the test thread -------------------------------------


@pytest.mark.parametrize("via", VIAS)
def test_cancel_while_waiting_leaves_no_trace(
    task_driver: Driver, lock: KeyedLock, via: Via
) -> None:
    lock.acquire("k")
    agent = task_driver.hold(lock, "k", via=via)
    wait_waiters(lock, "k", 1)
    agent.cancel()
    with pytest.raises(TaskCancelled):
        agent.result()
    assert not agent.entered.is_set()
    assert lock.waiters("k") == 0
    lock.release("k")
    assert not lock.locked("k")  # the cancelled waiter was not handed the key


def test_cancelling_a_queued_waiter_keeps_the_others_in_order(
    task_driver: Driver, lock: KeyedLock
) -> None:
    order: list[int] = []
    lock.acquire("k")
    agents = []
    for i in range(3):
        agent = task_driver.hold(lock, "k", on_enter=partial(order.append, i))
        agent.leave()
        agents.append(agent)
        wait_waiters(lock, "k", i + 1)
    agents[1].cancel()
    with pytest.raises(TaskCancelled):
        agents[1].result()
    assert lock.waiters("k") == 2
    lock.release("k")
    agents[0].result()
    agents[2].result()
    assert order == [0, 2]


@pytest.mark.parametrize("via", VIAS)
def test_a_holder_cancelled_inside_its_body_releases(
    task_driver: Driver, lock: KeyedLock, via: Via
) -> None:
    holder = task_driver.hold(lock, "k", via=via)
    holder.wait_entered()
    queued = task_driver.hold(lock, "k")
    wait_waiters(lock, "k", 1)
    holder.cancel()
    with pytest.raises(TaskCancelled):
        holder.result()
    queued.wait_entered()
    queued.leave()
    assert queued.result() == "left"


@pytest.mark.parametrize("via", VIAS)
def test_cancel_right_after_release_passes_the_key_on(
    task_driver: Driver, lock: KeyedLock, via: Via
) -> None:
    lock.acquire("k")
    first = task_driver.hold(lock, "k", via=via)
    wait_waiters(lock, "k", 1)
    second = task_driver.hold(lock, "k", via=via)
    wait_waiters(lock, "k", 2)
    lock.release("k")  # hands the key to `first`, whose wake-up is on its way
    first.cancel()
    with pytest.raises(TaskCancelled):
        first.result()
    second.wait_entered()
    second.leave()
    assert second.result() == "left"


# -- asyncio, deterministic interleavings -----------------------------------------------------


@pytest.mark.parametrize("via", VIAS)
def test_asyncio_waiter_cancelled_before_it_runs_passes_the_key_on(
    lock: KeyedLock, via: Via
) -> None:
    async def main() -> list[str]:
        entered: list[str] = []
        await lock.acquire_async("k")
        first = asyncio.create_task(under_async(lock, "k", via, recorder(entered, "first")))
        await wait_waiters_async(lock, "k", 1)
        second = asyncio.create_task(under_async(lock, "k", via, recorder(entered, "second")))
        await wait_waiters_async(lock, "k", 2)
        lock.release("k")  # `first` is handed the key; it has not run since
        first.cancel("mine")
        with pytest.raises(asyncio.CancelledError) as cancelled:
            await first
        assert cancelled.value.args == ("mine",)  # its own, not the wake-up's
        await asyncio.wait_for(second, WAIT)
        return entered

    assert asyncio.run(main()) == ["second"]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("via", VIAS)
def test_asyncio_waiter_cancelled_while_its_wake_up_crosses_threads(
    lock: KeyedLock, via: Via, when: str
) -> None:
    """The task is cancelled before the wake-up queued from another thread runs, or after
    (the task is due to resume: asyncio resumes it with the wake-up's exception). Either way
    it raises its own cancellation, and the key passes on."""

    async def main() -> list[str]:
        entered: list[str] = []
        await lock.acquire_async("k")
        first = asyncio.create_task(under_async(lock, "k", via, recorder(entered, "first")))
        await wait_waiters_async(lock, "k", 1)
        second = asyncio.create_task(under_async(lock, "k", via, recorder(entered, "second")))
        await wait_waiters_async(lock, "k", 2)
        release_from_another_thread(lock, "k")  # `first` granted; its wake-up queued
        if when == "before":
            first.cancel("mine")
        else:
            asyncio.get_running_loop().call_soon(first.cancel, "mine")  # (runs after it)
        with pytest.raises(asyncio.CancelledError) as cancelled:
            await first
        assert cancelled.value.args == ("mine",)  # its own, not the wake-up's
        await asyncio.wait_for(second, WAIT)
        return entered

    assert asyncio.run(main()) == ["second"]


def test_asyncio_cancel_after_hand_off_that_someone_else_already_released(
    scope: Scope, lock: KeyedLock
) -> None:
    """The key is handed to `first`, then released by a third party (release() releases
    whoever holds) and handed to `second`; `first` is cancelled before it ever ran. `first`
    only has to end cancelled: it owns nothing any more, and `second` keeps the key."""
    differs(
        scope,
        "file",
        "redis",
        why="release(key) of a caller still waiting in the wider scope (kernel, server) raises",
    )

    async def main() -> list[str]:
        entered: list[str] = []
        await lock.acquire_async("k")
        first = asyncio.create_task(under_async(lock, "k", "with", recorder(entered, "first")))
        await wait_waiters_async(lock, "k", 1)
        second = asyncio.create_task(under_async(lock, "k", "with", recorder(entered, "second")))
        await wait_waiters_async(lock, "k", 2)
        lock.release("k")  # to `first`
        lock.release("k")  # `first`'s hold, released by someone else: to `second`
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, WAIT)
        return entered

    assert asyncio.run(main()) == ["second"]


@pytest.mark.parametrize("style", ["task.cancel", "asyncio.timeout", "asyncio.wait_for"])
@pytest.mark.parametrize("via", VIAS)
def test_asyncio_cancellation_while_waiting_leaves_no_trace(
    lock: KeyedLock, via: Via, style: str
) -> None:
    entered: list[str] = []

    async def wait_for_key() -> object:
        return await under_async(lock, "k", via, recorder(entered, "waiter"))

    async def main() -> None:
        take_in_another_thread(lock, "k")
        if style == "task.cancel":
            task = asyncio.create_task(wait_for_key())
            await wait_waiters_async(lock, "k", 1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        elif style == "asyncio.timeout":
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(SHORT):
                    await wait_for_key()
        else:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(wait_for_key(), SHORT)
        assert lock.waiters("k") == 0
        lock.release("k")
        assert not lock.locked("k")
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    asyncio.run(main())
    assert entered == []


# -- trio, deterministic interleavings --------------------------------------------------------


async def _trio_hand_off_then_cancel(lock: KeyedLock, via: Via, from_thread: bool) -> list[str]:
    entered: list[str] = []
    first_scope = trio.CancelScope()

    async def first() -> None:
        with first_scope:
            await under_async(lock, "k", via, recorder(entered, "first"))

    async def second() -> None:
        await under_async(lock, "k", via, recorder(entered, "second"))

    await lock.acquire_async("k")
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await wait_waiters_async(lock, "k", 1)
            nursery.start_soon(second)
            await wait_waiters_async(lock, "k", 2)
            if from_thread:
                release_from_another_thread(lock, "k")  # the abort then finds it granted
            else:
                lock.release("k")  # `first` is rescheduled at once, owning the key
            first_scope.cancel()
    assert first_scope.cancelled_caught
    return entered


@pytest.mark.parametrize("from_thread", [False, True], ids=["same-run", "other-thread"])
@pytest.mark.parametrize("via", VIAS)
def test_trio_waiter_cancelled_in_the_instant_of_hand_off_passes_the_key_on(
    lock: KeyedLock, via: Via, from_thread: bool
) -> None:
    entered = trio.run(_trio_hand_off_then_cancel, lock, via, from_thread)
    # `first` may run its body up to its first checkpoint (where the cancellation lands),
    # but the key always reaches `second`, and never while `first` is inside.
    assert entered in (["second"], ["first", "second"])


@pytest.mark.parametrize("style", ["cancel_scope", "move_on_after", "fail_after"])
@pytest.mark.parametrize("via", VIAS)
def test_trio_cancellation_while_waiting_leaves_no_trace(
    lock: KeyedLock, via: Via, style: str
) -> None:
    entered: list[str] = []

    async def wait_for_key() -> object:
        return await under_async(lock, "k", via, recorder(entered, "waiter"))

    async def main() -> None:
        take_in_another_thread(lock, "k")
        if style == "cancel_scope":
            scope = trio.CancelScope()

            async def waiter() -> None:
                with scope:
                    await wait_for_key()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await wait_waiters_async(lock, "k", 1)
                scope.cancel()
            assert scope.cancelled_caught
        elif style == "move_on_after":
            with trio.move_on_after(SHORT) as scope:
                await wait_for_key()
            assert scope.cancelled_caught
        else:
            with pytest.raises(trio.TooSlowError):
                with trio.fail_after(SHORT):
                    await wait_for_key()
        assert lock.waiters("k") == 0
        lock.release("k")
        assert not lock.locked("k")

    trio.run(main)
    assert entered == []


# -- both, through anyio ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("via", VIAS)
async def test_move_on_after_while_waiting_leaves_no_trace(lock: KeyedLock, via: Via) -> None:
    entered: list[str] = []
    take_in_another_thread(lock, "k")
    with anyio.move_on_after(SHORT) as scope:
        await under_async(lock, "k", via, recorder(entered, "waiter"))
    assert scope.cancelled_caught
    assert entered == []
    assert lock.waiters("k") == 0
    lock.release("k")


@pytest.mark.anyio
@pytest.mark.parametrize("via", VIAS)
async def test_holder_cancelled_inside_its_body_hands_the_key_on(lock: KeyedLock, via: Via) -> None:
    entered: list[str] = []
    inside = anyio.Event()

    async def stay() -> None:
        inside.set()
        await anyio.sleep_forever()

    async def holder(scope: anyio.CancelScope) -> None:
        with scope:
            await under_async(lock, "k", via, stay)

    scope = anyio.CancelScope()
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder, scope)
            await inside.wait()
            tg.start_soon(under_async, lock, "k", via, recorder(entered, "next"))
            await wait_waiters_async(lock, "k", 1)
            scope.cancel()
    assert scope.cancelled_caught
    assert entered == ["next"]


@pytest.mark.anyio
async def test_cancelled_holder_of_a_run_releases(lock: KeyedLock) -> None:
    async def forever() -> None:
        await anyio.sleep_forever()

    with anyio.move_on_after(SHORT):
        await lock.run("k", forever)
    assert not lock.locked("k")
