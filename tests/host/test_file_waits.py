"""Waiting for a key another process holds: event loops keep running, cancellation and
timeouts leave nothing held, a late grant is given back, an abandoned wait is adopted.

The other process is an :class:`~tests.host.file_support.Agent` (``python -c``). "Given back"
is always proven by a third process getting the key (a bounded blocking acquire there).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from functools import partial

import anyio
import pytest

from keyedlock import FileKeyedLock, LockTimeout, QueueFull

from ..support import (
    WAIT,
    scope_of,
    start_thread,
    table_of,
    task_on_a_closed_loop,
    wait_until,
    wait_until_async,
)
from .file_support import Children, fds_of, helper_threads, own_fds, wait_waiters

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="open file description locks"
)

#: A timeout that surely elapses: the key is held by another process until the test says so.
SHORT = 0.05


def _pending(lock: FileKeyedLock) -> int:
    """How many kernel waits of ``lock`` are pending in helper threads."""
    return len(scope_of(lock).pending)


def _given_back(lock: FileKeyedLock, children: Children) -> None:
    """The key is not held by this process any more: a third process gets it, and no
    kernel wait or descriptor of its own is left."""
    third = children.agent(lock.path)
    assert third.ask("acquire", "k", WAIT) == "True"
    wait_until(lambda: _pending(lock) == 0, "the abandoned kernel wait ends")
    assert fds_of(lock.path) == own_fds(lock)
    assert third.ask("release", "k") == "ok"


@pytest.mark.anyio
async def test_async_waiter_keeps_its_loop_running(
    file_lock: FileKeyedLock, children: Children
) -> None:
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    ticks = 0
    acquired_at: list[int] = []
    done = anyio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await anyio.sleep(0.001)

    async def waiter() -> None:
        async with file_lock("k", timeout=WAIT):
            acquired_at.append(ticks)
        done.set()

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            tg.start_soon(waiter)
            await wait_until_async(lambda: _pending(file_lock) == 1, "the waiter waits")
            before = ticks
            await wait_until_async(lambda: ticks >= before + 20, "the loop ticks meanwhile")
            assert not acquired_at
            assert holder.ask("release", "k") == "ok"
            await done.wait()
    assert acquired_at
    assert acquired_at[0] >= before + 20
    assert not file_lock.locked("k")


@pytest.mark.anyio
async def test_async_cancellation_leaves_nothing_held(
    file_lock: FileKeyedLock, children: Children
) -> None:
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    entered = False

    async def waiter() -> None:
        nonlocal entered
        async with file_lock("k"):
            entered = True

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await wait_until_async(lambda: _pending(file_lock) == 1, "the waiter waits")
            tg.cancel_scope.cancel()
    assert not entered
    assert len(file_lock) == 0
    assert _pending(file_lock) == 1  # the kernel wait outlives its waiter
    # The kernel grants the key to the abandoned wait: its helper thread gives it back.
    assert holder.ask("release", "k") == "ok"
    _given_back(file_lock, children)


def test_a_task_cancelled_as_the_kernel_grants_it_the_key_leaves_no_wait_behind(
    file_lock: FileKeyedLock, children: Children
) -> None:
    """The grant is recorded for the task while its loop is busy; the task is cancelled
    before it runs. The key is given back, and its ended wait is gone: a try of the key
    (``timeout=0``) gets it, as it would any free key."""
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"

    async def main() -> None:
        task = asyncio.create_task(file_lock.acquire_async("k"))
        await wait_until_async(lambda: _pending(file_lock) == 1, "the task waits in the kernel")
        # This step keeps the loop busy while the other process releases the key.
        assert holder.ask("release", "k") == "ok"
        wait_until(lambda: len(scope_of(file_lock).held) == 1, "the grant is recorded")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert len(file_lock) == 0
    assert _pending(file_lock) == 0
    assert file_lock.acquire("k", timeout=0)
    file_lock.release("k")
    _given_back(file_lock, children)


@pytest.mark.anyio
async def test_async_timeouts_leave_nothing_held(
    file_lock: FileKeyedLock, children: Children
) -> None:
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    assert await file_lock.acquire_async("k", timeout=0) is False
    assert await file_lock.acquire_async("k", timeout=SHORT) is False
    with pytest.raises(LockTimeout, match="'k'"):
        async with file_lock("k", timeout=SHORT):
            pytest.fail("entered a held key")
    with pytest.raises(LockTimeout):
        await file_lock.run("k", lambda: None, timeout=SHORT)
    assert len(file_lock) == 0
    assert _pending(file_lock) == 1  # one kernel wait, adopted by each later waiter
    assert holder.ask("release", "k") == "ok"
    _given_back(file_lock, children)


def test_sync_timeouts_leave_nothing_held(file_lock: FileKeyedLock, children: Children) -> None:
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    assert file_lock.acquire("k", blocking=False) is False
    assert file_lock.acquire("k", timeout=SHORT) is False
    with pytest.raises(LockTimeout, match="'k'"), file_lock("k", timeout=SHORT):
        pytest.fail("entered a held key")
    with pytest.raises(LockTimeout):
        file_lock.run_sync("k", lambda: None, timeout=SHORT)
    assert len(file_lock) == 0
    assert holder.ask("release", "k") == "ok"
    _given_back(file_lock, children)


def test_next_local_holder_adopts_the_abandoned_wait(
    file_lock: FileKeyedLock, children: Children
) -> None:
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    assert file_lock.acquire("k", timeout=SHORT) is False
    scope = scope_of(file_lock)
    offset = scope.map_key("k")
    wait = scope.pending[offset]
    threads = helper_threads()
    assert file_lock.acquire("k", timeout=SHORT) is False
    assert scope.pending[offset] is wait  # adopted, not started again
    handle = start_thread(lambda: file_lock.acquire("k", timeout=WAIT), "adopter")
    wait_until(lambda: wait.job._claimed, "the third waiter adopts the kernel wait")
    assert helper_threads() <= threads  # no new helper thread
    assert holder.ask("release", "k") == "ok"
    assert handle.result() is True
    holder_hold = table_of(file_lock)._holds[offset]
    assert scope.held[holder_hold] == wait.fd != scope.fd  # held through the adopted descriptor
    file_lock.release("k")
    assert fds_of(file_lock.path) == own_fds(file_lock)  # no descriptor per wait
    assert holder.ask("acquire", "k", 0) == "True"
    assert holder.ask("release", "k") == "ok"


def test_an_adopter_interrupted_as_it_claims_the_wait_lets_it_go(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right after the next local holder claimed the kernel wait a timed-out waiter
    left running: its cleanup lets the claim go, so the grant that comes later is given
    back. (It was recorded for a hold that was gone: the byte stayed locked on the host.)"""
    lock, other = FileKeyedLock(lock_path), FileKeyedLock(lock_path)  # two descriptions
    assert other.acquire("k")
    assert lock.acquire("k", timeout=SHORT) is False  # its kernel wait keeps running
    scope = scope_of(lock)
    wait = scope.pending[scope.map_key("k")]
    job_type = type(wait.job)
    claim = job_type.claim

    def interrupted(job: object, accept: object = None) -> bool:
        monkeypatch.setattr(job_type, "claim", claim)  # (once)
        if claim(job, accept):
            raise KeyboardInterrupt  # (as a signal handler would, as the call returns)
        return False

    monkeypatch.setattr(job_type, "claim", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lock.acquire("k", timeout=WAIT)
    other.release("k")  # the kernel grants the wait now, to nobody
    wait_until(lambda: _pending(lock) == 0, "the kernel wait ends")
    assert other.acquire("k", timeout=WAIT), "the byte stayed locked through the waits' fd"
    other.release("k")
    assert not scope.held
    assert len(lock) == 0


def test_local_waiters_are_served_in_arrival_order(
    file_lock: FileKeyedLock, children: Children
) -> None:
    """FIFO within the process: only the first local waiter waits in the kernel."""
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    order: list[int] = []
    gate = threading.Lock()

    def worker(i: int) -> None:
        with file_lock("k", timeout=WAIT), gate:
            order.append(i)

    handles = []
    for i in range(4):
        handles.append(start_thread(lambda i=i: worker(i), f"worker-{i}"))  # type: ignore[misc]
        if i == 0:
            wait_until(lambda: _pending(file_lock) == 1, "the first waits in the kernel")
        else:
            wait_waiters(file_lock, "k", i + 1)
    assert file_lock.waiters("k") == 4  # this process's waiters; the kernel wait is the first
    assert holder.ask("release", "k") == "ok"
    for handle in handles:
        handle.result()
    assert order == [0, 1, 2, 3]


def test_the_first_waiter_for_another_process_counts_as_a_waiter(lock_path: str) -> None:
    """The caller of this process that waits in the kernel is counted (waiters, statistics)
    and bounded (max_waiters) as the ones queued behind it are."""
    other = FileKeyedLock(lock_path)  # its own open file description: as another process
    assert other.acquire("k")
    lock = FileKeyedLock(lock_path)
    bounded = FileKeyedLock(lock_path, max_waiters=0)
    try:
        waiter = start_thread(partial(lock.acquire, "k", timeout=WAIT), "waiter")
        wait_waiters(lock, "k", 1)
        stats = lock.statistics("k")
        assert (stats.locked, stats.waiters, dict(stats.waiters_by_runtime)) == (
            True,
            1,
            {"thread": 1},
        )
        assert stats.holder is not None
        assert stats.holder.runtime == "process"  # (another open file description's)
        assert stats.holder.pid == os.getpid()  # (this process's, through another lock)
        with pytest.raises(
            QueueFull, match=r"^key 'k' is held and max_waiters=0: nobody may wait for it$"
        ):
            bounded.acquire("k")
        with pytest.raises(QueueFull), bounded("k", timeout=WAIT):
            pass

        async def in_a_task() -> None:
            async with bounded("k"):
                pass

        with pytest.raises(QueueFull):
            asyncio.run(in_a_task())
        assert bounded.acquire("k", timeout=0) is False  # trying once is never queueing
        assert len(bounded) == 0
    finally:
        other.release("k")
    assert waiter.result() is True
    lock.release("k")
    assert lock.waiters("k") == 0


def test_asyncio_loop_closed_while_its_task_waits(
    file_lock: FileKeyedLock, children: Children
) -> None:
    """The claimant's loop is gone when the kernel grants: the helper thread gives the key
    back, to the other processes and to this process's next caller (a thread queued here
    behind the task, which waited for good before)."""
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    task = task_on_a_closed_loop(
        lambda: file_lock.acquire_async("k"), lambda: _pending(file_lock) == 1
    )
    waiter = start_thread(lambda: file_lock.acquire("k", timeout=WAIT))
    wait_until(lambda: file_lock.waiters("k") == 2, "a thread queues behind the task")
    assert holder.ask("release", "k") == "ok"
    assert waiter.result() is True
    third = children.agent(file_lock.path)
    assert third.ask("acquire", "k", 0) == "False"  # the thread holds it
    file_lock.release("k")
    assert third.ask("acquire", "k", WAIT) == "True"
    wait_until(lambda: _pending(file_lock) == 0, "the abandoned kernel wait ends")
    task.get_coro().close()  # the task never runs again; closing it later changes nothing
    assert len(file_lock) == 0
    assert third.ask("release", "k") == "ok"


def test_a_kernel_wait_that_fails_for_a_task_whose_loop_closed_passes_the_key_on(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As when the kernel grants it, when its wait ends in an error: the task can never
    take the failure, and a thread queued behind it gets the key."""
    import errno

    import keyedlock._scopes._lockfile._kernelwait as file_waits
    import keyedlock._scopes._lockfile._keys as file_keys

    other = FileKeyedLock(lock_path)  # its own open file description: as another process
    lock = FileKeyedLock(lock_path)
    assert other.acquire("k")
    fail = threading.Event()
    real = file_keys.fcntl_call

    def failing(fd: int, cmd: int, arg: bytes) -> bytes:
        if cmd == file_keys.SETLKW:  # the task's kernel wait, the key still held: it fails
            monkeypatch.setattr(file_waits, "fcntl_call", real)
            assert fail.wait(WAIT)
            raise OSError(errno.ENOLCK, "no locks available")
        return real(fd, cmd, arg)

    monkeypatch.setattr(file_waits, "fcntl_call", failing)
    task = task_on_a_closed_loop(lambda: lock.acquire_async("k"), lambda: _pending(lock) == 1)
    waiter = start_thread(lambda: lock.acquire("k", timeout=WAIT))
    wait_until(lambda: lock.waiters("k") == 2, "a thread queues behind the task")
    fail.set()
    wait_until(lambda: lock.waiters("k") == 1, "the thread is first in this process")
    other.release("k")
    assert waiter.result() is True
    lock.release("k")
    task.get_coro().close()
    assert len(lock) == 0


def test_kernel_wait_error_is_raised_and_leaves_nothing(
    file_lock: FileKeyedLock, children: Children, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import keyedlock._scopes._lockfile._kernelwait as file_waits
    import keyedlock._scopes._lockfile._keys as file_keys

    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    real = file_keys.fcntl_call

    def failing(fd: int, cmd: int, arg: bytes) -> bytes:
        if cmd == file_keys.SETLKW:
            raise OSError(errno.ENOLCK, "no locks available")
        return real(fd, cmd, arg)

    monkeypatch.setattr(file_waits, "fcntl_call", failing)
    with pytest.raises(OSError, match="no locks available"):
        file_lock.acquire("k", timeout=WAIT)
    assert len(file_lock) == 0
    assert _pending(file_lock) == 0
    assert fds_of(file_lock.path) == own_fds(file_lock)


def test_release_of_a_key_still_awaited_in_the_kernel_raises(
    file_lock: FileKeyedLock, children: Children
) -> None:
    """The local holder waiting for another process does not hold the key yet."""
    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"
    waiter = start_thread(lambda: file_lock.acquire("k", timeout=WAIT), "waiter")
    wait_until(lambda: _pending(file_lock) == 1, "the waiter waits in the kernel")
    assert file_lock.locked("k")
    with pytest.raises(RuntimeError, match="does not hold"):
        file_lock.release("k")
    assert holder.ask("release", "k") == "ok"
    assert waiter.result() is True
    file_lock.release("k")
    assert holder.ask("acquire", "k", 0) == "True"


class Interrupted(Exception):
    """Raised by the test's signal handler, like KeyboardInterrupt for Ctrl-C."""


def test_interrupted_blocking_wait_leaves_nothing_held(
    file_lock: FileKeyedLock, children: Children
) -> None:
    """A thread without a timeout waits in the kernel itself; a signal handler that raises
    (Ctrl-C) ends the wait, and nothing stays held or queued."""
    import signal

    holder = children.agent(file_lock.path)
    assert holder.ask("acquire", "k", 0) == "True"

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted

    main = threading.get_ident()
    stop = threading.Event()

    def keep_signalling() -> None:
        while not stop.wait(0.01):  # until the main thread has been interrupted
            signal.pthread_kill(main, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    sender = threading.Thread(target=keep_signalling, daemon=True)
    try:
        sender.start()
        with pytest.raises(Interrupted):
            file_lock.acquire("k")
    finally:
        stop.set()
        sender.join(WAIT)
        signal.signal(signal.SIGUSR1, previous)
    assert len(file_lock) == 0
    assert _pending(file_lock) == 0  # it waited in this thread, not in a helper
    assert holder.ask("release", "k") == "ok"
    assert not file_lock.locked("k")
    assert holder.ask("acquire", "k", 0) == "True"
