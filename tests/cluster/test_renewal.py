"""The renewal thread on its own: what ``settle`` waits for, how chores go again, and that
it keeps no lock alive.

``settle`` is what tests (and interpreter exit) use to know that nothing is left for the
thread to send: a chore queued or running. A renewal round is no such thing; it comes every
third of a lease whether anything was left over or not.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import select
import threading
import time
import weakref
from multiprocessing.connection import Connection
from typing import Any

import pytest
import redis

from keyedlock import _ki
from keyedlock._scopes._redis import _renewal
from keyedlock._scopes._redis._connect import _get, _Handshake, connection, give_back
from keyedlock._scopes._redis._failures import RedisUnavailable, redirected
from keyedlock._scopes._redis._link import Link
from keyedlock._scopes._redis._loops import LoopClients
from keyedlock._scopes._redis._lua import Call, Script
from keyedlock._scopes._redis._probe import late_servers
from keyedlock._scopes._redis._renewal import Renewer
from keyedlock._scopes._redis._sending import send as _send
from keyedlock.redis import RedisKeyedLock

from ..support import WAIT, scope_of, start_thread, wait_until
from .servers import Server


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the threads started from now on (in the test)."""
    names: list[str] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        names.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    return names


@pytest.fixture
def no_thread_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """No thread can start from now on, as at interpreter exit on Python 3.12+."""

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", refused)


class SlowMember:
    """A member whose renewal round blocks until the test lets it go."""

    period = 0.01
    link: Any = None

    def __init__(self) -> None:
        self.in_round = threading.Event()
        self.go = threading.Event()

    def renewals(self) -> list[Any]:
        self.in_round.set()
        self.go.wait(WAIT)
        return []

    def forked(self) -> None:
        pass


def test_a_renewal_round_in_progress_is_not_a_chore_left_over() -> None:
    renewer = Renewer()
    member = SlowMember()
    renewer.add(member)
    try:
        assert member.in_round.wait(WAIT), "no renewal round came"
        assert renewer.settle(0), "a renewal round counted as a chore left over"
    finally:
        member.go.set()


class AwayLink:
    """A link whose server cannot be reached: every call raises, and is counted."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def answering(self, call: object) -> bool:
        return True  # (not known to be late: refused, reset)

    def run(self, call: object, wait: float | None = None) -> object:
        self.calls.append(call)
        raise RedisUnavailable("the server is away")


def test_chores_behind_one_that_found_the_server_away_wait_for_the_next_round() -> None:
    """One chore finds its server away: the others for it are not sent this round (each
    would wait too), and none is dropped untried, even one not meant to go again."""
    away = AwayLink()
    now = time.monotonic()
    chores: list[Any] = [(away, "withdraw", now + 60), (away, "conclude", now), (away, "x", now)]
    later: list[Any] = _send(chores)
    assert away.calls == ["withdraw"]
    assert [call for _, call, _ in later] == ["withdraw", "conclude", "x"]
    again: list[Any] = _send(later)
    assert [call for _, call, _ in again] == ["withdraw", "conclude", "x"]
    assert away.calls == ["withdraw", "withdraw"]


def test_a_chore_not_meant_to_go_again_goes_once() -> None:
    away = AwayLink()
    assert _send([(away, "conclude", time.monotonic())]) == []  # type: ignore[list-item]
    assert away.calls == ["conclude"]


class LateLink(AwayLink):
    """A link whose server is late: it did not answer in time, nor the probe since."""

    def answering(self, call: object) -> bool:
        return False


def test_chores_for_a_late_server_wait_unsent_while_their_time_runs() -> None:
    """A late server's chores are not sent (each would wait for it): they wait for a round
    that finds it answering, for as long as they may go again, and are dropped after."""
    late = LateLink()
    now = time.monotonic()
    chores: list[Any] = [(late, "withdraw", now + 60), (late, "conclude", now)]
    later: list[Any] = _send(chores)
    assert late.calls == []
    assert [call for _, call, _ in later] == ["withdraw"]


class HealthyLink(AwayLink):
    """A link whose server answers every call."""

    def run(self, call: object, wait: float | None = None) -> object:
        self.calls.append(call)
        return 1


@pytest.mark.usefixtures("no_thread_starts")
def test_a_probe_that_cannot_start_costs_no_chore() -> None:
    """A late server's probe thread cannot start (no thread left, or interpreter exit): its
    chore is sent all the same, and finds out itself (here: refused, so it goes again
    later); the chores for other servers still go."""
    link = Link("redis://127.0.0.1:1", "test")  # (never connected)
    pool = link._pool_of(b"k")
    healthy = HealthyLink()
    late_servers.mark(pool)
    try:
        now = time.monotonic()
        call = Call(Script("noop", "return 1"), (b"k",), ())
        chores: list[Any] = [(link, call, now + 60), (healthy, "release", now + 60)]
        later: list[Any] = _send(chores)
        assert healthy.calls == ["release"]
        assert [chore[1] for chore in later] == [call]
    finally:
        late_servers.answered(pool)


def test_a_lock_nobody_uses_any_more_goes_with_its_connections(
    redis_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal thread keeps no lock alive while it waits, nor does its link's sending
    thread while it waits for more work (here for a minute): a lock dropped by its program
    is freed (and its client's connections closed), not kept for the process's life."""
    monkeypatch.setattr(_renewal, "_LINGER", 60.0)
    lock = RedisKeyedLock(redis_server.url, lease=0.3)
    with lock("k"):
        wait_until(
            lambda: any(t.name == "keyedlock-redis-renewal-send" for t in threading.enumerate()),
            "a renewal is sent",
        )
    gone = weakref.ref(lock._backend.scope)  # (what the renewal thread renews: the link's owner)
    del lock

    def freed() -> bool:
        gc.collect()
        return gone() is None

    wait_until(freed, "the dropped lock is freed")


def test_the_links_calls_are_protected_from_ctrl_c_under_trio() -> None:
    """Every call of the link, sync and async, is one of keyedlock's internals (a Ctrl-C under
    trio waits for a checkpoint: a release that went through is never reported as
    interrupted)."""
    for name in ("run", "run_many", "command", "pop", "run_async", "finish_async", "pop_async"):
        assert getattr(Link, name) in _ki._marked, name


class IdleMember:
    """A member that holds nothing: it is asked for its renewals each round, and has none."""

    period = 0.01
    link: Any

    def __init__(self) -> None:
        self.link = object()  # (a link of its own: nothing is sent)
        self.asked = 0

    def renewals(self) -> list[Any]:
        self.asked += 1
        return []

    def forked(self) -> None:
        pass


def test_a_member_with_nothing_to_renew_costs_no_thread(started: list[str]) -> None:
    """Locks and groups that hold and wait for nothing cost a round no sending thread,
    however many there are and however short the rounds."""
    renewer = Renewer()
    members = [IdleMember() for _ in range(20)]
    for member in members:
        renewer.add(member)
    wait_until(lambda: min(m.asked for m in members) >= 5, "five rounds")
    assert "keyedlock-redis-renewal-send" not in started


class BlockingPool:
    """A pool whose next connection is made when the test says so."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.released: list[object] = []

    def get_connection(self, *args: object) -> object:
        assert self.go.wait(WAIT)
        return "connection"

    def release(self, conn: object) -> None:
        self.released.append(conn)


class Interrupted:
    """An event whose wait is interrupted (Ctrl-C while a caller waits for a handshake)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def wait(self, timeout: float | None = None) -> bool:
        raise KeyboardInterrupt

    def set(self) -> None:
        self.event.set()


@pytest.mark.parametrize("made", [False, True], ids=["before-it-is-made", "after"])
def test_a_caller_interrupted_while_a_connection_is_made_leaves_it_to_the_pool(made: bool) -> None:
    pool = BlockingPool()
    handshake = _Handshake(pool)
    ended = threading.Event()
    handshake.done = Interrupted(ended)  # type: ignore[assignment]
    threading.Thread(target=handshake.make, daemon=True).start()
    if made:
        pool.go.set()
        assert ended.wait(WAIT)
    with pytest.raises(KeyboardInterrupt):
        handshake.take(WAIT)
    pool.go.set()
    wait_until(lambda: pool.released == ["connection"], "the connection goes to the pool")


class CountingLink:
    """A link whose server answers every batch at once, and counts them."""

    def __init__(self) -> None:
        self.batches = 0

    def answering(self, call: object) -> bool:
        return True

    def run_many(self, calls: list[object], wait: float | None = None, **_: object) -> list[int]:
        self.batches += 1
        return [1] * len(calls)


class ReportingMember:
    """A member with counts to report when the test says so, and no lease to renew."""

    period = 60.0
    link: Any

    def __init__(self, link: CountingLink) -> None:
        self.link = link
        self.pending = 0

    def renewals(self) -> list[Any]:
        return []

    def reports(self) -> list[Any]:
        calls, self.pending = [object()] * self.pending, 0
        return calls

    def forked(self) -> None:
        pass


def test_reports_in_quick_succession_are_sent_by_one_thread(started: list[str]) -> None:
    """Under contention a member reports many times a second: its link's sending thread
    waits a moment for more work rather than a thread being started for each report."""
    renewer = Renewer()
    link = CountingLink()
    member = ReportingMember(link)
    renewer.add(member)
    for n in range(1, 31):
        member.pending = 1
        renewer.report(member)
        wait_until(lambda n=n: link.batches == n, "the report is sent")  # type: ignore[misc]
    assert started.count("keyedlock-redis-renewal-send") == 1


class PlainLockPool:
    """A pool as redis-py 5 and 6.0 make it: its lock is not reentrant."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.pid = os.getpid()
        self._available_connections = [ReadyConnection()]

    def get_connection(self, *args: object) -> object:
        with self._lock:
            return self._available_connections.pop()


class ReadyConnection:
    """An idle connection with nothing to read."""

    _sock = object()

    def can_read(self, timeout: float = 0) -> bool:
        return False


def test_a_pool_whose_lock_is_not_reentrant_hands_out_a_ready_connection() -> None:
    pool = PlainLockPool()
    ready = pool._available_connections[0]
    taken = start_thread(lambda: connection(pool, WAIT), "takes a connection")
    assert taken.result(WAIT) is ready


_FORK = multiprocessing.get_context("fork")


def _timed_acquire(lock: RedisKeyedLock, go: Connection) -> None:
    assert go.poll(WAIT)
    taken = lock.acquire("child", timeout=WAIT)
    lock.release("child")
    os._exit(0 if taken else 1)


def test_a_fork_child_makes_its_own_connections(redis_server: Server) -> None:
    """A child forked while a thread of its parent held the pool's lock; then a reply waits
    for the parent on a connection that was idle at the fork. The child's timed acquire
    neither waits for that lock (the parent's, in the child, until redis-py resets the
    pool) nor reads from the parent's connections: the parent gets its reply."""
    lock = RedisKeyedLock(f"{redis_server.url}?socket_timeout={WAIT}", prefix="fork:")
    with lock("warm-up"):
        pass
    pool = scope_of(lock).link._pool
    held, forked = threading.Event(), threading.Event()

    def holds_the_pools_lock() -> None:
        with pool._lock:
            held.set()
            forked.wait(WAIT)

    holder = start_thread(holds_the_pools_lock, "holds the pool's lock")
    assert held.wait(WAIT)
    go, tell = _FORK.Pipe(duplex=False)
    child = _FORK.Process(target=_timed_acquire, args=(lock, go), daemon=True)
    child.start()
    forked.set()
    holder.result(WAIT)
    conn = _get(pool)  # (idle at the fork: the child has it as idle)
    conn.send_command("PING")
    assert select.select([conn._sock], [], [], WAIT)[0], "no reply"
    tell.send(True)
    child.join(WAIT)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0, "the child's timed acquire did not take the key"
    assert conn.read_response() == b"PONG"
    pool.release(conn)


def test_a_chore_for_a_late_server_goes_as_soon_as_it_answers(redis_server: Server) -> None:
    """The server was late once (its probe answers at once): a chore for it goes a moment
    later, not with the next renewal round (here a minute away)."""
    renewer = Renewer()
    rounds = IdleMember()
    rounds.period = 60.0
    renewer.add(rounds)
    link = Link(redis_server.url, "test")
    pool = link._pool_of(b"chore-set")
    call = Call(
        Script("chore_sets", "redis.call('SET', KEYS[1], ARGV[1]) return 1"),
        (b"chore-set",),
        (b"done",),
    )
    client = redis.Redis.from_url(redis_server.url)
    late_servers.mark(pool)  # (its last reply came late)
    try:
        renewer.chore(link, call, retry_for=60.0)
        wait_until(lambda: client.get(b"chore-set") == b"done", "the chore reaches the server")
    finally:
        late_servers.answered(pool)
        client.delete(b"chore-set")
        client.close()


class DownSide:
    """An event loop's client of a cluster that is down (failing over)."""

    async def run(self, call: object) -> object:
        raise redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down")


@pytest.mark.parametrize("wait", [None, 1.0])
def test_a_cluster_that_is_down_is_unavailable_to_asyncio_callers(
    monkeypatch: pytest.MonkeyPatch, wait: float | None
) -> None:
    """CLUSTERDOWN (a ResponseError) is the server being unavailable, as for threads, with a
    deadline or without: not an error reply of the script."""
    link = Link("redis://127.0.0.1:1", "test")
    monkeypatch.setattr(LoopClients, "get", lambda self, loop: DownSide())
    call = Call(Script("noop", "return 1"), (b"k",), ())
    with pytest.raises(RedisUnavailable, match="CLUSTERDOWN"):
        asyncio.run(link.run_async(call, wait))


@pytest.mark.parametrize(
    ("reply", "redirection"),
    [
        (redis.exceptions.ResponseError("MOVED 3999 127.0.0.1:6381"), True),
        (redis.exceptions.ResponseError("ASK 3999 127.0.0.1:6381"), True),
        (redis.exceptions.ResponseError("MOVED 1 somewhere: a script's own words"), False),
        (redis.exceptions.ClusterDownError("MOVED 1 a:1"), False),
        ("MOVED 3999 127.0.0.1:6381", False),
    ],
)
def test_only_a_cluster_redirection_reads_as_one(reply: object, redirection: bool) -> None:
    assert redirected(reply) is redirection


@pytest.mark.usefixtures("no_thread_starts")
def test_with_no_thread_for_its_handshake_a_connection_of_its_own_is_bounded(
    redis_server: Server,
) -> None:
    """At interpreter exit no thread can start: a caller with a deadline makes a connection
    of its own, with timeouts of its wait, which the pool does not take back."""
    link = Link(redis_server.url, "test")
    pool = link._pool_of(b"k")
    conn = connection(pool, 0.5)
    try:
        assert conn.socket_timeout == 0.5
        conn.send_command("PING")
        assert conn.read_response() == b"PONG"
        give_back(pool, conn)
        assert conn not in pool._available_connections
        assert not conn._sock, "closed, not kept"
    finally:
        conn.disconnect()
