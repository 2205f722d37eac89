"""A key taken with acquire() whose owner ends without releasing it.

Tasks (asyncio, trio): the hold is *abandoned*: logged, its waiters raise Abandoned, and so do
callers that would wait for it, until release(key) frees it. Threads: logged only (any thread
may release a key, as with threading.Lock), its waiters keep waiting for that release.
Contexts never leave a key behind: their exit releases it, however the task ends.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Hashable
from functools import partial

import pytest
import trio

from keyedlock import Abandoned, KeyedLock, KeyedLockError

from ..support import (
    WAIT,
    Records,
    ThreadHandle,
    no_report_on_its_way,
    start_thread,
    wait_until,
    wait_until_async,
    wait_waiters,
    wait_waiters_async,
)
from .scopes import Scope


def test_abandoned_is_a_keyed_lock_error() -> None:
    assert issubclass(Abandoned, KeyedLockError)


def ended_asyncio_holder(lock: KeyedLock, key: str) -> None:
    """An asyncio task takes ``key`` with acquire_async() and ends without releasing it."""

    async def main() -> None:
        async def leaker() -> None:
            assert await lock.acquire_async(key)

        await asyncio.create_task(leaker(), name="leaker")

    asyncio.run(main())
    assert lock.locked(key)


def waiter_in(lock: KeyedLock, runtime: str) -> ThreadHandle[object]:
    """A caller waiting for "k" in ``runtime`` (thread, asyncio or trio), in a thread of its
    own; its result() is "entered", or what its wait raised."""

    def in_a_thread() -> object:
        with lock("k", timeout=WAIT):
            return "entered"

    async def in_a_task() -> object:
        async with lock("k"):
            return "entered"

    run: dict[str, Callable[[], object]] = {
        "thread": in_a_thread,
        "asyncio": lambda: asyncio.run(in_a_task()),
        "trio": lambda: trio.run(in_a_task),
    }
    return start_thread(run[runtime], f"{runtime} waiter")


def end_holder_and_expect_abandoned(
    lock: KeyedLock,
    end: threading.Event,
    holding: ThreadHandle[None],
    waiters: list[ThreadHandle[object]],
    match: str,
) -> None:
    """Let the holder's task end (holding "k"): every waiter raises Abandoned, nothing is
    left queued, and release("k") frees the key."""
    end.set()
    holding.result()
    for waiter in waiters:
        with pytest.raises(Abandoned, match=match):
            waiter.result()
    assert lock.waiters("k") == 0
    lock.release("k")
    assert len(lock) == 0


def test_callers_of_a_key_left_by_an_ended_task_raise(lock: KeyedLock, records: Records) -> None:
    ended_asyncio_holder(lock, "k")
    with pytest.raises(Abandoned, match="asyncio task 'leaker'"), lock("k", timeout=WAIT):
        pass
    with pytest.raises(Abandoned):
        lock.acquire("k")
    assert lock.acquire("k", blocking=False) is False  # trying once never waits: no error
    assert lock.locked("k")
    assert records.arrived.wait(WAIT)  # (a manager is told by the holder's process, then logs)
    assert any("asyncio task 'leaker'" in message for message in records.messages())

    lock.release("k")  # anyone may still release it: then the key works as always
    with lock("k"):
        pass
    assert len(lock) == 0


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_a_key_left_by_an_ended_task_is_logged_before_anyone_waits_here(
    scope: Scope, lock: KeyedLock, records: Records, runtime: str
) -> None:
    """In the scopes whose callers may wait in other processes (lock file, manager, Redis),
    a task's acquire_async() hold is watched from the moment it is taken: its end is logged
    at once, not only once a caller of this process waits. (The process scope watches a
    holder once someone waits behind it: every caller is in this process.)"""
    if scope.name == "process":
        pytest.skip("the process scope watches a holder once a caller waits for it")

    async def leaker() -> None:
        assert await lock.acquire_async("k")

    if runtime == "asyncio":
        asyncio.run(leaker())
    else:
        trio.run(leaker)
    assert records.arrived.wait(WAIT), "the end of the task holding the key was not logged"
    [message] = [m for m in records.messages() if "ended without releasing it" in m]
    assert f"{runtime} task" in message
    with pytest.raises(Abandoned):
        lock.acquire("k", timeout=WAIT)
    lock.release("k")
    assert len(lock) == 0


def test_waiters_queued_when_the_task_ends_raise(lock: KeyedLock) -> None:
    entered, end = threading.Event(), threading.Event()

    async def holder() -> None:
        assert await lock.acquire_async("k")
        entered.set()
        await asyncio.to_thread(end.wait, WAIT)

    holding = start_thread(lambda: asyncio.run(holder()), "holder loop")
    assert entered.wait(WAIT)
    waiters = [waiter_in(lock, "thread"), waiter_in(lock, "trio")]
    wait_waiters(lock, "k", 2)
    end_holder_and_expect_abandoned(lock, end, holding, waiters, "asyncio task")


@pytest.mark.parametrize("took", ["acquire_async", "acquire(blocking=False)"])
def test_waiters_in_other_threads_of_an_ended_trio_task_raise(lock: KeyedLock, took: str) -> None:
    """The trio holder's end is watched from the waiters' threads through its run."""
    entered, end = threading.Event(), threading.Event()

    async def holder() -> None:
        if took == "acquire_async":
            assert await lock.acquire_async("k")
        else:
            assert lock.acquire("k", blocking=False)
        entered.set()
        await trio.to_thread.run_sync(end.wait, WAIT)

    holding = start_thread(lambda: trio.run(holder), "holder run")
    assert entered.wait(WAIT)
    waiters = [waiter_in(lock, "thread"), waiter_in(lock, "asyncio")]
    wait_waiters(lock, "k", 2)
    end_holder_and_expect_abandoned(lock, end, holding, waiters, "trio task")


def test_a_trio_task_handed_the_key_is_watched_before_it_resumes(lock: KeyedLock) -> None:
    """The key reaches a trio task (its run's first acquire) while its run is busy; a thread
    queues behind it before it resumes: the run was noted when the task began to wait."""
    parked, gate = threading.Event(), threading.Event()
    assert lock.acquire("k")

    async def run() -> None:
        async def taker() -> None:
            assert await lock.acquire_async("k")  # and ends holding it

        async with trio.open_nursery() as nursery:
            nursery.start_soon(taker)
            await wait_waiters_async(lock, "k", 1)
            parked.set()
            assert gate.wait(WAIT)  # (blocks the run: the taker cannot resume meanwhile)

    holding = start_thread(lambda: trio.run(run), "trio run")
    assert parked.wait(WAIT)
    lock.release("k")  # handed to the taker, which has not resumed
    before = lock.waiters("k")  # (a wide scope counts the taker until it holds there too)
    waiter = waiter_in(lock, "thread")
    wait_waiters(lock, "k", before + 1)
    end_holder_and_expect_abandoned(lock, gate, holding, [waiter], "trio task")


def test_a_trio_task_that_ends_holding(lock: KeyedLock) -> None:
    outcomes: list[str] = []

    async def main() -> None:
        got_it = trio.Event()

        async def leaker() -> None:
            assert await lock.acquire_async("k")
            got_it.set()

        async def waiter() -> None:
            try:
                async with lock("k"):
                    outcomes.append("entered")
            except Abandoned:
                outcomes.append("abandoned")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leaker, name="leaker")
            await got_it.wait()
            nursery.start_soon(waiter)
        with trio.fail_after(WAIT), pytest.raises(Abandoned, match="trio task"):
            await lock.acquire_async("k")

    trio.run(main)
    assert outcomes == ["abandoned"]
    lock.release("k")


def test_a_thread_that_ends_holding_is_only_reported(lock: KeyedLock, records: Records) -> None:
    """threading.Lock's convention: another thread may release it, so its waiters wait."""
    done = threading.Event()

    def taker() -> None:
        assert lock.acquire("k")

    def waiter() -> object:
        with lock("k", timeout=WAIT):
            done.set()
            return "entered"

    holder = threading.Thread(target=taker, name="taker")
    holder.start()
    holder.join(WAIT)
    waiting = start_thread(waiter, "waiter")
    wait_waiters(lock, "k", 1)
    assert records.arrived.wait(WAIT), "the thread's end was not reported"
    assert "thread 'taker'" in records.messages()[0]
    assert not done.is_set()  # still waiting: nobody said the key is lost
    lock.release("k")  # the release the ended thread left to someone else
    assert waiting.result() == "entered"


def test_a_context_never_leaves_its_key(lock: KeyedLock, records: Records) -> None:
    async def main() -> None:
        async def in_a_context() -> None:
            async with lock("k"):
                pass

        await asyncio.create_task(in_a_context())

    asyncio.run(main())
    assert not lock.locked("k")
    assert records.records == []


def test_a_context_that_outlives_its_task_is_not_abandoned(
    lock: KeyedLock, records: Records
) -> None:
    """A task whose end is watched (it took a key with acquire()) enters a context in an async
    generator and ends with it open; another task closes the generator later. The context's
    exit releases its key: it is not abandoned, and its waiter gets it."""
    entered: list[str] = []

    async def main() -> None:
        async def in_a_context() -> AsyncGenerator[None, None]:
            async with lock("k"):
                yield

        kept: list[AsyncGenerator[None, None]] = []

        async def owner() -> None:
            assert await lock.acquire_async("x")  # (its end is watched from now on)
            lock.release("x")
            generator = in_a_context()
            await generator.__anext__()  # the context is entered by this task
            kept.append(generator)

        async def waiter() -> None:
            async with lock("k", timeout=WAIT):
                entered.append("waiter")

        await asyncio.create_task(owner(), name="owner")  # ends, the context still open
        await asyncio.to_thread(wait_until, no_report_on_its_way, "its end was told")
        waiting = asyncio.create_task(waiter())
        await wait_until_async(lambda: waiting.done() or lock.waiters("k") == 1, "it waits")
        if waiting.done():
            await waiting  # (what it raised, if the key was taken for abandoned)
        await kept[0].aclose()  # the context exits, in this task
        await waiting

    asyncio.run(main())
    assert entered == ["waiter"]
    assert records.records == []
    assert len(lock) == 0


def test_a_key_released_before_its_owner_ends_is_not_abandoned(
    make_lock: Callable[..., KeyedLock], records: Records
) -> None:
    lock = make_lock()

    async def main() -> None:
        taken, released = asyncio.Event(), asyncio.Event()

        async def short() -> None:
            assert await lock.acquire_async("k")
            taken.set()
            await released.wait()

        async def waiter() -> None:
            async with lock("k"):
                pass

        holder = asyncio.create_task(short())
        await asyncio.wait_for(taken.wait(), WAIT)
        waiting = asyncio.create_task(waiter())
        await wait_waiters_async(lock, "k", 1)
        lock.release("k")  # released by someone else while its owner still runs
        released.set()
        await holder
        await waiting

    asyncio.run(main())
    assert len(lock) == 0
    assert records.records == []


class _Key:
    """A key that can be weakly referenced (hashed by identity)."""


def test_a_dropped_lock_is_freed_though_the_holder_it_watched_goes_on() -> None:
    """Waiting behind an acquire() makes the lock watch the holder's thread; the watch must
    not keep the lock (its holds, their keys) alive as long as that thread (here the main
    one) lives."""
    key = _Key()
    freed = weakref.ref(key)
    lock = KeyedLock()
    wait_behind_an_acquire(lock, key)
    del lock, key
    gc.collect()
    assert freed() is None


def test_a_released_key_is_not_kept_by_the_watch_of_its_holder() -> None:
    """Once released, a key that was waited for costs nothing, although its holder's
    thread goes on and the lock lives."""
    key = _Key()
    freed = weakref.ref(key)
    lock = KeyedLock()
    wait_behind_an_acquire(lock, key)
    del key
    gc.collect()
    assert freed() is None
    assert len(lock) == 0


def wait_behind_an_acquire(lock: KeyedLock, key: Hashable) -> None:
    """This thread takes ``key`` with acquire(); another one waits for it, gets it, leaves."""
    assert lock.acquire(key)
    waiter = start_thread(partial(lock.acquire, key, timeout=WAIT), "waiter")
    wait_waiters(lock, key, 1)
    lock.release(key)  # to the waiter
    assert waiter.result() is True
    lock.release(key)


def test_watching_many_locks_from_one_thread_keeps_no_trace() -> None:
    """Each lock watches the holder's thread once; locks dropped meanwhile are forgotten."""
    import keyedlock._runtime._ends as ends
    from keyedlock._runtime import thread_owners

    for _ in range(40):
        wait_behind_an_acquire(KeyedLock(), "k")
        gc.collect()
    assert len(ends._waiting.get(thread_owners.token, ())) < 16


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_does_not_report_the_parents_threads(records: Records) -> None:
    """fork drops the parent's other threads in the child, before the at-fork handlers run:
    those are not ends (the parent's holder, watched for its waiter, is not reported)."""
    lock = KeyedLock()
    taken, end = threading.Event(), threading.Event()

    def holder() -> None:
        assert lock.acquire("k")
        taken.set()
        end.wait(WAIT)
        lock.release("k")

    holding = start_thread(holder, "holder")
    assert taken.wait(WAIT)
    waiting = start_thread(lambda: lock.acquire("k", timeout=WAIT), "waiter")
    wait_waiters(lock, "k", 1)  # the holder's thread is watched now
    pid = os.fork()
    if pid == 0:  # the child: report how many records its logging made, and leave
        os._exit(len(records.records))
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        end.set()
    assert os.waitstatus_to_exitcode(status) == 0
    holding.result()
    assert waiting.result() is True
    lock.release("k")
