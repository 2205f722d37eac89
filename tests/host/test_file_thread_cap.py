"""FileKeyedLock waits in at most ``max_threads`` helper threads: the waits beyond the cap queue,
first come, first served, and start as threads free up; a queued wait holds no thread and no
descriptor and gives up at once (timeout, cancellation); the lock keeps two descriptors however
many keys it waits for or holds, so a low ``RLIMIT_NOFILE`` serves every waiter.

The keys are held by another process (an :class:`~tests.host.file_support.Agent`); a key is
"given back" when that process can take it again at once.
"""

from __future__ import annotations

import inspect
import multiprocessing
import pickle
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import anyio
import pytest

from keyedlock import FileKeyedLock, LockTimeout
from keyedlock._scopes import DEFAULT_MAX_THREADS

from ..support import WAIT, scope_of, start_thread, wait_until, wait_until_async
from .file_support import Children, fds_of, helper_threads, own_fds

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="open file description locks"
)

FORK = multiprocessing.get_context("fork")

#: A timeout that surely elapses: the key stays held by another process until the test says so.
SHORT = 0.05

#: Threads a test may see besides the helper threads: its own watcher, and one to spare.
SLACK = 2


def _pool(lock: FileKeyedLock) -> Any:
    """The lock's helper threads (an ``OffloadPool``: ``threads``, ``queued``, ``limit``)."""
    return scope_of(lock).threads


def _wait_of(lock: FileKeyedLock, key: str) -> Any:
    """The kernel wait of ``key`` (running or queued for a thread), or None."""
    scope = scope_of(lock)
    return scope.pending.get(scope.map_key(key))


def _waits(lock: FileKeyedLock, key: str) -> bool:
    return _wait_of(lock, key) is not None


def _queued(lock: FileKeyedLock, key: str) -> bool:
    wait = _wait_of(lock, key)
    return wait is not None and bool(wait.job.queued)


def _local_waiters(lock: FileKeyedLock, key: str, count: int) -> bool:
    return lock.waiters(key) == count


def _running(lock: FileKeyedLock, key: str) -> bool:
    wait = _wait_of(lock, key)
    return wait is not None and not wait.job.queued and not wait.job.done


def _all_gone(lock: FileKeyedLock) -> None:
    """No kernel wait, helper thread or descriptor beyond the lock's own is left."""
    wait_until(lambda: not scope_of(lock).pending, "every kernel wait ends")
    wait_until(lambda: _pool(lock).threads == 0 and not helper_threads(), "helper threads end")
    assert _pool(lock).queued == 0
    assert fds_of(lock.path) == own_fds(lock)
    assert len(lock) == 0


@contextmanager
def thread_watch() -> Iterator[list[int]]:
    """Sample ``threading.active_count()`` from a thread of its own while the block runs;
    yields ``[peak]`` (the most threads seen, the watcher included), final at exit."""
    peak = [threading.active_count() + 1]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.0005):
            peak[0] = max(peak[0], threading.active_count())

    watcher = threading.Thread(target=watch, name="thread-watch", daemon=True)
    watcher.start()
    try:
        yield peak
    finally:
        stop.set()
        watcher.join(WAIT)


# -- the option ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["4", 4.0, True, None])
def test_max_threads_must_be_an_int(lock_path: str, bad: Any) -> None:
    with pytest.raises(TypeError, match="max_threads must be an int >= 1"):
        FileKeyedLock(lock_path, max_threads=bad)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_threads_must_be_at_least_one(lock_path: str, bad: int) -> None:
    with pytest.raises(ValueError, match="max_threads must be >= 1"):
        FileKeyedLock(lock_path, max_threads=bad)


def test_max_threads_default_repr_and_copies(lock_path: str) -> None:
    assert FileKeyedLock(lock_path).max_threads == 64
    # (the signature shows the number; the scope's own default is the same)
    assert inspect.signature(FileKeyedLock).parameters["max_threads"].default == 64
    assert DEFAULT_MAX_THREADS == 64
    lock = FileKeyedLock(lock_path, max_threads=3)
    assert lock.max_threads == 3
    assert "max_threads=3" in repr(lock)
    assert pickle.loads(pickle.dumps(lock)).max_threads == 3  # a spawned copy keeps it
    with pytest.raises(TypeError):
        FileKeyedLock(lock_path, None, False, 3)  # type: ignore[call-arg] # keyword-only


# -- beyond the cap -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_waits_beyond_the_cap_start_in_arrival_order(
    lock_path: str, children: Children
) -> None:
    """With one thread, the waits queue in arrival order; each wait that ends hands its thread
    to the next one. A key freed while its wait is queued is not seen until then."""
    lock = FileKeyedLock(lock_path, max_threads=1)
    holder = children.agent(lock_path)
    assert holder.ask("hold", "k", 4) == "4"
    got: list[int] = []

    async def waiter(i: int) -> None:
        async with lock(f"k{i}", timeout=WAIT):
            got.append(i)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(waiter, i)
                await wait_until_async(partial(_waits, lock, f"k{i}"), "waits")
            assert _running(lock, "k0")
            assert [_queued(lock, f"k{i}") for i in (1, 2, 3)] == [True, True, True]
            assert (_pool(lock).threads, _pool(lock).queued) == (1, 3)
            assert len(helper_threads()) == 1
            assert fds_of(lock_path) == own_fds(lock)  # a queued wait holds no descriptor
            # k3 is free now, but its wait has no thread yet: it stays queued.
            assert holder.ask("release", "k3") == "ok"
            assert _queued(lock, "k3")
            assert not got
            for i in (0, 1, 2):
                assert holder.ask("release", f"k{i}") == "ok"
                await wait_until_async(partial(got.__contains__, i), f"k{i} is granted")
                if i < 2:
                    await wait_until_async(
                        partial(_running, lock, f"k{i + 1}"),
                        "the freed thread takes the next queued wait",
                    )
                    assert all(_queued(lock, f"k{j}") for j in range(i + 2, 4))
    # (k2 and k3 are granted one right after the other: their tasks may record either way)
    assert got[:2] == [0, 1]
    assert sorted(got) == [0, 1, 2, 3]
    _all_gone(lock)
    assert holder.ask("hold", "k", 4) == "4"  # nothing of ours is left in the kernel
    assert holder.ask("unhold", "k", 4) == "ok"


def test_timed_thread_waits_beyond_the_cap_are_served(lock_path: str, children: Children) -> None:
    lock = FileKeyedLock(lock_path, max_threads=1)
    holder = children.agent(lock_path)
    assert holder.ask("hold", "k", 2) == "2"

    def worker(key: str) -> bool:
        if not lock.acquire(key, timeout=WAIT):
            return False
        lock.release(key)
        return True

    first = start_thread(lambda: worker("k0"), "k0")
    wait_until(lambda: _running(lock, "k0"), "k0 waits in the helper thread")
    second = start_thread(lambda: worker("k1"), "k1")
    wait_until(lambda: _queued(lock, "k1"), "k1 queues for a thread")
    assert holder.ask("unhold", "k", 2) == "ok"
    assert first.result() is True
    assert second.result() is True
    _all_gone(lock)


@pytest.mark.anyio
async def test_a_timeout_withdraws_a_queued_wait(lock_path: str, children: Children) -> None:
    """A queued wait that times out (asyncio or trio task, thread) is gone at once: no thread,
    no descriptor, nothing in the kernel."""
    lock = FileKeyedLock(lock_path, max_threads=1)
    holder = children.agent(lock_path)
    assert holder.ask("hold", "k", 2) == "2"
    got: list[str] = []

    async def waiter(key: str) -> None:
        async with lock(key, timeout=WAIT):
            got.append(key)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "k0")
            await wait_until_async(lambda: _running(lock, "k0"), "k0 takes the one thread")
            fds = fds_of(lock_path)
            with pytest.raises(LockTimeout, match="'k1'"):
                async with lock("k1", timeout=SHORT):
                    pytest.fail("entered a held key")
            assert _wait_of(lock, "k1") is None
            assert _pool(lock).queued == 0
            assert await lock.acquire_async("k1", timeout=SHORT) is False
            assert (
                await anyio.to_thread.run_sync(lambda: lock.acquire("k1", timeout=SHORT)) is False
            )
            assert _wait_of(lock, "k1") is None
            assert (_pool(lock).threads, _pool(lock).queued) == (1, 0)
            assert fds_of(lock_path) == fds
            assert holder.ask("release", "k1") == "ok"
            third = children.agent(lock_path)
            assert third.ask("acquire", "k1", 0) == "True"  # never reached our kernel queue
            assert third.ask("release", "k1") == "ok"
            assert holder.ask("release", "k0") == "ok"
    assert got == ["k0"]
    _all_gone(lock)


@pytest.mark.anyio
async def test_cancellation_withdraws_a_queued_wait_at_once(
    lock_path: str, children: Children
) -> None:
    """The key's local holder is cancelled while its wait is queued: the wait is gone at once,
    and the key's next local waiter takes its place with a wait of its own."""
    lock = FileKeyedLock(lock_path, max_threads=1)
    holder = children.agent(lock_path)
    assert holder.ask("hold", "k", 2) == "2"
    entered: list[str] = []

    async def waiter(key: str, name: str) -> None:
        async with lock(key):
            entered.append(name)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "k0", "k0")
            await wait_until_async(lambda: _running(lock, "k0"), "k0 takes the one thread")
            async with anyio.create_task_group() as inner:
                inner.start_soon(waiter, "k1", "cancelled")
                await wait_until_async(lambda: _queued(lock, "k1"), "k1's wait queues")
                withdrawn = _wait_of(lock, "k1")
                tg.start_soon(waiter, "k1", "next")
                # (The first one waits for the other process: a waiter too.)
                await wait_until_async(lambda: lock.waiters("k1") == 2, "the next one queues")
                inner.cancel_scope.cancel()
            assert withdrawn.job.done
            assert not withdrawn.job.queued
            assert _pool(lock).threads == 1  # still serving k0
            await wait_until_async(lambda: _queued(lock, "k1"), "the next one's wait queues")
            assert _wait_of(lock, "k1") is not withdrawn
            assert _pool(lock).queued == 1
            assert lock.waiters("k1") == 1  # the next one, now first, waiting for the other
            # Then the next one cancelled too: nothing at all is left for k1.
            tg.cancel_scope.cancel()
    assert entered == []
    assert _wait_of(lock, "k1") is None
    assert _pool(lock).queued == 0
    assert holder.ask("release", "k1") == "ok"
    third = children.agent(lock_path)
    assert third.ask("acquire", "k1", 0) == "True"  # never reached our kernel queue
    assert third.ask("release", "k1") == "ok"
    assert holder.ask("release", "k0") == "ok"  # k0's wait, abandoned, gives it back
    assert third.ask("acquire", "k0", WAIT) == "True"
    # (The kernel may grant k0 to `third` before the abandoned wait: that wait then ends
    # only once `third` lets go.)
    assert third.ask("release", "k0") == "ok"
    _all_gone(lock)


@pytest.mark.anyio
async def test_one_more_key_than_threads_waits_for_a_thread(
    lock_path: str, children: Children
) -> None:
    """Cap N, N+1 busy keys: the last key's waiter gets a thread only when one of the first N
    waits ends, even if its own key is free; then it gets the key at once."""
    cap = 3
    lock = FileKeyedLock(lock_path, max_threads=cap)
    holder = children.agent(lock_path)
    assert holder.ask("hold", "k", cap + 1) == str(cap + 1)
    got: list[int] = []
    last = f"k{cap}"

    async def waiter(i: int) -> None:
        async with lock(f"k{i}", timeout=WAIT):
            got.append(i)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for i in range(cap + 1):
                tg.start_soon(waiter, i)
                await wait_until_async(partial(_waits, lock, f"k{i}"), "waits")
            assert _queued(lock, last)
            assert holder.ask("release", last) == "ok"
            assert _queued(lock, last)  # free, but no thread to see it
            assert holder.ask("release", "k1") == "ok"
            # (k1's waiter may append after the last key's: it was woken first, not run first)
            await wait_until_async(lambda: {1, cap} <= set(got), "k1 and the last key granted")
            assert sorted(got) == [1, cap]
            assert holder.ask("release", "k0") == "ok"
            assert holder.ask("release", "k2") == "ok"
    assert sorted(got) == list(range(cap + 1))
    _all_gone(lock)


def _child_waits_in_a_thread_of_its_own(
    lock: FileKeyedLock, key: str, conn: Connection, release: Event
) -> None:
    """In a fork child of a process whose only helper thread is busy and whose queue is not
    empty: a wait gets a thread at once (the parent's threads and queue did not fork)."""
    pool = _pool(lock)
    report: dict[str, object] = {"threads": pool.threads, "queued": pool.queued}
    waiter = start_thread(lambda: lock.acquire(key, timeout=WAIT), "child-waiter")
    try:
        wait_until(lambda: _running(lock, key), "the child's wait runs in a helper thread")
    except AssertionError as exc:
        report["error"] = str(exc)
    release.set()  # the parent has the key released now
    report["acquired"] = waiter.result()
    lock.release(key)
    conn.send(report)
    conn.close()


def test_a_fork_child_starts_with_free_threads(lock_path: str, children: Children) -> None:
    lock = FileKeyedLock(lock_path, max_threads=1)
    holder = children.agent(lock_path)
    assert holder.ask("hold", "k", 3) == "3"
    first = start_thread(lambda: lock.acquire("k0", timeout=WAIT), "k0")
    wait_until(lambda: _running(lock, "k0"), "k0 takes the one thread")
    second = start_thread(lambda: lock.acquire("k1", timeout=WAIT), "k1")
    wait_until(lambda: _queued(lock, "k1"), "k1 queues")
    theirs, ours = FORK.Pipe(duplex=False)
    release = FORK.Event()
    child = children.process(FORK, _child_waits_in_a_thread_of_its_own, lock, "k2", ours, release)
    ours.close()
    assert release.wait(WAIT)
    assert holder.ask("release", "k2") == "ok"
    assert theirs.poll(WAIT), "the fork child did not report"
    assert theirs.recv() == {"threads": 0, "queued": 0, "acquired": True}
    children.join([child])
    assert holder.ask("unhold", "k", 2) == "ok"
    assert first.result() is True
    assert second.result() is True
    lock.release("k0")
    lock.release("k1")
    _all_gone(lock)


# -- many waits -----------------------------------------------------------------------------


#: Keys whose waiters are also checked for order: this many waiters each, arriving one by one.
ORDERED_KEYS, PER_KEY = 20, 3


async def _many_waiters(lock: FileKeyedLock, holder: Any, keys: int) -> None:
    """``keys`` busy keys, a waiter each (``PER_KEY`` on the first ``ORDERED_KEYS``): helper
    threads never exceed the cap, every waiter is served after the release, in arrival order
    per key, and nothing is left held."""
    assert holder.ask("hold", "k", keys) == str(keys)
    cap = lock.max_threads
    order: dict[int, list[int]] = {i: [] for i in range(keys)}
    served = 0
    everyone = anyio.Event()

    async def waiter(i: int, j: int) -> None:
        nonlocal served
        async with lock(f"k{i}"):
            order[i].append(j)
        served += 1
        if served == keys + ORDERED_KEYS * (PER_KEY - 1):
            everyone.set()

    before = threading.active_count()
    with thread_watch() as peak, anyio.fail_after(6 * WAIT):
        async with anyio.create_task_group() as tg:
            for i in range(ORDERED_KEYS):
                for j in range(PER_KEY):
                    tg.start_soon(waiter, i, j)
                    if j == 0:
                        await wait_until_async(partial(_waits, lock, f"k{i}"), "waits")
                    else:
                        # (the first, waiting for the other process, counts too)
                        queued = partial(_local_waiters, lock, f"k{i}", j + 1)
                        await wait_until_async(queued, "queues")
            for i in range(ORDERED_KEYS, keys):
                tg.start_soon(waiter, i, 0)
            pool = _pool(lock)
            await wait_until_async(
                lambda: pool.threads + pool.queued == keys, "every key's wait is in place"
            )
            assert pool.threads == cap
            assert fds_of(lock.path) == own_fds(lock)
            holder.send("unhold", "k", keys)
            await everyone.wait()
            assert holder.reply() == "ok"
    assert peak[0] <= before + 1 + cap + SLACK, f"{peak[0]} threads (cap {cap}, {before} before)"
    assert all(order[i] == list(range(PER_KEY)) for i in range(ORDERED_KEYS))
    assert all(order[i] == [0] for i in range(ORDERED_KEYS, keys))
    _all_gone(lock)
    assert holder.ask("hold", "k", keys) == str(keys)  # every key free on the host again
    assert holder.ask("unhold", "k", keys) == "ok"


@pytest.mark.anyio
async def test_thousands_of_waiters_share_the_capped_threads(
    lock_path: str, children: Children, anyio_backend: str
) -> None:
    """5,000 busy keys under asyncio, 1,000 under trio (5,000 in the slow variant below)."""
    lock = FileKeyedLock(lock_path, max_threads=16)
    keys = 5000 if anyio_backend == "asyncio" else 1000
    await _many_waiters(lock, children.agent(lock_path), keys)


@pytest.mark.slow
@pytest.mark.anyio
async def test_thousands_of_waiters_with_the_default_cap(
    lock_path: str, children: Children
) -> None:
    lock = FileKeyedLock(lock_path)
    await _many_waiters(lock, children.agent(lock_path), 5000)


# -- descriptors ----------------------------------------------------------------------------

#: A process with ``RLIMIT_NOFILE`` = 256: N tasks wait for N keys held by another process and
#: hold each until every one of them has its own; reports what it got and the descriptors it
#: had open on the lock file meanwhile.
LOW_LIMIT = r"""
import os, resource, sys
import anyio
from keyedlock import FileKeyedLock

path, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
lock = FileKeyedLock(path)
pool = lock._backend.scope.threads
target = os.stat(path)

def fds_on_the_file():
    found = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue
        found += (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino)
    return found

async def main():
    served, errors, fds = 0, [], []
    everyone = anyio.Event()

    async def waiter(i):
        nonlocal served
        try:
            async with lock(f"k{i}"):
                served += 1
                if served == n:
                    fds.append(fds_on_the_file())
                    everyone.set()
                await everyone.wait()
        except Exception as exc:
            errors.append(repr(exc))
            everyone.set()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(waiter, i)
            while pool.threads + pool.queued < n:
                await anyio.sleep(0.001)
            print("ready", flush=True)
    print(f"served {served} errors {errors[:3]} fds {fds}", flush=True)
    sys.stdin.readline()

anyio.run(main, backend=backend)
"""


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_low_descriptor_limit_serves_every_waiter(
    lock_path: str, children: Children, backend: str
) -> None:
    holder = children.agent(lock_path)
    assert holder.ask("hold", "k", 300) == "300"
    waiting = children.agent(lock_path, LOW_LIMIT, backend, 300)  # (ready: all 300 wait)
    assert holder.ask("unhold", "k", 300) == "ok"
    assert waiting.reply() == "served 300 errors [] fds [2]"  # two, with 300 keys held
    waiting.send("exit")
    assert holder.ask("hold", "k", 300) == "300"


#: Lowers the limit on descriptors and uses up every one left, then says it is ready.
_USE_UP_DESCRIPTORS = r"""
import resource
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
fillers = []
try:
    while True:
        fillers.append(open("/dev/null"))
except OSError:
    pass
print("ready", flush=True)
"""

#: A process that uses up its descriptors, then waits for a busy key in a helper thread.
NO_DESCRIPTORS = (
    r"""
import sys
from keyedlock import FileKeyedLock

lock = FileKeyedLock(sys.argv[1])
"""
    + _USE_UP_DESCRIPTORS
    + r"""
try:
    lock.acquire("k", timeout=30)
except OSError as exc:
    print(exc.errno, exc.strerror, flush=True)
print(len(lock), len(lock._backend.scope.pending), flush=True)
"""
)


def test_running_out_of_descriptors_says_what_ran_out_and_what_to_do(
    lock_path: str, children: Children
) -> None:
    import errno

    holder = children.agent(lock_path)
    assert holder.ask("acquire", "k", 0) == "True"
    starved = children.agent(lock_path, NO_DESCRIPTORS)
    code, _, message = starved.reply().partition(" ")
    assert int(code) == errno.EMFILE
    assert "RLIMIT_NOFILE" in message
    assert "raise the limit" in message
    assert starved.reply() == "0 0"  # nothing queued or held


#: A process that uses up its descriptors, then makes a FileKeyedLock (its first descriptor).
NO_DESCRIPTOR_TO_START = (
    r"""
import sys
from keyedlock import FileKeyedLock
"""
    + _USE_UP_DESCRIPTORS
    + r"""
try:
    FileKeyedLock(sys.argv[1])
except OSError as exc:
    print(exc.errno, exc.strerror, flush=True)
"""
)


def test_no_descriptor_for_a_new_lock_says_what_ran_out_and_what_to_do(
    lock_path: str, children: Children
) -> None:
    """The constructor's own descriptor, as a wait's second one: the limit and the remedy."""
    import errno

    starved = children.agent(lock_path, NO_DESCRIPTOR_TO_START)
    code, _, message = starved.reply().partition(" ")
    assert int(code) == errno.EMFILE
    assert message.startswith(f"FileKeyedLock could not open the lock file {lock_path!r}: ")
    assert "RLIMIT_NOFILE" in message
    assert "raise the limit" in message


def _interrupted_acquire(lock: FileKeyedLock, other: FileKeyedLock) -> None:
    """``lock.acquire("k")`` waits for ``other`` (another open file description) and is
    interrupted as it starts its helper thread; then the key must work as ever."""
    with pytest.raises(KeyboardInterrupt):
        lock.acquire("k", timeout=WAIT)
    other.release("k")
    assert lock.acquire("k", timeout=WAIT), "the key is dead in this process"
    lock.release("k")
    _served_in_turn(lock, other, "j")


def _served_in_turn(lock: FileKeyedLock, other: FileKeyedLock, *keys: str) -> None:
    """Waits for ``keys`` (held by ``other``) take the pool's one thread in turn, the others
    queued; each is served; nothing is left after."""
    for key in keys:
        other.acquire(key)
    waiters = [
        start_thread(partial(lock.acquire, key, timeout=WAIT), f"waiter for {key}") for key in keys
    ]
    queued = (1, len(keys) - 1)
    wait_until(lambda: (_pool(lock).threads, _pool(lock).queued) == queued, "waits queue")
    for key in keys:
        other.release(key)
    for waiter in waiters:
        assert waiter.result()
    for key in keys:
        lock.release(key)
    wait_until(lambda: not scope_of(lock).pending, "every kernel wait ends")
    wait_until(lambda: _pool(lock).threads == 0 and not helper_threads(), "helper threads end")
    assert _pool(lock).queued == 0
    assert len(lock) == 0


def test_an_interrupt_as_the_wait_is_handed_to_its_pool_leaves_the_key_usable(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C at the entry of the pool's submit (the wait registered, no thread asked for):
    the wait never runs, and is withdrawn, not left for the next caller to adopt."""
    lock, other = FileKeyedLock(lock_path, max_threads=1), FileKeyedLock(lock_path)
    other.acquire("k")
    pool_type = type(_pool(lock))
    submit = pool_type.submit

    def interrupted(pool: Any, call: Any) -> None:
        monkeypatch.setattr(pool_type, "submit", submit)  # (once)
        raise KeyboardInterrupt

    monkeypatch.setattr(pool_type, "submit", interrupted)
    _interrupted_acquire(lock, other)


def test_an_interrupt_as_a_helper_thread_starts_keeps_the_count_and_the_cap(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C inside ``Thread.start()``, which waits for the new thread: the thread exists
    and runs anyway. It is counted once (never below zero: the cap still holds)."""
    lock, other = FileKeyedLock(lock_path, max_threads=1), FileKeyedLock(lock_path)
    other.acquire("k")
    thread_type = threading.Thread
    name = _pool(lock).name

    class Interrupted(thread_type):  # type: ignore[misc, valid-type]
        def start(self) -> None:
            super().start()
            if self.name == name:  # (the pool's helper thread only, once)
                monkeypatch.setattr(threading, "Thread", thread_type)
                raise KeyboardInterrupt

    monkeypatch.setattr(threading, "Thread", Interrupted)
    _interrupted_acquire(lock, other)
    _served_in_turn(lock, other, "a", "b", "c")


def test_a_wait_queued_behind_a_thread_interrupted_as_it_starts_is_served(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The helper thread whose start() was interrupted is slow to begin; meanwhile another
    caller's wait queues behind it (the cap reached). The place given back goes to that wait:
    the thread takes it over, and it is served at once."""
    lock, other = FileKeyedLock(lock_path, max_threads=1), FileKeyedLock(lock_path)
    other.acquire("k")
    other.acquire("j")
    thread_type = threading.Thread
    name = _pool(lock).name
    begin = threading.Event()
    queued: list[Any] = []

    class Interrupted(thread_type):  # type: ignore[misc, valid-type]
        def run(self) -> None:
            assert begin.wait(WAIT)  # (a busy machine: the new thread begins late)
            super().run()

        def start(self) -> None:
            super().start()
            if self.name == name:  # (the pool's helper thread only, once)
                monkeypatch.setattr(threading, "Thread", thread_type)
                queued.append(start_thread(lambda: lock.acquire("j", timeout=WAIT), "j"))
                wait_until(lambda: _pool(lock).queued == 1, "j's wait queues behind it")
                raise KeyboardInterrupt

    monkeypatch.setattr(threading, "Thread", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        lock.acquire("k", timeout=WAIT)
    begin.set()
    other.release("j")
    other.release("k")
    [waiter] = queued
    assert waiter.result(), "the wait queued behind the interrupted thread was stranded"
    lock.release("j")
    wait_until(lambda: not scope_of(lock).pending, "every kernel wait ends")
    wait_until(lambda: _pool(lock).threads == 0 and not helper_threads(), "helper threads end")
    assert len(lock) == 0


def _interrupt_making_the_pools_thread(
    lock: FileKeyedLock, monkeypatch: pytest.MonkeyPatch, before: Callable[[], None] | None = None
) -> None:
    """Ctrl-C as the pool makes its next helper thread (``Thread.__init__``: counted, never
    started), once; ``before`` runs first."""
    thread_type = threading.Thread
    name = _pool(lock).name

    class Interrupted(thread_type):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if kwargs.get("name") == name:  # (the pool's helper thread only, once)
                monkeypatch.setattr(threading, "Thread", thread_type)
                if before is not None:
                    before()
                raise KeyboardInterrupt
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(threading, "Thread", Interrupted)


def test_an_interrupt_as_submit_counts_a_thread_gives_the_place_back(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C as the pool's submit leaves its mutex, the thread counted but not yet asked
    for: the place is given back. (It was lost for good: with ``max_threads=1``, every later
    wait queued behind a thread that did not exist.)"""
    lock, other = FileKeyedLock(lock_path, max_threads=1), FileKeyedLock(lock_path)
    other.acquire("k")
    pool = _pool(lock)
    mutex = pool._mutex

    class Interrupting:
        armed = True

        def __enter__(self) -> bool:
            return bool(mutex.__enter__())

        def __exit__(self, *exc_info: object) -> None:
            mutex.release()
            counted = pool.threads == pool.limit and not pool.queued
            if self.armed and counted and sys._getframe(1).f_code.co_name == "submit":
                self.armed = False
                raise KeyboardInterrupt

    monkeypatch.setattr(pool, "_mutex", Interrupting())
    _interrupted_acquire(lock, other)
    _served_in_turn(lock, other, "a", "b")


def test_a_wait_queued_behind_a_thread_that_never_started_is_served(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C as the pool makes its helper thread (counted, not started), while another
    caller's wait queues behind it (the cap reached): the place given back goes to that
    wait, in a thread started for it. (It was stranded until another wait came.)"""
    lock, other = FileKeyedLock(lock_path, max_threads=1), FileKeyedLock(lock_path)
    other.acquire("k")
    other.acquire("j")
    queued: list[Any] = []

    def queue_a_wait_for_j() -> None:
        queued.append(start_thread(lambda: lock.acquire("j", timeout=WAIT), "j"))
        wait_until(lambda: _pool(lock).queued == 1, "j's wait queues behind it")

    _interrupt_making_the_pools_thread(lock, monkeypatch, queue_a_wait_for_j)
    with pytest.raises(KeyboardInterrupt):
        lock.acquire("k", timeout=WAIT)
    other.release("j")
    [waiter] = queued
    assert waiter.result(), "the wait queued behind the thread that never started was stranded"
    lock.release("j")
    other.release("k")
    _served_in_turn(lock, other, "a", "b")


def test_a_second_interrupt_as_the_place_is_given_back_still_gives_it_back(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C twice: as the pool makes its helper thread, then again as submit gives the
    thread's place back. The recovery runs again, and the place is given back once."""
    lock, other = FileKeyedLock(lock_path, max_threads=1), FileKeyedLock(lock_path)
    other.acquire("k")
    pool = _pool(lock)

    class Places(set[Any]):
        interrupts = 1

        def discard(self, item: Any) -> None:
            if self.interrupts and sys._getframe(1).f_code.co_name == "_give_back":
                self.interrupts -= 1
                raise KeyboardInterrupt  # (the second: as the place is about to go)
            super().discard(item)

    places = Places()
    monkeypatch.setattr(pool, "_places", places)
    _interrupt_making_the_pools_thread(lock, monkeypatch)  # (the first)
    _interrupted_acquire(lock, other)
    assert places.interrupts == 0, "the second interrupt was not delivered"
    _served_in_turn(lock, other, "a", "b")
