"""RedisKeyedLock when its server goes away: down, killed while callers wait, restarted.

Each test has a server of its own (``fresh_server``) that it stops, kills or restarts. The
promise: a clear ConnectionError naming the server, never a false grant, never a hang, and the
lock works again once the server is back. A restart loses the data (no persistence): a holder
learns that its lease is gone, and tokens keep increasing.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from functools import partial
from typing import Any, ClassVar

import pytest
import redis
import trio
import trio.testing
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from keyedlock import LeaseLost, LockTimeout
from keyedlock._scopes._redis import _linkasync, renewer
from keyedlock._scopes._redis._link import Link
from keyedlock._scopes._redis._probe import late_servers
from keyedlock.redis import RedisKeyedLock

from ..support import (
    WAIT,
    AsyncioThread,
    Handle,
    TrioThread,
    scope_of,
    start_thread,
    wait_until,
)
from .conftest import LEASE
from .holds import held
from .servers import Server, free_port


@pytest.fixture
def locks(fresh_server: Server) -> Iterator[list[RedisKeyedLock]]:
    """Two locks of the test's own server (two processes, as far as Redis can tell)."""
    made = [RedisKeyedLock(fresh_server.url, lease=1.0) for _ in range(2)]
    yield made
    for lock in made:
        assert len(lock) == 0, f"keys left behind: {lock!r}"


def where(server: Server) -> str:
    return f"127.0.0.1:{server.port}"


def test_a_server_that_is_down_makes_acquire_raise_and_later_work(
    fresh_server: Server, locks: list[RedisKeyedLock]
) -> None:
    lock = locks[0]
    fresh_server.stop()
    with pytest.raises(ConnectionError, match=where(fresh_server)), lock("k"):
        pytest.fail("granted without a server")
    with pytest.raises(ConnectionError, match=where(fresh_server)):
        lock.acquire("k", timeout=0)
    assert len(lock) == 0
    fresh_server.start()
    with lock("k") as held:
        assert held.token > 0


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_a_server_that_is_down_makes_async_acquire_raise(
    fresh_server: Server, locks: list[RedisKeyedLock], runtime: str
) -> None:
    lock = locks[0]
    fresh_server.stop()

    async def enter() -> None:
        async with lock("k"):
            pytest.fail("granted without a server")

    def run_enter() -> None:
        if runtime == "asyncio":
            asyncio.run(enter())
        else:
            trio.run(enter)

    with pytest.raises(ConnectionError, match=where(fresh_server)):
        run_enter()
    assert len(lock) == 0
    fresh_server.start()

    async def works() -> int:
        async with lock("k") as held:
            return held.token

    assert (asyncio.run(works()) if runtime == "asyncio" else trio.run(works)) > 0


def test_a_server_killed_while_callers_wait_fails_them_at_once(
    fresh_server: Server, locks: list[RedisKeyedLock]
) -> None:
    holder, waiting = locks
    holder.acquire("k")
    in_thread = start_thread(lambda: waiting.acquire("k"), "thread waiter")
    wait_until(lambda: holder.waiters("k") == 1, "the thread waits in Redis")
    aio, trio_run = AsyncioThread(), TrioThread()
    try:
        in_asyncio = aio.submit(lambda: waiting.acquire_async("k"), "asyncio waiter")
        in_trio = trio_run.submit(lambda: waiting.acquire_async("k"), "trio waiter")
        wait_until(lambda: waiting.waiters("k") == 3, "the tasks queue behind the thread")
        fresh_server.kill()
        for handle in (in_thread, in_asyncio, in_trio):
            with pytest.raises(ConnectionError, match=where(fresh_server)):
                handle.result(WAIT)
    finally:
        aio.close()
        trio_run.close()
    with pytest.raises(ConnectionError, match=where(fresh_server)):
        holder.release("k")
    assert len(holder) == 0  # released here all the same
    assert len(waiting) == 0
    fresh_server.start()
    with waiting("k", timeout=WAIT), holder("other"):
        pass


def test_a_restart_that_lost_the_data_loses_the_lease_and_tokens_go_on(
    fresh_server: Server, locks: list[RedisKeyedLock]
) -> None:
    lock, other = locks
    with pytest.raises(LeaseLost), lock("k") as held:  # noqa: PT012
        fresh_server.restart()
        wait_until(lambda: held.lost, "the renewal finds the lease gone")
    with other("k") as after:
        assert after.token > held.token


def test_a_waiter_sees_a_restart_as_an_error_and_may_try_again(
    fresh_server: Server, locks: list[RedisKeyedLock]
) -> None:
    holder, waiting = locks
    holder.acquire("k")
    waiter = start_thread(lambda: waiting.acquire("k"), "waiter")
    wait_until(lambda: holder.waiters("k") == 1, "the waiter waits in Redis")
    fresh_server.restart()
    with pytest.raises(ConnectionError):
        waiter.result()
    with pytest.raises(LeaseLost):
        holder.release("k")
    assert waiting.acquire("k", timeout=WAIT)
    waiting.release("k")


def test_a_server_gone_past_the_lease_loses_it_and_logs_why(
    fresh_server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keyedlock")
    lock = RedisKeyedLock(fresh_server.url, lease=0.3)
    with pytest.raises(LeaseLost), lock("k") as held:  # noqa: PT012
        fresh_server.kill()
        wait_until(lambda: held.lost, "the renewal gives up once the lease has run out")
        fresh_server.start()
    assert [r.getMessage() for r in caplog.records] == [  # once: the release logs no more
        f"the lease of key 'k' (fencing token {held.token}) was lost while it was held: "
        "Redis could not be reached until the lease ran out"
    ]
    assert len(lock) == 0


@pytest.mark.parametrize("leave", ["with", "release(key)", "asyncio", "trio"])
def test_a_lease_lost_to_a_server_still_down_is_lease_lost_on_exit(
    fresh_server: Server, leave: str
) -> None:
    """The lease ran out while Redis could not be reached, and it still cannot be at the
    exit: LeaseLost (the unreachable server is its cause), not a bare ConnectionError."""
    lock = RedisKeyedLock(fresh_server.url, lease=0.3)
    with pytest.raises(LeaseLost) as raised:
        hold_losing_the_lease(lock, fresh_server, leave)
    assert isinstance(raised.value.__cause__, ConnectionError)
    assert where(fresh_server) in str(raised.value.__cause__)
    assert len(lock) == 0
    fresh_server.start()
    with lock("k"):  # and the lock works again once the server is back
        pass


def hold_losing_the_lease(lock: RedisKeyedLock, server: Server, leave: str) -> None:
    """Hold "k", kill the server until the lease is known lost, then leave as ``leave``."""

    def lose(held: Any) -> None:
        server.kill()
        wait_until(lambda: held.lost, "the renewal gives up once the lease has run out")

    if leave == "with":
        with lock("k") as held:
            lose(held)
    elif leave == "release(key)":
        assert lock.acquire("k")
        lose(lock._backend.table.holder(lock._local("k")))  # the hold acquire() took
        lock.release("k")
    elif leave == "asyncio":

        async def main() -> None:
            async with lock("k") as held:
                await asyncio.to_thread(lose, held)

        asyncio.run(main())
    else:

        async def trio_main() -> None:
            async with lock("k") as held:
                await trio.to_thread.run_sync(lose, held)

        trio.run(trio_main)


# -- a server that stops answering (SIGSTOP) ------------------------------------------------------


@pytest.fixture
def patient(fresh_server: Server) -> Iterator[RedisKeyedLock]:
    """A lock whose client waits a minute for a reply: longer than any test waits, so only
    the caller's own timeout can end a call to a stopped server. Its connection is made
    before the server stops (a stopped server's kernel still accepts connections)."""
    lock = RedisKeyedLock(f"{fresh_server.url}?socket_timeout=60", lease=LEASE)
    with lock("warm-up"):
        pass
    yield lock
    assert renewer.settle(WAIT), "clean-up calls still queued"
    assert len(lock) == 0, f"keys left behind: {lock!r}"


def test_timeout_bounds_acquire_against_a_stopped_server(
    fresh_server: Server, patient: RedisKeyedLock
) -> None:
    with fresh_server.paused():
        assert start_thread(lambda: patient.acquire("k", timeout=1), "acquire").result() is False
        assert start_thread(lambda: patient.acquire("k", blocking=False), "try").result() is False

        def enter() -> str:
            with pytest.raises(LockTimeout) as raised, patient("k", timeout=1):
                pytest.fail("granted by a stopped server")
            return str(raised.value)

        message = start_thread(enter, "with").result()
        assert "did not answer" in message
        assert where(fresh_server) in message
    assert renewer.settle(WAIT)  # the places it may have taken are withdrawn
    assert patient.acquire("k", timeout=WAIT)  # nobody holds it, nobody waits
    patient.release("k")


def test_timeout_bounds_a_wait_in_redis_when_the_server_stops(
    fresh_server: Server, patient: RedisKeyedLock
) -> None:
    holder = RedisKeyedLock(fresh_server.url, lease=6 * WAIT)  # never lost meanwhile
    holder.acquire("k")
    waiter = start_thread(lambda: patient.acquire("k", timeout=2), "waiter")
    wait_until(lambda: holder.waiters("k") == 1, "the waiter waits in Redis")
    with fresh_server.paused():
        assert waiter.result() is False
    assert renewer.settle(WAIT)
    assert holder.waiters("k") == 0  # its place is gone
    holder.release("k")
    assert patient.acquire("k", timeout=WAIT)
    patient.release("k")


def test_what_one_lock_learns_of_a_stopped_server_holds_for_another_on_its_client(
    fresh_server: Server,
) -> None:
    """Two locks made from one client (whose calls would wait a minute): once one of them
    found the server late, the other's timed acquire does not open a connection to it,
    whose handshake would overstay its deadline; it waits for the probe, within it."""
    client = redis.Redis.from_url(f"{fresh_server.url}?socket_timeout=60")
    first = RedisKeyedLock(client, prefix="first:", lease=LEASE)
    second = RedisKeyedLock(client, prefix="second:", lease=LEASE)
    with first("warm-up"), second("warm-up"):
        pass
    try:
        with fresh_server.paused():
            assert start_thread(lambda: first.acquire("k", timeout=0.2), "first").result() is False
            assert (
                start_thread(lambda: second.acquire("k", timeout=0.2), "second").result() is False
            )
        assert renewer.settle(WAIT)
        assert second.acquire("k", timeout=WAIT)
        second.release("k")
        assert len(first) == len(second) == 0
    finally:
        client.close()


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_timeout_bounds_async_acquire_against_a_stopped_server(
    fresh_server: Server, patient: RedisKeyedLock, runtime: str
) -> None:
    async def attempts() -> str:
        assert await patient.acquire_async("k", timeout=1) is False
        with pytest.raises(LockTimeout) as raised:
            async with patient("k", timeout=1):
                pytest.fail("granted by a stopped server")
        return str(raised.value)

    runner = AsyncioThread() if runtime == "asyncio" else TrioThread()
    try:
        with fresh_server.paused():
            message = runner.submit(attempts, runtime).result(WAIT)
        assert "did not answer" in message
    finally:
        runner.close()
    assert renewer.settle(WAIT)
    assert patient.acquire("k", timeout=WAIT)
    patient.release("k")


def test_a_trio_call_that_finds_no_worker_thread_free_in_time_ends_at_its_deadline(
    fresh_server: Server, patient: RedisKeyedLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under trio the calls run in worker threads the scope counts (CALL_THREADS per run):
    a timed call waiting for one ends at its own deadline, as if the server were late,
    not when the call ahead of it is done with the thread."""
    monkeypatch.setattr(_linkasync, "CALL_THREADS", 1)  # (the run's limiter is made after)
    order: list[str] = []

    async def attempts() -> None:
        async def ahead() -> None:  # holds the only thread, on a stopped server, 4 s
            order.append(f"ahead: {await patient.acquire_async('a', timeout=3)}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ahead)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(LockTimeout, match="no worker thread of this trio run was free"):
                async with patient("b", timeout=0.5):
                    pytest.fail("granted by a stopped server")
            order.append("behind: LockTimeout")

    runner = TrioThread()
    try:
        with fresh_server.paused():
            runner.submit(attempts, "trio").result(WAIT)
    finally:
        runner.close()
    assert order == ["behind: LockTimeout", "ahead: False"]


@pytest.mark.parametrize("runtime", ["threads", "asyncio", "trio"])
def test_a_socket_timeout_before_the_deadline_is_a_connection_error(
    fresh_server: Server, runtime: str
) -> None:
    """Whichever comes first ends a timed acquire on a stopped server: the client's socket
    timeout (a ConnectionError, as for any call) or the caller's deadline (LockTimeout)."""
    lock = RedisKeyedLock(f"{fresh_server.url}?socket_timeout=0.5", lease=LEASE)

    async def attempt() -> None:
        await lock.acquire_async("k", timeout=WAIT)

    with lock("warm-up"):
        pass
    with fresh_server.paused():
        if runtime == "threads":
            outcome = start_thread(lambda: lock.acquire("k", timeout=WAIT), "acquire")
            with pytest.raises(ConnectionError, match=where(fresh_server)) as raised:
                outcome.result()
        else:
            runner = AsyncioThread() if runtime == "asyncio" else TrioThread()
            try:
                with pytest.raises(ConnectionError, match=where(fresh_server)) as raised:
                    runner.submit(attempt, runtime).result(WAIT)
            finally:
                runner.close()
        assert not isinstance(raised.value, LockTimeout)
    assert renewer.settle(WAIT)
    assert lock.acquire("k", timeout=WAIT)
    lock.release("k")
    assert len(lock) == 0


def test_callers_with_deadlines_never_pile_threads_up_on_a_stopped_server(
    fresh_server: Server, patient: RedisKeyedLock
) -> None:
    """Once a reply came late, calls with a deadline send through one thread at a time per
    lock (its handshake may hang on a stopped server); the others wait for it within their
    own deadline. (A call that met the server before it was known late may have left the
    thread of a handshake that hangs: one, whatever the callers after it.)"""

    def senders() -> list[str]:
        return [
            t.name
            for t in threading.enumerate()
            if t.name.startswith("keyedlock-redis-")
            and not t.name.startswith(("keyedlock-redis-renewal", "keyedlock-redis-alarms"))
        ]

    with fresh_server.paused():
        assert patient.acquire("k", timeout=0.2) is False  # late from here on
        callers = [  # (keys of their own: each goes to the server)
            start_thread(partial(patient.acquire, f"k{n}", timeout=0.3), f"caller {n}")
            for n in range(4)
        ]
        assert [caller.result() for caller in callers] == [False] * 4
        threads = senders()
        assert threads.count("keyedlock-redis-probe") <= 1, threads
        assert threads.count("keyedlock-redis-connect") <= 1, threads
        assert len(threads) <= 2, threads
    assert renewer.settle(WAIT)
    assert patient.acquire("k", timeout=WAIT)
    patient.release("k")


def test_an_outside_cancellation_is_kept_when_a_pop_runs_late() -> None:
    """A task cancelled from outside just as its pop's own bound expires ends cancelled: the
    bound reports only its own expiry as a late reply."""
    from keyedlock._scopes._redis._loops import MARGIN, AsyncSide, Late

    class Pool:
        connection_kwargs: ClassVar[dict[str, object]] = {}

    class Stuck:
        connection_pool = Pool()
        waiter: asyncio.Task[object]

        async def execute_command(self, *args: object) -> object:
            time.sleep(MARGIN + 0.05)  # noqa: ASYNC251 - past the bound, with no turn of the loop
            await asyncio.sleep(0)  # the bound expires at this turn; the outside cancel too:
            self.waiter.cancel()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    async def main() -> str:
        client = Stuck()
        side = AsyncSide(client, None)  # type: ignore[arg-type]
        task = asyncio.ensure_future(side.pop(b"k", 0.001))
        client.waiter = task
        try:
            await task
        except Late:
            return "late"
        except asyncio.CancelledError:
            return "cancelled"
        return "popped"

    assert asyncio.run(main()) == "cancelled"


def test_a_read_timeout_makes_later_timed_calls_wait_for_the_server_to_answer(
    fresh_server: Server,
) -> None:
    """A socket timeout is a late reply too: the next caller with a deadline does not open a
    connection whose handshake (bounded by the socket timeout alone) could overstay it."""
    lock = RedisKeyedLock(f"{fresh_server.url}?socket_timeout=0.5", lease=LEASE)
    with lock("warm-up"):
        pass
    with fresh_server.paused():
        with pytest.raises(ConnectionError):
            start_thread(lambda: lock.acquire("k", timeout=WAIT), "untimed").result()
        assert start_thread(lambda: lock.acquire("k", timeout=0.1), "timed").result() is False
    assert renewer.settle(WAIT)
    assert lock.acquire("k", timeout=WAIT)
    lock.release("k")
    assert len(lock) == 0


@pytest.mark.parametrize(
    ("block", "socket_timeout", "expected"),
    [
        (30.0, None, 30.0),  # no socket timeout: the whole wait
        (30.0, 5.0, 4.0),  # a fifth of it (a stall near the end of a pop is no timeout)
        (100.0, 60.0, 59.0),  # MARGIN at most
        (30.0, 0.3, 0.05),  # POP_SLACK at least (the server's clock tick)
        (0.5, 5.0, 0.5),  # a wait shorter than that
        (30.0, 0.1, 0.001),  # a socket timeout too short for any pop: the shortest
    ],
)
def test_a_blocking_pop_ends_before_the_socket_timeout(
    block: float, socket_timeout: float | None, expected: float
) -> None:
    from keyedlock._scopes._redis._loops import pop_block

    assert pop_block(block, socket_timeout) == pytest.approx(expected)


@pytest.mark.parametrize("runtime", ["threads", "asyncio", "trio"])
def test_waits_in_redis_work_with_a_short_socket_timeout(
    fresh_server: Server, runtime: str
) -> None:
    """A wait in Redis is a series of blocking pops, each cut short of the socket timeout by
    more than the server's clock tick: with a socket timeout of 0.3 s, a waiter waits
    through several of them (the holder keeps the key for a second) and gets the key."""
    holder = RedisKeyedLock(fresh_server.url, lease=LEASE)
    waiter = RedisKeyedLock(f"{fresh_server.url}?socket_timeout=0.3", lease=LEASE)
    holder.acquire("k")

    async def wait_async() -> int:
        async with waiter("k", timeout=WAIT) as held:
            return held.token

    def wait() -> int:
        with waiter("k", timeout=WAIT) as held:
            return held.token

    outcome: Handle[int]
    runner: AsyncioThread | TrioThread | None = None
    if runtime == "threads":
        outcome = start_thread(wait, "waiter")
    else:
        runner = AsyncioThread() if runtime == "asyncio" else TrioThread()
        outcome = runner.submit(wait_async, runtime)
    try:
        wait_until(lambda: holder.waiters("k") == 1, "the waiter waits in Redis")
        time.sleep(1.0)  # (several pops time out meanwhile; any length would do)
        holder.release("k")
        assert outcome.result(WAIT) > 0
    finally:
        if runner is not None:
            runner.close()
    assert len(waiter) == 0
    assert len(holder) == 0


@pytest.fixture
def split(
    fresh_server: Server, redis_server: Server, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """As on a cluster of two nodes: for the locks of the URL this yields, keys ``x-*`` live
    on ``fresh_server`` (the node the test stops, whose client would wait a minute for a
    reply), the others on the shared server."""
    stopped = redis.Redis.from_url(f"{fresh_server.url}?socket_timeout=60").connection_pool
    pool_of = Link._pool_of

    def routed(self: Link, key: bytes) -> Any:
        return stopped if b"x-" in key else pool_of(self, key)

    monkeypatch.setattr(Link, "_pool_of", routed)
    yield redis_server.url
    stopped.disconnect()


def test_a_late_server_holds_up_no_call_to_another_server(fresh_server: Server, split: str) -> None:
    """As on a cluster with one node stopped: the lock's keys ``x-*`` live on a server that
    stops, the others on a healthy one. Callers waiting for the stopped one to answer hold
    up nobody whose keys live elsewhere."""
    lock = RedisKeyedLock(split, prefix="routed:", lease=LEASE)
    with lock("x-warm-up"):
        pass
    with fresh_server.paused():
        assert lock.acquire("x-1", timeout=0.1) is False  # that server is late from here on
        blocked = start_thread(lambda: lock.acquire("x-2", timeout=WAIT), "waits for it")
        assert lock.acquire("y-1", timeout=WAIT / 2), "held up by another server's probe"
        lock.release("y-1")
        assert not blocked.finished.is_set()
    assert blocked.result() is True
    lock.release("x-2")
    assert renewer.settle(WAIT)
    assert len(lock) == 0


def test_a_clean_up_that_cannot_reach_the_server_goes_again_until_it_does(
    fresh_server: Server,
) -> None:
    """A timed acquire sent to a stopped server gives up; the clean-up of what it may take
    there cannot reach the server either (its socket times out). Once the server goes on,
    it runs the acquire (granting the key to nobody), and the clean-up goes again a
    moment after: the key is free at once, not after a whole lease."""
    lock = RedisKeyedLock(f"{fresh_server.url}?socket_timeout=0.5", lease=6 * WAIT)
    other = RedisKeyedLock(fresh_server.url, lease=LEASE)
    with lock("warm-up"):
        pass
    with fresh_server.paused():
        with pytest.raises(ConnectionError):
            lock.acquire("k", timeout=0.2)
        wait_until(lambda: bool(renewer._later), "the clean-up failed once")
    assert renewer.settle(WAIT)
    assert other.acquire("k", blocking=False), "the acquire sent before the stop holds the key"
    other.release("k")
    assert len(lock) == 0


#: A process that gives up a timed acquire on a stopped server (arguments: the server's URL
#: and process id), lets the server go on, and exits at once.
_GIVES_UP_AND_EXITS = """
import os, signal, sys
from keyedlock.redis import RedisKeyedLock
lock = RedisKeyedLock(sys.argv[1], prefix="exit:", lease=30)
with lock("warm-up"):
    pass
os.kill(int(sys.argv[2]), signal.SIGSTOP)
try:
    assert not lock.acquire("k", timeout=0.3)
finally:
    os.kill(int(sys.argv[2]), signal.SIGCONT)
"""


def test_a_clean_up_left_at_exit_goes_out_before_the_process_ends(fresh_server: Server) -> None:
    """The withdraw of the place a timed acquire took on a stopped server could not reach
    it; the server goes on and the process exits at once: the withdraw goes out at exit
    (tried again until it reaches the server, for two seconds at most), not with the next
    renewal round, a third of the lease (10 s) away. No place is left in the queue."""
    other = RedisKeyedLock(fresh_server.url, prefix="exit:", lease=30)
    with other("k"):
        child = subprocess.run(
            [sys.executable, "-c", _GIVES_UP_AND_EXITS, fresh_server.url, str(fresh_server.pid)],
            capture_output=True,
            text=True,
            timeout=WAIT * 3,
            check=False,
        )
        assert child.returncode == 0, child.stderr
        assert other.waiters("k") == 0, "the place of the process that exited is still queued"


def test_a_stopped_server_does_not_cost_the_leases_on_another(
    fresh_server: Server, split: str
) -> None:
    """As on a cluster with one node stopped: keys ``x-*`` live on a server that stops, whose
    client would wait a minute for a reply; the renewal rounds still renew the key held on
    the healthy server, so its lease is never lost. (The key on the stopped one is.)"""
    lock = RedisKeyedLock(split, prefix="renewed:", lease=LEASE)
    on_stopped = lock("x-1")
    on_stopped.__enter__()  # first: its renewal comes first in each round
    with lock("y-1") as healthy:
        with fresh_server.paused():
            time.sleep(2 * LEASE)  # (long enough to lose the lease if renewals were held up)
        assert not healthy.lost
    with pytest.raises(LeaseLost):
        on_stopped.__exit__(None, None, None)
    assert renewer.settle(WAIT)
    assert len(lock) == 0


def test_callers_on_a_stopped_server_do_not_cost_the_leases_on_another(
    fresh_server: Server, split: str
) -> None:
    """While the server of keys ``x-*`` is stopped, callers keep trying them (each queued
    behind another in this process, each timing out and leaving a clean-up to send): the
    renewal thread does not wait for that server again for each of their reports and
    clean-ups, so the key held on the healthy server keeps its lease."""
    # (A lease of 3 s: the first round after the stop may wait for that server before the
    # healthy one, before it is known late; 2 s leaves too little room on a loaded machine.)
    lock = RedisKeyedLock(split, prefix="churned:", lease=1.5 * LEASE)
    done = threading.Event()
    tries = [0, 0, 0]

    def churn(n: int, key: str) -> None:
        while not done.is_set():
            tries[n] += 1
            try:
                if lock.acquire(key, timeout=0.02):
                    lock.release(key)
            except (ConnectionError, LockTimeout):
                pass

    # Idle connections to that server, as a busy process has them: a new one, opened once
    # it stopped, would wait this client's socket timeout (a minute) for its handshake.
    together = threading.Barrier(4)

    def hold(n: int) -> None:
        with lock(f"x-{n}"):
            together.wait(WAIT)

    for worker in [start_thread(partial(hold, n)) for n in range(4)]:
        worker.result(WAIT)
    with lock("y-1") as healthy:
        with fresh_server.paused():
            assert not lock.acquire("x-2", timeout=0.02)  # (no answer: now it is late)
            threads = [
                start_thread(partial(churn, n, key)) for n, key in enumerate(("x-2", "x-2", "x-3"))
            ]
            try:
                wait_until(lambda: min(tries) >= 2, "each caller tried twice")
                time.sleep(2 * LEASE)  # (long enough to lose the lease if renewals were held up)
            finally:
                done.set()
        for thread in threads:
            thread.result(WAIT)
        assert not healthy.lost
    assert renewer.settle(WAIT)
    assert len(lock) == 0


def test_a_stopped_server_costs_the_leases_on_another_nothing_whatever_the_links(
    fresh_server: Server, split: str
) -> None:
    """Two locks (two links) each hold a key on either server: the renewal round waits for
    the stopped one once for both, after renewing every key on the healthy one, not once
    per link, one after the other."""
    locks = [RedisKeyedLock(split, prefix=f"links-{n}:", lease=LEASE) for n in range(2)]
    stopped = [lock("x-1") for lock in locks]
    healthy = [lock("y-1") for lock in locks]
    for ctx in stopped + healthy:
        ctx.__enter__()
    with fresh_server.paused():
        time.sleep(3 * LEASE)  # (long enough to lose the leases if renewals were held up)
    assert [ctx.lost for ctx in healthy] == [False, False]
    for ctx in healthy:
        ctx.__exit__(None, None, None)
    for ctx in stopped:
        with pytest.raises(LeaseLost):
            ctx.__exit__(None, None, None)
    assert renewer.settle(WAIT)
    assert [len(lock) for lock in locks] == [0, 0]


@pytest.mark.parametrize("closed_by", ["client", "server"])
def test_a_new_connection_to_a_stopped_server_costs_the_leases_on_another_nothing(
    fresh_server: Server, split: str, closed_by: str
) -> None:
    """The connections to the server of keys ``x-*`` are closed as it stops, by the client
    or by the server (a restart, ``CLIENT KILL``, its idle timeout): the next renewal there
    connects again, with a handshake its client would wait a minute for. The renewal waits
    for it no longer than for a reply, so the key held on the healthy server, renewed in
    the same round, keeps its lease (its exit would raise LeaseLost otherwise)."""
    lock = RedisKeyedLock(split, prefix="handshake:", lease=LEASE)
    healthy = lock("y-1")
    pool = scope_of(lock).link._pool_of(b"x-1")
    with held([lock("x-1")], [healthy]):
        if closed_by == "server":
            wait_until(lambda: len(pool._available_connections) > 0, "an idle connection")
            with fresh_server.client() as admin:
                assert admin.client_kill_filter(_type="normal", skipme=True) > 0
        else:
            pool.disconnect()
        with fresh_server.paused():
            time.sleep(3 * LEASE)  # (long enough to lose the lease if renewals were held up)
            assert not healthy.lost
    assert len(lock) == 0


def test_a_client_that_retries_costs_the_leases_of_other_keys_nothing(
    fresh_server: Server,
) -> None:
    """A lock made from a user's redis.Redis whose retry tries a refused connection again,
    with back-off, for seconds (redis-py's default does): its clean-ups, sent by the renewal
    thread, reach for the server without that retry, so a key held through another lock
    keeps its lease."""
    lock = RedisKeyedLock(fresh_server.url, prefix="retrying:", lease=LEASE)
    refused = redis.Redis(
        host="127.0.0.1",
        port=free_port(),  # (nothing listens there)
        socket_timeout=1,
        socket_connect_timeout=1,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.5), 6),
    )
    unreachable = RedisKeyedLock(refused, prefix="retrying:", lease=LEASE)
    with lock("held") as held:
        for _ in range(3):
            with pytest.raises(ConnectionError):
                unreachable.acquire("k", timeout=0.5)
        time.sleep(2 * LEASE)  # (long enough to lose the lease if renewals were held up)
        assert not held.lost
    assert len(lock) == 0


def _retries(retry: Retry) -> int:
    get = getattr(retry, "get_retries", None)  # (redis-py 5.0 has none)
    return int(get()) if get is not None else int(retry._retries)


@pytest.mark.parametrize("kind", [redis.ConnectionPool, redis.BlockingConnectionPool])
def test_a_users_client_is_served_by_one_copy_of_its_pool_without_retry_or_cap(
    fresh_server: Server, kind: type[redis.ConnectionPool]
) -> None:
    retrying = Retry(ExponentialBackoff(cap=2.0, base=0.5), 6)
    pool = kind.from_url(fresh_server.url, max_connections=2, retry=retrying)
    client = redis.Redis(connection_pool=pool)
    locks = [RedisKeyedLock(client, prefix=f"own-pool-{n}:", lease=LEASE) for n in range(2)]
    for lock in locks:
        with lock("k"):
            assert lock.locked("k")
    ours = [lock._backend.scope.link._pool for lock in locks]
    assert ours[0] is ours[1]  # one copy per pool of the user's, for every lock
    assert type(ours[0]) is redis.ConnectionPool
    assert ours[0] is not pool
    assert ours[0].max_connections >= 2**31  # (uncapped: see the next test)
    assert _retries(ours[0].connection_kwargs["retry"]) == 0
    assert pool.connection_kwargs["retry"] is retrying  # (the client's own is left as it is)
    client.close()


def test_the_keys_a_process_waits_for_do_not_starve_the_renewal_of_those_it_holds(
    fresh_server: Server,
) -> None:
    """A user's client capped at two connections: two keys waited for hold both (a blocking
    pop each); the renewal of the key held still gets a connection, and keeps its lease."""
    client = redis.Redis.from_url(fresh_server.url, max_connections=2)
    lock = RedisKeyedLock(client, prefix="capped:", lease=LEASE)
    other = RedisKeyedLock(fresh_server.url, prefix="capped:", lease=LEASE)
    for key in ("a", "b"):
        assert other.acquire(key)
    try:
        with lock("held") as held:
            waiters = [
                start_thread(partial(lock.acquire, key, timeout=4 * LEASE)) for key in ("a", "b")
            ]
            wait_until(lambda: other.waiters("a") == other.waiters("b") == 1, "both wait")
            time.sleep(2 * LEASE)  # (long enough to lose the lease if renewals were held up)
            assert not held.lost
        for key in ("a", "b"):
            other.release(key)
        assert [waiter.result(WAIT) for waiter in waiters] == [True, True]
        for key in ("a", "b"):
            lock.release(key)
    finally:
        client.close()
    assert len(lock) == 0


def test_a_sentinel_client_is_refused_with_a_clear_error() -> None:
    sentinel = redis.Sentinel([("127.0.0.1", free_port())])
    with pytest.raises(TypeError, match="Sentinel client"):
        RedisKeyedLock(sentinel.master_for("mymaster"))


def test_a_dropped_client_of_a_late_server_is_not_kept(fresh_server: Server) -> None:
    """What the process knows of late servers (one set for every link) does not keep the
    connection pool of a client the program dropped, whether its server answers again or
    not."""
    client = redis.Redis.from_url(f"{fresh_server.url}?socket_timeout=5")
    lock = RedisKeyedLock(client, prefix="dropped:", lease=0.3)
    with lock("warm-up"):
        pass
    pool = weakref.ref(client.connection_pool)
    with fresh_server.paused():
        assert lock.acquire("k", timeout=0.1) is False
        assert late_servers.late(client.connection_pool)
        assert renewer.settle(WAIT)  # (its withdraw is given up after three leases)
        del lock, client

        def freed() -> bool:
            gc.collect()
            return pool() is None

        wait_until(freed, "the dropped client's pool is freed")  # (once its probe ended)
