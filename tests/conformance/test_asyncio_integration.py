"""asyncio corners: helpers given the context's own awaitables, fork children of a task, and a
wake-up racing ``loop.close()``."""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from collections.abc import Callable

import pytest

from keyedlock import KeyedLock, LockContext

from ..support import WAIT, run_python, start_thread, wait_waiters

# -- asyncio helpers take what __aenter__ / __aexit__ return ------------------------------------


def test_gather_and_wait_for_take_the_contexts_awaitables(lock: KeyedLock) -> None:
    """Entering several keys at once with gather, or one with wait_for, and leaving through
    shield: the uncontended awaitables are real asyncio awaitables of the running loop."""

    async def main() -> None:
        contexts: list[LockContext] = [lock(f"k{i}") for i in range(3)]
        await asyncio.gather(*(ctx.__aenter__() for ctx in contexts))
        assert all(lock.locked(f"k{i}") for i in range(3))
        await asyncio.gather(*(ctx.__aexit__(None, None, None) for ctx in contexts))
        assert len(lock) == 0
        ctx = lock("k")
        await asyncio.wait_for(ctx.__aenter__(), WAIT)
        assert lock.locked("k")
        await asyncio.shield(ctx.__aexit__(None, None, None))
        assert len(lock) == 0
        for _ in range(3):  # the same finished future serves every entry on this loop
            task = asyncio.ensure_future(lock("k").__aenter__())
            await task
            lock.release("k")

    asyncio.run(main())


# -- fork children of a task ---------------------------------------------------------------------

FORK_CHILD = """
import asyncio, os, sys
from keyedlock import flight, klock

async def child():
    async def user():
        async with klock("child-key"):
            await asyncio.sleep(0)
    async def caller():
        async def call():
            await asyncio.sleep(0)
            return 42
        return await flight.do("child-call", call)
    results = await asyncio.wait_for(asyncio.gather(user(), user(), caller(), caller()), 10)
    return results[2:]

async def parent():
    async with klock("parent-key"):  # the parent's loop is now the remembered one
        pass
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            print(asyncio.run(child()), flush=True)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))

asyncio.run(parent())
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_from_a_task_has_owners_of_its_own() -> None:
    """A child forked inside an asyncio task (a process pool's fork start) runs its own loop:
    its tasks are distinct owners, not all the parent's task at the time of the fork."""
    assert run_python(FORK_CHILD).strip() == "[42, 42]"


# -- a wake-up racing loop.close() ----------------------------------------------------------------


def test_a_wake_up_queued_after_close_cleared_the_queue_passes_the_key_on(
    lock: KeyedLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """call_soon_threadsafe checks for a closed loop, then queues: a close() in between leaves
    the wake-up in the closed loop's queue, where nothing runs or drops it. The waker sees the
    loop closed and passes the key on."""

    async def waiter() -> None:
        async with lock("k"):
            raise AssertionError("its loop never runs again")

    assert lock.acquire("k")
    loop = asyncio.new_event_loop()
    task = loop.create_task(waiter())
    loop.run_until_complete(asyncio.sleep(0))
    wait_waiters(lock, "k", 1)
    assert not task.done()
    after = start_thread(lambda: lock.acquire("k", timeout=WAIT), name="next")
    wait_waiters(lock, "k", 2)
    queue_then_close: Callable[..., object] = loop.call_soon_threadsafe

    def racing_close(callback: Callable[[], object]) -> object:
        handle = queue_then_close(callback)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loop.close()  # clears the queue
        loop._ready.append(handle)  # type: ignore[attr-defined]  # the race: queued after the clear
        return handle

    monkeypatch.setattr(loop, "call_soon_threadsafe", racing_close)
    releaser = threading.Thread(target=lock.release, args=("k",))  # from another thread
    releaser.start()
    releaser.join(WAIT)
    assert after.result() is True
    lock.release("k")
    assert len(lock) == 0
