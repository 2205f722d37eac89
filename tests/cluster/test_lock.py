"""RedisKeyedLock in one process: its API, tokens, waits in Redis, leases, on a real server.

Two lock objects of one server act as two processes would (each has its own local table, so
only its local holder reaches the server): the waits here happen in Redis itself, in every
runtime. Processes, crashes and a server going away have their own modules.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import pickle
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import redis
import redis.connection
import trio

import keyedlock
from keyedlock import KeyedLockError, LeaseLost, LockTimeout, QueueFull
from keyedlock._scopes._redis import _linkasync, renewer
from keyedlock._scopes._redis._link import Link
from keyedlock._scopes._redis._lockscope import RedisScope
from keyedlock._scopes._redis._lockscripts import ACQUIRE, REPORT
from keyedlock.redis import RedisContext, RedisKeyedLock

from ..support import (
    WAIT,
    Interrupts,
    start_thread,
    task_on_a_closed_loop,
    three_tasks_two_wait,
    wait_until,
    wait_until_async,
)
from .conftest import LEASE, MakeLock
from .servers import Server


def owner_key(key: str, prefix: str = "keyedlock:") -> str:
    return f"{prefix}{{s:{key}}}:owner"


# -- the API ----------------------------------------------------------------------------------


def test_lease_lost_is_exported_and_a_keyed_lock_error() -> None:
    assert keyedlock.LeaseLost is LeaseLost
    assert issubclass(LeaseLost, KeyedLockError)


def test_keys_are_typed_str_bytes_and_int(redis_lock: RedisKeyedLock) -> None:
    with redis_lock("1"):
        assert redis_lock.acquire(b"1", blocking=False)
        assert redis_lock.acquire(1, blocking=False)
        assert len(redis_lock) == 3
        redis_lock.release(b"1")
        redis_lock.release(1)


class _EqualMeta(type):
    def __eq__(cls, other: object) -> bool:  # (its classes are unhashable)
        return cls is other


class _OddStr(str, metaclass=_EqualMeta):
    pass


def test_a_str_subclass_whose_class_is_unhashable_is_its_str(redis_lock: RedisKeyedLock) -> None:
    """The key types are compared, never hashed: a str subclass is the key of its value."""
    with redis_lock(_OddStr("odd")):
        assert redis_lock.locked("odd")
        assert not redis_lock.acquire("odd", blocking=False)
    assert not redis_lock.locked(_OddStr("odd"))


@pytest.mark.parametrize("key", [True, 1.5, ("a", 1), None, ["list"]])
def test_other_keys_are_refused(redis_lock: RedisKeyedLock, key: object) -> None:
    with pytest.raises(TypeError, match="str, bytes or int"):
        redis_lock(key)
    with pytest.raises(TypeError, match="str, bytes or int"):
        redis_lock.locked(key)


def test_names_on_the_server_are_documented(make_lock: MakeLock, redis_client: redis.Redis) -> None:
    lock = make_lock(prefix="app:")
    with lock("invoice:42") as held:
        assert redis_client.exists(owner_key("invoice:42", "app:"))
        assert int(redis_client.get("app:{s:invoice:42}:token") or 0) == held.token
    with lock(b"\x00"), lock(7), lock("{brace}"):
        assert redis_client.exists("app:{b:\x00}:owner")
        assert redis_client.exists("app:{i:7}:owner")
        assert redis_client.exists("app:{s:%7Bbrace%7D}:owner")
    assert redis_client.keys("app:*:owner") == []


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"lease": 0}, ValueError),
        ({"lease": -1}, ValueError),
        ({"lease": float("nan")}, ValueError),
        ({"lease": float("inf")}, ValueError),
        ({"lease": 10**400}, ValueError),  # (too large for a float: still named)
        ({"lease": "10"}, TypeError),
        ({"lease": True}, TypeError),
        ({"lease": Decimal(10)}, TypeError),  # (a number, but not a numbers.Real)
        ({"prefix": "a{b"}, ValueError),
        ({"prefix": 3}, TypeError),
        ({"max_waiters": -1}, ValueError),
        ({"fast_acquire": 1}, TypeError),
    ],
)
def test_bad_options_are_refused(
    redis_server: Server, options: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error, match=next(iter(options))):
        RedisKeyedLock(redis_server.url, **options)


def test_a_lease_is_any_real_number_of_seconds(redis_server: Server) -> None:
    lease: Any = Fraction(3, 2)  # (typed float, as threading's timeouts are)
    lock = RedisKeyedLock(redis_server.url, lease=lease)
    assert lock.lease == 1.5


def test_a_client_of_another_kind_is_refused() -> None:
    import redis.asyncio

    with pytest.raises(TypeError, match=r"redis\.Redis"):
        RedisKeyedLock(42)  # type: ignore[arg-type]
    client = redis.asyncio.Redis()
    with pytest.raises(TypeError, match="asyncio client is made"):
        RedisKeyedLock(client)  # type: ignore[arg-type]


def test_a_client_object_serves_as_well_as_a_url(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    by_client = make_lock(target=redis_client)
    by_url = make_lock()
    with by_client("k"):
        assert by_url.locked("k")
        assert not by_url.acquire("k", blocking=False)


@pytest.mark.parametrize("given", ["url", "client", "cluster client"])
def test_an_event_loops_connections_are_closed_with_it(
    given: str, make_lock: MakeLock, request: pytest.FixtureRequest
) -> None:
    """The asyncio client a loop gets is closed with the loop, its connections too: none is
    left for the garbage collector to find unclosed (a ResourceWarning), whatever the scope
    was made from."""
    if given == "url":
        lock = make_lock()
    else:
        fixture = "redis_client" if given == "client" else "cluster_client"
        lock = make_lock(target=request.getfixturevalue(fixture))

    async def use() -> None:
        async with lock("k"):
            pass

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        asyncio.run(use())
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == []


def test_properties_and_repr(make_lock: MakeLock, redis_server: Server) -> None:
    lock = make_lock(prefix="p:", lease=3, max_waiters=2)
    assert (lock.prefix, lock.lease, lock.max_waiters, lock.fast_acquire) == ("p:", 3.0, 2, False)
    assert f"127.0.0.1:{redis_server.port}" in repr(lock)
    ctx = lock("k")
    assert isinstance(ctx, RedisContext)
    assert (ctx.token, ctx.lost) == (0, False)
    assert "new" in repr(ctx)


def test_a_lock_made_from_a_url_pickles(make_lock: MakeLock) -> None:
    lock = make_lock(prefix="p:", lease=3, max_waiters=2)
    copy = pickle.loads(pickle.dumps(lock))
    assert (copy.prefix, copy.lease, copy.max_waiters) == ("p:", 3.0, 2)
    with lock("k"):
        assert copy.locked("k")


def test_a_lock_made_from_a_client_does_not_pickle(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    with pytest.raises(TypeError, match="URL"):
        pickle.dumps(make_lock(target=redis_client))


# -- tokens -----------------------------------------------------------------------------------


def test_entering_returns_the_context_with_its_token(redis_lock: RedisKeyedLock) -> None:
    tokens = []
    for _ in range(3):
        with redis_lock("k") as held:
            assert isinstance(held, RedisContext)
            assert held.token > 0
            assert held.lost is False
            tokens.append(held.token)
        assert held.token == tokens[-1]  # kept after the exit
    assert tokens == sorted(set(tokens))


@pytest.mark.anyio
async def test_async_entering_returns_the_context_with_its_token(
    redis_lock: RedisKeyedLock,
) -> None:
    async with redis_lock("k") as first:
        pass
    async with redis_lock("k") as second:
        assert second.token > first.token > 0


def test_tokens_increase_across_lock_objects(make_lock: MakeLock) -> None:
    a, b = make_lock(), make_lock()
    seen = []
    for lock in (a, b, a, b):
        with lock("k") as held:
            seen.append(held.token)
    assert seen == sorted(set(seen))


# -- waiting in Redis -------------------------------------------------------------------------


def test_locked_and_waiters_are_cluster_wide(make_lock: MakeLock) -> None:
    """Every caller counts, wherever it waits: in Redis (one per process), or queued in its
    process behind the one there; another process learns the count without asking (soon:
    its renewal thread sends it, so each view is waited for, never read once)."""
    a, b = make_lock(), make_lock()

    def counts(n: int, what: str) -> None:
        wait_until(lambda: a.waiters("k") == n and b.waiters("k") == n, what)

    a.acquire("k")
    waiter = start_thread(lambda: b.acquire("k", timeout=WAIT), "b")
    counts(1, "b waits in Redis")
    assert b.locked("k")
    local = start_thread(lambda: a.acquire("k", timeout=WAIT), "a's second")
    counts(2, "a's second caller counts in both")
    more = [start_thread(lambda: b.acquire("k", timeout=WAIT), f"b's {n}") for n in (2, 3)]
    counts(4, "b's callers behind its first count in both")
    short = start_thread(lambda: b.acquire("k", timeout=0.3), "b's short one")
    counts(5, "b's short caller counts in both")
    assert not short.result()  # it gave up: it no longer counts anywhere
    counts(4, "b's short caller gave up")
    a.release("k")
    assert waiter.result()
    # a's second takes its place in Redis (b's others wait behind b's first, which holds).
    counts(3, "a's second waits in Redis")
    b.release("k")
    assert local.result()  # (a's second: it arrived before b's others)
    counts(2, "b's two others wait")
    a.release("k")
    for thread in more:
        assert thread.result()
        b.release("k")
    assert not b.locked("k")
    counts(0, "nobody waits")


@pytest.mark.anyio
async def test_max_waiters_counts_the_first_caller_waiting_in_redis(
    make_lock: MakeLock,
) -> None:
    """This process's caller that waits in Redis (another process holds the key) is one of
    the key's waiters here from the moment it takes the key here (under trio, its first
    checkpoint comes before it reaches Redis): of three tasks started at once with
    max_waiters=2, two wait and one is refused."""
    holder = make_lock()
    assert holder.acquire("k", blocking=False)  # (a blocking one is refused in a task)
    await three_tasks_two_wait(make_lock(max_waiters=2), lambda: holder.release("k"))


@pytest.mark.anyio
async def test_tasks_queued_in_a_process_count_cluster_wide(make_lock: MakeLock) -> None:
    """Tasks waiting behind their process's first caller count in every process, and a
    cancelled one stops counting."""
    a, b = make_lock(), make_lock()
    assert a.acquire("k", blocking=False)  # (a blocking one is refused in a task)
    entered: list[int] = []

    async def wait_for_key(n: int) -> None:
        async with b("k", timeout=WAIT):
            entered.append(n)

    async with anyio.create_task_group() as tg:
        for n in range(3):
            tg.start_soon(wait_for_key, n)
        await wait_until_async(lambda: a.waiters("k") == 3, "b's tasks count in a")
        scope = anyio.CancelScope()

        async def cancelled() -> None:
            with scope:
                await wait_for_key(3)

        tg.start_soon(cancelled)
        await wait_until_async(lambda: a.waiters("k") == 4, "b's fourth task counts")
        scope.cancel()
        await wait_until_async(lambda: a.waiters("k") == 3, "a cancelled task stops counting")
        a.release("k")
    assert sorted(entered) == [0, 1, 2]
    assert a.waiters("k") == 0


def test_a_hand_off_between_processes_wakes_the_waiter_at_once(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    """No polling: while the holder holds, the waiter blocks once on its wake list."""
    a, b = make_lock(lease=WAIT), make_lock(lease=WAIT)
    a.acquire("k")
    redis_client.config_resetstat()
    waiter = start_thread(lambda: b.acquire("k"), "b")
    wait_until(lambda: a.waiters("k") == 1, "b waits in Redis")
    time.sleep(0.3)  # the work of the holder: the waiter must not ask again meanwhile
    a.release("k")
    assert waiter.result()
    stats: Any = redis_client.info("commandstats")
    assert stats["cmdstat_blpop"]["calls"] == 1
    b.release("k")


@pytest.mark.parametrize("runtime", ["thread", "asyncio"])
def test_a_waiter_woken_with_the_key_has_its_whole_lease_at_once(
    make_lock: MakeLock, redis_client: redis.Redis, runtime: str
) -> None:
    """A key handed to a waiter is its own for its whole lease, not for a shorter claim that
    its renewal thread would have to extend in time: a round held up by a server that just
    stopped (up to two of its waits) could let such a claim run out on a healthy server."""
    lease = WAIT * 3
    a, b = make_lock(lease=lease), make_lock(lease=lease)
    a.acquire("k")
    if runtime == "thread":
        waiter = start_thread(lambda: b.acquire("k"), "b")
    else:
        waiter = start_thread(lambda: asyncio.run(b.acquire_async("k")), "b")
    wait_until(lambda: a.waiters("k") == 1, "b waits in Redis")
    a.release("k")
    assert waiter.result()
    assert int(redis_client.pttl(owner_key("k"))) > lease * 1000 * 2 / 3
    b.release("k")


def test_waiters_in_redis_are_served_in_arrival_order(make_lock: MakeLock) -> None:
    locks = [make_lock() for _ in range(4)]
    order: list[str] = []
    locks[0].acquire("k")
    waiters = []
    for n, lock in enumerate(locks[1:], 1):

        def wait(lock: RedisKeyedLock = lock, n: int = n) -> None:
            with lock("k"):
                order.append(f"w{n}")

        waiters.append(start_thread(wait, f"w{n}"))
        wait_until(lambda n=n: locks[0].waiters("k") == n, f"w{n} queues")  # type: ignore[misc]
    locks[0].release("k")
    for waiter in waiters:
        waiter.result()
    assert order == ["w1", "w2", "w3"]


@pytest.mark.anyio
async def test_tasks_wait_in_redis_and_get_the_key(make_lock: MakeLock) -> None:
    a, b = make_lock(), make_lock()
    a.acquire("k", blocking=False)
    entered: list[int] = []

    async def wait() -> None:
        async with b("k") as held:
            entered.append(held.token)

    if _backend() == "trio":
        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            await wait_until_async(lambda: a.waiters("k") == 1, "b waits in Redis")
            a.release("k")
    else:
        task = asyncio.create_task(wait())
        await wait_until_async(lambda: a.waiters("k") == 1, "b waits in Redis")
        a.release("k")
        await asyncio.wait_for(task, WAIT)
    assert len(entered) == 1
    assert entered[0] > 0


#: Callers of one process waiting in Redis at once: more than redis-py 8 lets a pool open
#: by default (100), and than trio's default thread limiter (40).
MANY_WAITERS = 120


@pytest.mark.anyio
async def test_many_waiting_tasks_of_one_process_leave_the_others_alone(
    make_lock: MakeLock,
) -> None:
    """120 tasks waiting in Redis for keys another process holds (each blocks a connection,
    and under trio a worker thread, until it is woken): none fails for want of a connection,
    a free key is taken at once, the program's own worker threads stay free, and every
    waiter gets its key once released. (The holder's lease is long: a call stuck behind the
    waits would wait for it to run out.)"""
    holder, lock = make_lock(lease=30.0), make_lock(lease=30.0)
    for i in range(MANY_WAITERS):
        assert holder.acquire(f"busy{i}", blocking=False)
    entered: list[int] = []

    async def wait(i: int) -> None:
        async with lock(f"busy{i}"):
            entered.append(i)

    with anyio.fail_after(WAIT * 3):
        async with anyio.create_task_group() as tg:
            for i in range(MANY_WAITERS):
                tg.start_soon(wait, i)
            await wait_until_async(
                lambda: all(lock.waiters(f"busy{i}") == 1 for i in range(MANY_WAITERS)),
                "every task waits in Redis",
            )
            with anyio.fail_after(WAIT):
                async with lock("free", timeout=1):
                    pass
                await anyio.to_thread.run_sync(lambda: None)
            for i in range(MANY_WAITERS):
                holder.release(f"busy{i}")
    assert sorted(entered) == list(range(MANY_WAITERS))


def test_a_trio_wait_that_finds_no_thread_free_keeps_its_deadline(
    make_lock: MakeLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under trio, waits in Redis run in up to WAIT_THREADS threads per run: a timed wait
    that finds none free gives up at its deadline, not when the wait ahead of it ends."""
    monkeypatch.setattr(_linkasync, "WAIT_THREADS", 1)  # (the run's limiter is made after)
    pops_ended: list[bytes] = []
    pop = Link.pop

    def counted_pop(link: Link, key: bytes, block: float) -> bytes | None:
        try:
            return pop(link, key, block)
        finally:
            pops_ended.append(key)

    monkeypatch.setattr(Link, "pop", counted_pop)
    holder, lock = make_lock(lease=30.0), make_lock(lease=30.0)
    assert holder.acquire("a", blocking=False)
    assert holder.acquire("b", blocking=False)
    order: list[str] = []

    async def main() -> None:
        async def ahead() -> None:  # takes the only thread, waiting for "a"
            order.append(f"ahead: {await lock.acquire_async('a', timeout=WAIT)}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ahead)
            await wait_until_async(lambda: lock.waiters("a") == 1, "the first task waits")
            order.append(f"behind: {await lock.acquire_async('b', timeout=0.5)}")
            assert pops_ended == [], "the wait behind ended after the one ahead of it"
            holder.release("a")
        lock.release("a")

    trio.run(main)
    holder.release("b")
    assert order == ["behind: False", "ahead: True"]


def test_many_waiting_threads_of_one_process(make_lock: MakeLock) -> None:
    """The same with threads: each waits on a connection of its own, with no cap."""
    holder, lock = make_lock(lease=30.0), make_lock(lease=30.0)
    for i in range(MANY_WAITERS):
        assert holder.acquire(f"busy{i}", blocking=False)
    entered: list[int] = []

    def wait(i: int) -> None:
        with lock(f"busy{i}", timeout=WAIT * 3):
            entered.append(i)

    threads = [start_thread(partial(wait, i)) for i in range(MANY_WAITERS)]
    wait_until(
        lambda: all(lock.waiters(f"busy{i}") == 1 for i in range(MANY_WAITERS)),
        "every thread waits in Redis",
    )
    for i in range(MANY_WAITERS):
        holder.release(f"busy{i}")
    for thread in threads:
        thread.result()
    assert sorted(entered) == list(range(MANY_WAITERS))


def _queue_a_thread_behind_it(lock: RedisKeyedLock, other: RedisKeyedLock) -> None:
    """A thread queues for "k" behind the task; ``other`` releases it: the thread takes it."""
    waiter = start_thread(lambda: lock.acquire("k", timeout=WAIT))
    wait_until(lambda: lock.waiters("k") == 2, "a thread queues behind the task")
    other.release("k")
    assert waiter.result() is True


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_a_task_whose_loop_closed_while_it_waited_in_redis_passes_the_key_on(
    make_lock: MakeLock, redis_server: Server, timeout: float | None
) -> None:
    """An asyncio task waits in Redis for a key held elsewhere, and its event loop is closed
    (by hand, the task still waiting): it can never take the key. The renewal thread
    withdraws its place (not refreshed, nor renewed once the key is handed to it), and the
    key goes on, here to a thread queued behind the task, and in the other processes."""
    other = make_lock(lease=1)
    lock = RedisKeyedLock(redis_server.url, lease=1)  # (dropped below, with the closed loop's)
    assert other.acquire("k")
    task = task_on_a_closed_loop(
        partial(lock.acquire_async, "k", timeout=timeout), lambda: other.waiters("k") == 1
    )
    _queue_a_thread_behind_it(lock, other)
    assert other.acquire("k", blocking=False) is False  # the thread holds it
    lock.release("k")
    assert other.acquire("k", timeout=WAIT)
    other.release("k")
    assert len(lock) == 0
    assert lock.acquire("k", timeout=0)
    lock.release("k")
    # The task never runs again; dropping it changes nothing. (Its coroutine is closed
    # without a loop, and the loop's connection was never closed, the loop having been
    # closed without shutdown_asyncgens(): redis-py's clean-up fails and the socket warns,
    # as for any loop closed so with a task still running.)
    hook = sys.unraisablehook
    sys.unraisablehook = lambda _: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            del task, lock
            gc.collect()
    finally:
        sys.unraisablehook = hook
    assert other.acquire("k", timeout=0)
    other.release("k")


def test_a_timeout_in_redis_leaves_no_place(make_lock: MakeLock) -> None:
    a, b = make_lock(), make_lock()
    a.acquire("k")
    assert b.acquire("k", timeout=0.05) is False
    with pytest.raises(LockTimeout), b("k", timeout=0.05):
        pass
    assert a.waiters("k") == 0
    assert b.acquire("k", blocking=False) is False  # a try takes no place either
    assert a.waiters("k") == 0
    a.release("k")
    with b("k", timeout=0):
        pass


@pytest.fixture
def slow_server_clock(redis_client: redis.Redis) -> Iterator[None]:
    """The server's clock ticks once a second (``hz 1``): it times a blocking pop out at the
    first tick after its timeout, up to a second late."""
    before: Any = redis_client.config_get("hz")["hz"]
    redis_client.config_set("hz", 1)
    try:
        yield
    finally:
        redis_client.config_set("hz", before)


# (The bound below is ten times the timeout: the server alone would end each wait at its
# next tick, up to a second later.)


def test_a_timed_wait_ends_at_its_deadline_not_at_the_servers_tick(
    make_lock: MakeLock, slow_server_clock: None
) -> None:
    a, b = make_lock(), make_lock()
    a.acquire("k")
    for _ in range(3):
        start = time.monotonic()
        assert b.acquire("k", timeout=0.05) is False
        assert time.monotonic() - start < 0.5
    assert a.waiters("k") == 0
    a.release("k")
    with b("k", timeout=0.05):
        pass


@pytest.mark.anyio
async def test_an_async_timed_wait_ends_at_its_deadline_not_at_the_servers_tick(
    make_lock: MakeLock, slow_server_clock: None
) -> None:
    a, b = make_lock(), make_lock()
    a.acquire("k", blocking=False)
    for _ in range(3):
        start = time.monotonic()
        assert await b.acquire_async("k", timeout=0.05) is False
        assert time.monotonic() - start < 0.5
    assert a.waiters("k") == 0
    a.release("k")
    async with b("k", timeout=0.05):
        pass


def test_a_wait_granted_before_its_deadline_leaves_no_alarm(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    """The alarm that would end the pop at the deadline is cancelled once the pop ended:
    nothing is pushed to the wake list later."""
    a, b = make_lock(), make_lock()
    a.acquire("k")
    waiter = start_thread(lambda: b.acquire("k", timeout=0.3), "waiter")
    wait_until(lambda: a.waiters("k") == 1, "b waits in Redis")
    a.release("k")
    assert waiter.result() is True
    threading.Event().wait(0.4)  # (past the deadline the alarm was set for)
    assert renewer.settle(WAIT)
    assert redis_client.keys("*wake*") == []
    b.release("k")


def test_many_timed_waits_leave_nothing_on_the_server(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    """A ring that comes after its waiter left (its pop timed out by itself, and it
    withdrew) pushes nothing: no wake list is left behind."""
    holder = make_lock()
    holder.acquire("k")

    def wait_three_times() -> None:
        lock = make_lock()  # (one per thread: each is its own caller in Redis)
        for _ in range(3):
            assert lock.acquire("k", timeout=0.05) is False

    waiters = [start_thread(wait_three_times, f"waiter {n}") for n in range(20)]
    for waiter in waiters:
        waiter.result()
    assert holder.waiters("k") == 0
    holder.release("k")
    assert redis_client.keys("*:wake:*") == []


@pytest.mark.anyio
async def test_an_async_timeout_in_redis_leaves_no_place(make_lock: MakeLock) -> None:
    a, b = make_lock(), make_lock()
    a.acquire("k", blocking=False)
    assert await b.acquire_async("k", timeout=0.05) is False
    with pytest.raises(LockTimeout):
        async with b("k", timeout=0.05):
            pass
    assert a.waiters("k") == 0
    a.release("k")
    async with b("k", timeout=0):
        pass


@pytest.mark.anyio
async def test_a_cancelled_wait_in_redis_leaves_no_place(make_lock: MakeLock) -> None:
    a, b, c = make_lock(), make_lock(), make_lock()
    a.acquire("k", blocking=False)
    if _backend() == "trio":
        with trio.move_on_after(0.1):
            await b.acquire_async("k")
    else:
        task = asyncio.create_task(b.acquire_async("k"))
        await wait_until_async(lambda: a.waiters("k") == 1, "b waits in Redis")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert renewer.settle(WAIT)
    assert a.waiters("k") == 0
    assert len(b) == 0
    a.release("k")
    assert c.acquire("k", blocking=False)  # nobody holds it, nobody waits
    c.release("k")


@pytest.mark.parametrize("contended", [False, True])
def test_an_asyncio_cancellation_at_any_point_is_delivered_and_leaves_nothing(
    make_lock: MakeLock, contended: bool
) -> None:
    """Cancel a task after 0, 1, 2, ... turns of its event loop while it takes the key (free,
    or handed over by another process): the task ends cancelled, holding nothing."""
    a, b = make_lock(), make_lock()

    async def main() -> list[str]:
        outcomes = []
        for turns in range(40):
            if contended:
                a.acquire("k", blocking=False)

            async def take() -> str:
                await b.acquire_async("k")
                return "held"  # (no await after the acquire: a late cancellation shows)

            task = asyncio.create_task(take())
            for _ in range(turns):
                await asyncio.sleep(0)
            if contended:
                a.release("k")
            cancelled = task.cancel()
            try:
                outcome = await task
            except asyncio.CancelledError:
                outcome = "cancelled"
            if outcome == "held":
                assert not cancelled, f"the cancellation after {turns} turns was lost"
                b.release("k")
            outcomes.append(outcome)
            assert renewer.settle(WAIT)
            assert len(b) == 0
            assert not a.locked("k")
        return outcomes

    assert "cancelled" in asyncio.run(main())


def test_an_asyncio_holder_cancelled_while_it_releases_gives_the_key_back_first(
    make_lock: MakeLock,
) -> None:
    """Cancel a task after 0, 1, 2, ... turns of its event loop while it leaves ``async
    with``: its release reaches the server before the task ends (nothing is left to the
    renewal thread), and the cancellation is still delivered."""
    a, b = make_lock(), make_lock()

    async def hold(entered: asyncio.Event, leave: asyncio.Event) -> str:
        async with b("k"):
            entered.set()
            await leave.wait()
        return "ended"

    async def main() -> list[str]:
        outcomes = []
        for turns in range(40):
            entered, leave = asyncio.Event(), asyncio.Event()
            task = asyncio.create_task(hold(entered, leave))
            await entered.wait()
            leave.set()
            for _ in range(turns):
                await asyncio.sleep(0)
            cancelled = task.cancel()
            try:
                outcomes.append(await task)
            except asyncio.CancelledError:
                outcomes.append("cancelled")
            else:
                assert not cancelled, f"the cancellation after {turns} turns was lost"
            assert renewer.settle(0), f"cancelled after {turns} turns, a release was left over"
            assert not a.locked("k"), f"cancelled after {turns} turns, the key is still held"
            assert len(b) == 0
        return outcomes

    outcomes = asyncio.run(main())
    assert "cancelled" in outcomes
    assert "ended" in outcomes


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_work_failing_with_stop_aborts_its_waiters_even_if_cancelled_as_it_releases(
    make_lock: MakeLock, runtime: str
) -> None:
    """``run(on_error="stop")``: the work fails, and its cancel scope is cancelled after 0,
    2, 4, ... turns of the loop while the release goes to the server. The release is done
    whole all the same (the caller queued behind is aborted, never handed the key), and the
    task ends cancelled, or failed if the cancellation came after it ended. Under asyncio,
    anyio's scope cancels the task again at every turn until it ends."""
    lock = make_lock()

    async def one_round(turns: int) -> str:
        entered, go, failing = anyio.Event(), anyio.Event(), anyio.Event()
        seen: dict[str, str] = {}

        async def work() -> None:
            entered.set()
            await go.wait()
            failing.set()
            raise ValueError("failed")

        async def hold(scope: anyio.CancelScope) -> None:
            seen["holder"] = "cancelled"
            with scope:
                try:
                    await lock.run("k", work, on_error="stop")
                except ValueError:
                    seen["holder"] = "failed"

        async def wait() -> None:
            try:
                async with lock("k"):
                    seen["waiter"] = "handed the key"
            except keyedlock.Aborted as exc:
                seen["waiter"] = f"aborted by {type(exc.__cause__).__name__}"

        scope = anyio.CancelScope()
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as group:
                group.start_soon(hold, scope)
                await entered.wait()
                group.start_soon(wait)
                await wait_until_async(lambda: lock.waiters("k") == 1, "the waiter queued")
                go.set()
                await failing.wait()
                for _ in range(turns):
                    await anyio.lowlevel.checkpoint()
                scope.cancel()
        assert seen["waiter"] == "aborted by ValueError", f"cancelled after {turns} turns: {seen}"
        assert len(lock) == 0
        return seen["holder"]

    async def main() -> list[str]:
        return [await one_round(turns) for turns in range(0, 30, 2)]

    outcomes = anyio.run(main, backend=runtime)
    if runtime == "asyncio":  # (trio raises it at the next checkpoint: there is none)
        assert "cancelled" in outcomes


def test_a_lost_lease_is_never_silent_for_an_asyncio_task_cancelled_as_it_releases(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    """The lease is gone on the server (as after a restart), and the holder is cancelled
    after 0, 2, 4, ... turns of its loop while its release goes out: the task ends
    cancelled, the cancellation caused by LeaseLost (asyncio delivers a cancellation once:
    it is never swallowed for LeaseLost), or with LeaseLost if the cancellation came after
    the exit."""
    lock = make_lock()

    async def one_round(turns: int) -> str:
        entered, leave, leaving = asyncio.Event(), asyncio.Event(), asyncio.Event()
        seen: dict[str, str] = {}

        async def hold() -> None:
            try:
                async with lock("k"):
                    entered.set()
                    await leave.wait()
                    leaving.set()
            except asyncio.CancelledError as exc:
                seen["raised"] = f"cancelled by {type(exc.__cause__).__name__}"
                raise
            except LeaseLost:
                seen["raised"] = "LeaseLost"

        task = asyncio.create_task(hold())
        await entered.wait()
        assert redis_client.delete(owner_key("k")) == 1
        leave.set()
        await leaving.wait()
        for _ in range(turns):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.wait({task}, timeout=WAIT)
        assert task.done()
        if task.cancelled():
            assert seen["raised"] == "cancelled by LeaseLost", f"after {turns} turns"
        else:
            assert seen["raised"] == "LeaseLost", f"after {turns} turns: {seen}"
        assert len(lock) == 0
        return seen["raised"]

    async def main() -> list[str]:
        return [await one_round(turns) for turns in range(0, 30, 2)]

    assert "cancelled by LeaseLost" in asyncio.run(main())


def test_a_lost_lease_is_raised_under_trio_even_if_cancelled_as_it_releases(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    """As above, under trio: the release runs shielded, so the exit raises LeaseLost, and
    the cancellation comes at the next checkpoint."""
    lock = make_lock()

    async def one_round(turns: int) -> None:
        entered, leave, leaving = trio.Event(), trio.Event(), trio.Event()
        seen: dict[str, str] = {}

        async def hold(scope: trio.CancelScope) -> None:
            with scope:
                try:
                    async with lock("k"):
                        entered.set()
                        await leave.wait()
                        leaving.set()
                except LeaseLost:
                    seen["raised"] = "LeaseLost"

        scope = trio.CancelScope()
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hold, scope)
                await entered.wait()
                assert redis_client.delete(owner_key("k")) == 1
                leave.set()
                await leaving.wait()
                for _ in range(turns):
                    await trio.lowlevel.checkpoint()
                scope.cancel()
        assert seen.get("raised") == "LeaseLost", f"cancelled after {turns} turns: {seen}"
        assert len(lock) == 0

    async def main() -> None:
        for turns in range(0, 30, 2):
            await one_round(turns)

    trio.run(main)


def test_an_asyncio_waiter_cancelled_at_any_point_ends_at_once(
    make_lock: MakeLock, redis_server: Server
) -> None:
    """The holder keeps the key for a long lease, and the waiter's client has a longer read
    timeout, so its pop blocks that long: cancelled at any point of its wait (even while its
    pop is being sent), the waiter ends well before."""
    holder = make_lock(lease=3 * WAIT)
    patient = redis.Redis(host=redis_server.host, port=redis_server.port, socket_timeout=4 * WAIT)
    waiting = make_lock(target=patient)
    holder.acquire("k")

    async def main() -> None:
        for turns in range(40):
            task = asyncio.create_task(waiting.acquire_async("k"))
            for _ in range(turns):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=WAIT)
            assert task in done, f"the waiter cancelled after {turns} turns is still waiting"
            assert task.cancelled()
            assert renewer.settle(WAIT)
            assert len(waiting) == 0
            assert holder.waiters("k") == 0

    try:
        asyncio.run(main())
    finally:
        holder.release("k")
        patient.close()


def test_a_second_interrupt_as_an_exit_gives_the_key_back_still_gives_it_back(
    make_lock: MakeLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C twice: the first as the exit starts to release, the second as its recovery
    (the undo's abandon) hands the key to the renewal thread to give back. The key is given
    back all the same."""
    lock, other = make_lock(), make_lock()
    ctx = lock("k")
    ctx.__enter__()
    interrupts = Interrupts(monkeypatch)
    interrupts.at_entry(RedisScope, "release")  # as the exit releases
    interrupts.at_entry(RedisScope, "_withdraw_later")  # as the recovery gives it back
    with pytest.raises(KeyboardInterrupt):
        ctx.__exit__(None, None, None)
    assert interrupts.calls == ["release", "_withdraw_later", "_withdraw_later"]
    assert len(lock) == 0
    assert other.acquire("k", timeout=WAIT)  # given back in Redis by the renewal thread
    other.release("k")


def test_a_second_interrupt_as_a_release_round_trip_is_given_back_still_gives_it_back(
    make_lock: MakeLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C twice: the first during the release's round trip (its record already taken),
    the second as the release's own recovery hands the key to the renewal thread."""
    lock, other = make_lock(), make_lock()
    ctx = lock("k")
    ctx.__enter__()
    interrupts = Interrupts(monkeypatch)
    interrupts.at_entry(Link, "run")  # during the release (the renewal thread's go on)
    interrupts.at_entry(RedisScope, "_withdraw_later")  # as the release's recovery hands on
    with pytest.raises(KeyboardInterrupt):
        ctx.__exit__(None, None, None)
    monkeypatch.undo()
    assert interrupts.raised == ["run", "_withdraw_later"]
    assert len(lock) == 0
    # Given back in Redis by the renewal thread, well before the lease would run out.
    assert other.acquire("k", timeout=LEASE / 2)
    other.release("k")


def test_a_third_interrupt_in_a_recovery_leaves_no_key_held_in_redis_past_its_lease(
    redis_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C three times as a timed-out wait withdraws: the recovery stops (so that Ctrl-C
    always can), but what it claimed is no longer renewed: the place, and a key handed to it,
    run out with the lease."""
    lease = 0.6
    holder = RedisKeyedLock(redis_server.url, prefix="third:", lease=lease)
    lock = RedisKeyedLock(redis_server.url, prefix="third:", lease=lease)
    assert holder.acquire("k")
    interrupts = Interrupts(monkeypatch)
    interrupts.at_entry(RedisScope, "_give_up")  # as the wait withdraws
    interrupts.at_entry(RedisScope, "_withdraw_later", times=2)  # twice in the recovery
    with pytest.raises(KeyboardInterrupt):
        lock.acquire("k", timeout=0.2)
    monkeypatch.undo()
    assert interrupts.raised == ["_give_up", "_withdraw_later", "_withdraw_later"]
    assert lock._backend.scope.held == {}  # nothing renewed
    holder.release("k")  # handed to the place left behind, if it is still there
    other = RedisKeyedLock(redis_server.url, prefix="third:", lease=lease)
    assert other.acquire("k", timeout=3 * lease), "the key is still held past its lease"
    other.release("k")


def test_release_by_another_thread(redis_lock: RedisKeyedLock) -> None:
    redis_lock.acquire("k")
    start_thread(lambda: redis_lock.release("k"), "releaser").result()
    assert not redis_lock.locked("k")
    with pytest.raises(RuntimeError, match="not held"):
        redis_lock.release("k")


# -- leases -----------------------------------------------------------------------------------


def test_a_critical_section_five_times_the_lease_keeps_the_key(make_lock: MakeLock) -> None:
    lock, other = make_lock(lease=0.3), make_lock()
    with lock("k") as held:
        deadline = time.monotonic() + 1.5  # five leases
        while time.monotonic() < deadline:
            assert not other.acquire("k", blocking=False)
            time.sleep(0.05)
        assert held.lost is False
    with other("k") as after:
        assert after.token > held.token


def test_renewal_keeps_many_keys_with_one_thread(make_lock: MakeLock) -> None:
    lock, other = make_lock(lease=0.3), make_lock()
    keys = [f"k{n}" for n in range(20)]
    for key in keys:
        lock.acquire(key)
    time.sleep(1.0)  # three leases
    assert not any(other.acquire(key, blocking=False) for key in keys)
    for key in keys:
        lock.release(key)


def test_a_renewal_round_after_the_scripts_were_flushed_takes_three_round_trips(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    """A server that lost its scripts (a restart) answers NOSCRIPT to every renewal of the
    round: the script is loaded once and the round sent again, never call by call."""
    lock = make_lock()
    keys = [f"k{n}" for n in range(20)]
    for key in keys:
        lock.acquire(key)
    scope: Any = lock._backend.scope
    renewals = scope.renewals()
    redis_client.script_flush()
    sent: list[None] = []
    connection: Any = redis.connection.AbstractConnection
    original = connection.send_packed_command
    here = threading.get_ident()

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        if threading.get_ident() == here:  # (not the renewal thread's own rounds)
            sent.append(None)
        original(self, command, check_health)

    connection.send_packed_command = counting
    try:
        replies = scope.link.run_many([call for call, _ in renewals])
    finally:
        connection.send_packed_command = original
        for key in keys:
            lock.release(key)
    assert replies == [1] * len(keys)
    assert len(sent) == 3  # the round, SCRIPT LOAD, the round again


def test_a_lost_lease_makes_the_exit_raise_and_spares_the_next_holder(
    make_lock: MakeLock, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyedlock")
    lock, other = make_lock(lease=0.3), make_lock()
    with pytest.raises(LeaseLost, match="'k'") as raised, lock("k") as held:  # noqa: PT012
        redis_client.delete(owner_key("k"))  # as a server that lost its data
        wait_until(lambda: held.lost, "the renewal finds the lease gone")
        assert other.acquire("k", blocking=False)  # someone else holds it now
    assert str(held.token) in str(raised.value)
    [record] = [r for r in caplog.records if "lease" in r.getMessage()]  # logged once
    assert record.name == "keyedlock"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == (
        f"the lease of key 'k' (fencing token {held.token}) was lost while it was held: "
        "the renewal found it held by someone else or by nobody"
    )
    assert other.locked("k")
    assert redis_client.exists(owner_key("k"))  # the exit never deleted the new grant
    other.release("k")
    assert len(lock) == 0


def test_a_release_refused_by_the_server_raises_lease_lost(
    make_lock: MakeLock, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyedlock")
    lock = make_lock(lease=WAIT)  # the renewal will not notice in time: the release does
    lock.acquire("k")
    redis_client.delete(owner_key("k"))
    with pytest.raises(LeaseLost):
        lock.release("k")
    assert len(lock) == 0
    assert [r.getMessage().rsplit(": ", 1)[-1] for r in caplog.records] == [
        "the release found it held by someone else or by nobody"
    ]


@pytest.mark.anyio
async def test_lease_lost_is_raised_by_async_with_and_run(
    make_lock: MakeLock, redis_client: redis.Redis
) -> None:
    lock = make_lock(lease=WAIT)
    with pytest.raises(LeaseLost):
        async with lock("k"):
            redis_client.delete(owner_key("k"))

    async def body() -> int:
        redis_client.delete(owner_key("k"))
        return 1

    with pytest.raises(LeaseLost):
        await lock.run("k", body)
    assert len(lock) == 0
    assert not lock.locked("k")


def test_lease_lost_is_raised_by_run_sync(make_lock: MakeLock, redis_client: redis.Redis) -> None:
    lock = make_lock(lease=WAIT)
    with pytest.raises(LeaseLost):
        lock.run_sync("k", lambda: redis_client.delete(owner_key("k")))
    assert len(lock) == 0


def _backend() -> str:
    import sniffio

    return sniffio.current_async_library()


def test_statistics_count_every_waiter_by_runtime(make_lock: MakeLock) -> None:
    """Waiters add up: this process's, its first one (waiting in Redis) included, and the
    callers of other processes under "process"; max_waiters bounds the first one too."""
    holder, here = make_lock(), make_lock()  # two processes, as far as Redis can tell
    assert holder.acquire("k")

    def wait() -> bool:
        with here("k", timeout=WAIT):
            return True

    waiters = [start_thread(wait, f"waiter {i}") for i in range(2)]
    wait_until(lambda: here.waiters("k") == 2, "both wait")
    # The second one's count reaches Redis from the renewal thread, soon after it queued.
    wait_until(lambda: holder.waiters("k") == 2, "both counted in Redis")
    stats = here.statistics("k")
    assert (stats.waiters, dict(stats.waiters_by_runtime)) == (2, {"thread": 2})
    seen = holder.statistics("k")  # the other process's first caller, and the one behind it
    assert (seen.waiters, dict(seen.waiters_by_runtime)) == (2, {"process": 2})
    bounded = make_lock(max_waiters=0)
    with pytest.raises(QueueFull, match="max_waiters=0"):
        bounded.acquire("k")
    with pytest.raises(QueueFull), bounded("k", timeout=WAIT):
        pass
    holder.release("k")
    for waiter in waiters:
        assert waiter.result() is True


def test_a_count_that_overtook_its_acquire_goes_again(
    make_lock: MakeLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A caller queues behind this process's first one while that one's acquire is on its
    way: the renewal thread's report reaches Redis first, where there is no place yet to
    count it in. The count goes again once the acquire is answered, not with the first
    caller's next acquire or its next renewal (both held back meanwhile)."""
    holder, here = make_lock(), make_lock()
    assert holder.acquire("k")
    scope = here._backend.scope
    reported, go = threading.Event(), threading.Event()
    run, run_many, pop, renewals = Link.run, Link.run_many, Link.pop, RedisScope.renewals
    second: list[Any] = []

    def reporting(
        link: Link, calls: Any, wait: float | None = None, *, skip_late: bool = False
    ) -> list[Any]:
        replies = run_many(link, calls, wait, skip_late=skip_late)
        if any(call.script is REPORT for call in calls):
            reported.set()
        return replies

    def overtaken(link: Link, call: Any, wait: float | None = None) -> Any:
        if call.script is ACQUIRE and not second:  # (the first caller's acquire, on its way)
            second.append(start_thread(lambda: here.acquire("k", timeout=WAIT), "second"))
            assert reported.wait(WAIT), "no report of the second caller"
        return run(link, call, wait)

    def held_back(link: Link, key: bytes, block: float) -> bytes | None:
        go.wait(WAIT)
        return pop(link, key, block)

    def not_here(self: RedisScope) -> list[Any]:
        return [] if self is scope and not go.is_set() else renewals(self)

    monkeypatch.setattr(Link, "run_many", reporting)
    monkeypatch.setattr(Link, "run", overtaken)
    monkeypatch.setattr(Link, "pop", held_back)
    monkeypatch.setattr(RedisScope, "renewals", not_here)
    first = start_thread(lambda: here.acquire("k", timeout=WAIT), "first")
    try:
        wait_until(lambda: holder.waiters("k") == 2, "the second caller counts in Redis")
    finally:
        go.set()
    holder.release("k")
    assert first.result()
    here.release("k")
    assert second[0].result()
    here.release("k")


@pytest.mark.anyio
async def test_a_cancelled_wait_in_redis_is_not_counted_at_once(make_lock: MakeLock) -> None:
    """A cancelled waiter leaves its place through the renewal thread; its process does not
    count that place meanwhile: waiters(key) is 0 right after the cancellation."""
    holder, here = make_lock(), make_lock()  # two processes, as far as Redis can tell
    assert holder.acquire("k", blocking=False)  # (a blocking one is refused in a task)
    try:
        for _ in range(5):

            async def wait_for_key() -> None:
                async with here("k"):
                    raise AssertionError("the key is held elsewhere")

            async with anyio.create_task_group() as tg:
                tg.start_soon(wait_for_key)
                await wait_until_async(lambda: here.waiters("k") == 1, "it waits in Redis")
                tg.cancel_scope.cancel()
            assert here.waiters("k") == 0
            assert here.statistics("k").waiters == 0
    finally:
        holder.release("k")
