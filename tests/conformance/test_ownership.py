"""Ownership: no re-acquire by the same owner, anyone may release(), a context manager releases
only its own hold, blocking sync calls are refused inside an event loop, contexts are single use."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextlib import ExitStack
from typing import Any

import anyio
import pytest
import trio

from keyedlock import KeyedLock, LockContext, LockTimeout

from ..drivers import Driver, Via
from ..support import WAIT, Threads, wait_waiters, wait_waiters_async
from .scopes import Scope, differs

SHORT = 0.02
REACQUIRE = "already held by this owner"


def nothing() -> None:
    pass


async def nothing_async() -> None:
    pass


# -- re-acquire by the same owner --------------------------------------------------------------

BLOCKING_SYNC: dict[str, Callable[[KeyedLock], object]] = {
    "acquire()": lambda lock: lock.acquire("k"),
    "acquire(timeout)": lambda lock: lock.acquire("k", timeout=WAIT),
    "with": lambda lock: ExitStack().enter_context(lock("k")),
    "with timeout": lambda lock: ExitStack().enter_context(lock("k", timeout=WAIT)),
    "run_sync": lambda lock: lock.run_sync("k", nothing),
    "guard": lambda lock: lock.guard("k")(nothing)(),
}


@pytest.mark.parametrize("attempt", BLOCKING_SYNC.values(), ids=BLOCKING_SYNC.keys())
@pytest.mark.parametrize("hold", ["with", "acquire"])
def test_a_thread_cannot_reacquire_its_key(
    lock: KeyedLock, hold: str, attempt: Callable[[KeyedLock], object]
) -> None:
    with ExitStack() as stack:
        if hold == "with":
            stack.enter_context(lock("k"))
        else:
            assert lock.acquire("k")
            stack.callback(lock.release, "k")
        with pytest.raises(RuntimeError, match=REACQUIRE):
            attempt(lock)
        assert lock.locked("k")
        assert lock.waiters("k") == 0
    assert len(lock) == 0


def test_a_thread_trying_its_own_key_once_just_fails(lock: KeyedLock) -> None:
    with lock("k"):
        assert lock.acquire("k", blocking=False) is False
        assert lock.acquire("k", timeout=0) is False
        with pytest.raises(LockTimeout), lock("k", timeout=0):
            pass
        assert lock.waiters("k") == 0


def _async_attempts(lock: KeyedLock) -> dict[str, Callable[[], Coroutine[Any, Any, object]]]:
    async def async_with(timeout: float | None) -> None:
        async with lock("k", timeout=timeout):
            pass

    return {
        "async with": lambda: async_with(None),
        "async with timeout": lambda: async_with(WAIT),
        "acquire_async()": lambda: lock.acquire_async("k"),
        "acquire_async(timeout)": lambda: lock.acquire_async("k", timeout=WAIT),
        "run": lambda: lock.run("k", nothing_async),
        "guard": lambda: lock.guard("k")(nothing_async)(),
    }


@pytest.mark.anyio
@pytest.mark.parametrize("hold", ["async with", "acquire_async", "acquire(blocking=False)"])
async def test_a_task_cannot_reacquire_its_key(lock: KeyedLock, hold: str) -> None:
    if hold == "async with":
        ctx = lock("k")
        await ctx.__aenter__()
    elif hold == "acquire_async":
        assert await lock.acquire_async("k")
    else:
        assert lock.acquire("k", blocking=False)
    for name, attempt in _async_attempts(lock).items():
        with pytest.raises(RuntimeError, match=REACQUIRE):
            await attempt()
        assert lock.waiters("k") == 0, name
    assert await lock.acquire_async("k", timeout=0) is False
    assert lock.acquire("k", blocking=False) is False
    with pytest.raises(LockTimeout):
        async with lock("k", timeout=0):
            pass
    if hold == "async with":
        await ctx.__aexit__(None, None, None)
    else:
        lock.release("k")


@pytest.mark.anyio
async def test_another_task_of_the_same_thread_waits(lock: KeyedLock) -> None:
    order: list[str] = []
    tried = anyio.Event()

    async def other() -> None:
        assert lock.acquire("k", blocking=False) is False  # busy, not "already held"
        assert await lock.acquire_async("k", timeout=SHORT) is False
        tried.set()
        async with lock("k"):
            order.append("other")

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg, lock("k"):
            tg.start_soon(other)
            await tried.wait()
            await wait_waiters_async(lock, "k", 1)
            order.append("first")
    assert order == ["first", "other"]


@pytest.mark.anyio
async def test_a_non_blocking_acquire_in_a_task_belongs_to_that_task(lock: KeyedLock) -> None:
    async def other() -> bool:
        return await lock.acquire_async("k", timeout=SHORT)

    assert lock.acquire("k", blocking=False)
    async with anyio.create_task_group() as tg:
        results: list[bool] = []

        async def run_other() -> None:
            results.append(await other())

        tg.start_soon(run_other)
    assert results == [False]  # another task: it waited, and timed out
    with pytest.raises(RuntimeError, match=REACQUIRE):
        await lock.acquire_async("k")  # this task: refused at once
    lock.release("k")


def test_a_task_is_not_the_thread_it_runs_in(lock: KeyedLock) -> None:
    async def probe() -> None:
        with pytest.raises(LockTimeout):
            async with lock("k", timeout=SHORT):
                pass

    with lock("k"):  # held by this thread
        asyncio.run(probe())  # a task of this thread is another owner: it waits
        trio.run(probe)
        assert lock.waiters("k") == 0


# -- release by anyone -------------------------------------------------------------------------


def test_another_runtime_may_release(driver: Driver, lock: KeyedLock) -> None:
    taken = driver.acquire(lock, "k")
    assert taken.result() is True
    assert lock.locked("k")
    lock.release("k")  # from the test thread, not the owner
    assert not lock.locked("k")

    lock.acquire("k")
    driver.call(lambda: lock.release("k")).result()
    assert not lock.locked("k")


def test_a_release_by_anyone_hands_the_key_on(driver: Driver, lock: KeyedLock) -> None:
    lock.acquire("k")
    waiter = driver.hold(lock, "k")
    wait_waiters(lock, "k", 1)
    driver.call(lambda: lock.release("k")).result()
    waiter.wait_entered()
    waiter.leave()
    assert waiter.result() == "left"


def test_release_of_an_unheld_key_raises(lock: KeyedLock) -> None:
    with pytest.raises(RuntimeError, match="not held"):
        lock.release("k")
    lock.acquire("k")
    lock.release("k")
    with pytest.raises(RuntimeError, match="not held"):
        lock.release("k")
    assert len(lock) == 0


@pytest.mark.anyio
async def test_release_of_an_unheld_key_raises_in_tasks(lock: KeyedLock) -> None:
    with pytest.raises(RuntimeError, match="not held"):
        lock.release("k")


# -- the context manager releases only its own hold --------------------------------------------

OWN_HOLD_VIAS: tuple[Via, ...] = ("with", "run", "guard")


@pytest.mark.parametrize("via", OWN_HOLD_VIAS)
def test_exit_after_someone_else_released_keeps_the_new_holder(
    driver: Driver, lock: KeyedLock, via: Via
) -> None:
    agent = driver.hold(lock, "k", via=via)
    agent.wait_entered()
    lock.release("k")  # someone else releases the agent's hold...
    assert lock.acquire("k", blocking=False)  # ...and the key gets a new holder
    agent.leave()
    with pytest.raises(RuntimeError, match="already released"):
        agent.result()
    assert lock.locked("k")  # the new holder still holds it
    assert lock.acquire("k", blocking=False) is False
    lock.release("k")


@pytest.mark.parametrize("via", OWN_HOLD_VIAS)
def test_exit_after_someone_else_released_keeps_the_next_waiter(
    driver: Driver, lock: KeyedLock, via: Via
) -> None:
    agent = driver.hold(lock, "k", via=via)
    agent.wait_entered()
    waiter = driver.hold(lock, "k", via=via)
    wait_waiters(lock, "k", 1)
    lock.release("k")
    waiter.wait_entered()
    agent.leave()
    with pytest.raises(RuntimeError, match="already released"):
        agent.result()
    assert lock.locked("k")
    assert not waiter.handle.finished.is_set()  # still inside, undisturbed
    waiter.leave()
    assert waiter.result() == "left"


@pytest.mark.anyio
async def test_a_waiter_whose_hold_another_released_before_it_ran_still_enters(
    scope: Scope, lock: KeyedLock
) -> None:
    """The key is handed to a waiting task, and someone else's ``release(key)`` releases
    that task's hold before it ran: the task had the key all the same. Its body runs, and
    its exit says the hold was released (as any holder's exit would), not that it timed
    out."""
    differs(
        scope,
        "file",
        "redis",
        why="a waiter handed the key here takes it in the wider scope when it runs; until "
        "then release(key) finds no holder there and raises",
    )
    entered: list[str] = []
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            async with lock("k"):
                entered.append("k")
        except Exception as exc:
            errors.append(exc)

    await lock.acquire_async("k")
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await wait_waiters_async(lock, "k", 1)
        lock.release("k")  # handed to the waiter, which has not run since...
        lock.release("k")  # ...and released by another caller before it does
    assert entered == ["k"]
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError), errors
    assert not lock.locked("k")


@pytest.mark.parametrize("via", OWN_HOLD_VIAS)
def test_exit_after_someone_else_released_an_idle_key(
    driver: Driver, lock: KeyedLock, via: Via
) -> None:
    agent = driver.hold(lock, "k", via=via)
    agent.wait_entered()
    lock.release("k")
    agent.leave()
    with pytest.raises(RuntimeError, match="not held"):
        agent.result()
    assert len(lock) == 0


# -- blocking sync calls inside an event loop --------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("attempt", BLOCKING_SYNC.values(), ids=BLOCKING_SYNC.keys())
async def test_blocking_sync_calls_are_refused_in_an_event_loop(
    lock: KeyedLock, attempt: Callable[[KeyedLock], object]
) -> None:
    with pytest.raises(RuntimeError, match="async with"):
        attempt(lock)
    assert len(lock) == 0


@pytest.mark.anyio
async def test_blocking_sync_calls_are_refused_even_when_the_key_is_busy(
    lock: KeyedLock, threads: Threads
) -> None:
    threads.start(lambda: lock.acquire("k")).result()
    for attempt in BLOCKING_SYNC.values():
        with pytest.raises(RuntimeError, match="async with"):
            attempt(lock)
    assert lock.waiters("k") == 0
    lock.release("k")


@pytest.mark.anyio
async def test_non_blocking_sync_acquire_is_allowed_in_an_event_loop(lock: KeyedLock) -> None:
    assert lock.acquire("k", blocking=False) is True
    assert lock.acquire("k", blocking=False) is False
    lock.release("k")
    assert lock.acquire("k", timeout=0) is True
    lock.release("k")


@pytest.mark.anyio
async def test_blocking_sync_calls_are_fine_in_a_worker_thread(lock: KeyedLock) -> None:
    def blocking() -> int:
        with lock("k"):
            pass
        assert lock.acquire("k")
        lock.release("k")
        return lock.run_sync("k", lambda: 42)

    assert await anyio.to_thread.run_sync(blocking) == 42


# -- async with outside asyncio and trio -------------------------------------------------------


def _step(coro: Coroutine[Any, Any, object]) -> None:
    """Run a coroutine's first step in this thread, where no event loop runs."""
    try:
        coro.send(None)
    finally:
        coro.close()


async def _enter(lock: KeyedLock) -> None:
    async with lock("k"):
        raise AssertionError("entered outside asyncio and trio")


def test_async_api_outside_asyncio_and_trio_raises(lock: KeyedLock) -> None:
    attempts: dict[str, Callable[[], Coroutine[Any, Any, object]]] = {
        "async with": lambda: _enter(lock),
        "acquire_async": lambda: lock.acquire_async("k"),
        "run": lambda: lock.run("k", nothing_async),
        "guard": lambda: lock.guard("k")(nothing_async)(),
    }
    for name, attempt in attempts.items():
        with pytest.raises(RuntimeError, match="asyncio task or trio task"):
            _step(attempt())
        assert len(lock) == 0, name


# -- a context is used once --------------------------------------------------------------------


def test_a_context_is_single_use(lock: KeyedLock) -> None:
    ctx = lock("k")
    assert isinstance(ctx, LockContext)
    with ctx:
        pass
    with pytest.raises(RuntimeError, match="already used"), ctx:
        pass
    assert len(lock) == 0


def test_double_exit_and_exit_without_enter_raise(lock: KeyedLock) -> None:
    ctx = lock("k")
    with pytest.raises(RuntimeError, match="not entered"):
        ctx.__exit__(None, None, None)
    ctx = lock("k")
    ctx.__enter__()
    ctx.__exit__(None, None, None)
    with pytest.raises(RuntimeError, match="not entered"):
        ctx.__exit__(None, None, None)
    assert len(lock) == 0


def test_a_context_that_timed_out_is_spent(lock: KeyedLock) -> None:
    ctx = lock("k", timeout=0)
    with lock("k"), pytest.raises(LockTimeout), ctx:
        pass
    with pytest.raises(RuntimeError, match="already used"), ctx:
        pass


@pytest.mark.anyio
async def test_an_async_context_is_single_use(lock: KeyedLock) -> None:
    ctx = lock("k")
    async with ctx:
        pass
    with pytest.raises(RuntimeError, match="already used"):
        async with ctx:
            pass
    ctx = lock("k")
    await ctx.__aenter__()
    await ctx.__aexit__(None, None, None)
    with pytest.raises(RuntimeError, match="not entered"):
        await ctx.__aexit__(None, None, None)


# -- checkpoints: asyncio never yields for a free key; trio does, as trio.Lock --------------------


def test_uncontended_async_with_does_not_yield_under_asyncio(scope: Scope, lock: KeyedLock) -> None:
    differs(scope, "redis", why="the first acquire of a key is a round trip to the server")

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()  # delivered at the next point where this task yields
        async with lock("k"):
            pass
        assert await lock.acquire_async("k")
        lock.release("k")
        with pytest.raises(asyncio.CancelledError):
            await asyncio.sleep(0)
        task.uncancel()

    asyncio.run(main())


def test_uncontended_async_with_checkpoints_under_trio(lock: KeyedLock) -> None:
    """As trio.Lock: a cancelled scope's body does not run, and a loop of acquires yields."""
    entered: list[str] = []

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with lock("k"):
                entered.append("body")  # pragma: no cover - the bug
        assert scope.cancelled_caught
        assert len(lock) == 0
        with trio.CancelScope() as scope:
            scope.cancel()
            assert await lock.acquire_async("k")  # pragma: no cover - the bug
        assert scope.cancelled_caught
        assert len(lock) == 0

        others_ran = 0

        async def other() -> None:
            nonlocal others_ran
            while True:
                others_ran += 1
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)  # it runs only when this task yields
            for _ in range(10):
                async with lock("k"):
                    pass
            assert others_ran > 0  # the loop of acquires let the other task run
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert entered == []


@pytest.mark.parametrize("fast", [False, True], ids=["checkpoints", "fast_acquire"])
def test_a_try_once_checkpoints_under_trio(make_lock: Callable[..., KeyedLock], fast: bool) -> None:
    """``timeout=0`` too: a cancelled scope's body does not run, and a loop of tries of a busy
    key lets its holder run (a try yields, taken or not). With ``fast_acquire``, a try of a
    busy key still checkpoints."""
    lock = make_lock(fast_acquire=fast)
    ran: list[str] = []

    async def main() -> None:
        if not fast:
            with trio.CancelScope() as scope:
                scope.cancel()
                async with lock("k", timeout=0):
                    ran.append("body")  # pragma: no cover - the bug
            assert scope.cancelled_caught
            with trio.CancelScope() as scope:
                scope.cancel()
                await lock.acquire_async("k", timeout=0)
            assert scope.cancelled_caught
            with trio.CancelScope() as scope:
                scope.cancel()
                await lock.run("k", ran.append, "run", timeout=0)
            assert scope.cancelled_caught
            assert len(lock) == 0

        held = trio.Event()

        async def holder() -> None:
            async with lock("p"):
                held.set()
                await trio.lowlevel.checkpoint()  # the poller's tries must let this run

        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await held.wait()
            for _ in range(1000):  # (bounded: the bug spins for good)
                if await lock.acquire_async("p", timeout=0):
                    break
            else:  # pragma: no cover - the bug
                raise AssertionError("the tries never let the holder run")
            lock.release("p")
            async with lock("p"):  # held: a try in a cancelled scope raises Cancelled
                with trio.CancelScope() as scope:
                    scope.cancel()
                    await lock.acquire_async("p", timeout=0)
                assert scope.cancelled_caught

    trio.run(main)
    assert ran == []
    assert len(lock) == 0


def test_fast_acquire_skips_the_checkpoints_under_trio() -> None:
    lock = KeyedLock(fast_acquire=True)

    async def main() -> None:
        with trio.CancelScope() as scope:
            scope.cancel()  # any checkpoint in here raises Cancelled
            async with lock("k"):
                pass
            assert await lock.acquire_async("k")
            lock.release("k")
        assert not scope.cancelled_caught

    trio.run(main)
    assert lock.fast_acquire is True
    assert len(lock) == 0
