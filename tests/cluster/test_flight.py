"""RedisSingleFlight: one call per key across processes and hosts, on a real server.

Two group objects of one server act as two hosts would (each coalesces its own callers
first); worker processes show the same for real processes, including a leader that is
killed while its followers wait.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import trio

from keyedlock import Owner, Result
from keyedlock._scopes._redis import renewer
from keyedlock.redis import RedisSingleFlight

from ..support import WAIT, AsyncioThread, TrioThread, start_thread, wait_until
from .processes import WorkerProcess
from .servers import Server

MakeFlight = Callable[..., RedisSingleFlight]


@pytest.fixture
def make_flight(redis_server: Server, redis_client: redis.Redis) -> Iterator[MakeFlight]:
    made: list[RedisSingleFlight] = []

    def make(*, lease: float = WAIT, **options: Any) -> RedisSingleFlight:
        group = RedisSingleFlight(redis_server.url, lease=lease, **options)
        made.append(group)
        return group

    yield make
    for group in made:
        assert len(group) == 0, f"calls left in flight: {group!r}"
    assert renewer.settle(WAIT)
    assert redis_client.keys("*:flight:lead") == []


def waiting(group: RedisSingleFlight, key: str) -> int:
    """How many callers wait for the call of ``key``: this group's, and followers in Redis."""
    backend: Any = group._backend
    return int(backend.waiters(backend.map_key(key)))


class Gated:
    """A function that counts its calls, reports the first, and returns once opened."""

    def __init__(self, value: object = "value", error: Exception | None = None) -> None:
        self.value = value
        self.error = error
        self.calls = 0
        self.running = threading.Event()
        self.gate = threading.Event()

    def __call__(self) -> object:
        self.calls += 1
        self.running.set()
        assert self.gate.wait(WAIT)
        if self.error is not None:
            raise self.error
        return self.value


def test_one_call_is_shared_by_every_caller_of_every_host_and_runtime(
    make_flight: MakeFlight,
) -> None:
    here, there = make_flight(), make_flight()
    fn = Gated("v")
    leader = start_thread(lambda: here.do_sync_ex("k", fn), "leader")
    assert fn.running.wait(WAIT)
    aio, trio_run = AsyncioThread(), TrioThread()
    try:
        followers = [
            start_thread(lambda: there.do_sync_ex("k", fn), "thread there"),
            aio.submit(lambda: there.do_ex("k", fn), "asyncio there"),
            trio_run.submit(lambda: here.do_ex("k", fn), "trio here"),
        ]
        wait_until(lambda: waiting(here, "k") == 2, "two callers queue here and there")
        assert there.in_flight("k")
        fn.gate.set()
        assert leader.result() == Result("v", True)
        assert [f.result() for f in followers] == [Result("v", True)] * 3
    finally:
        aio.close()
        trio_run.close()
    assert fn.calls == 1
    assert not there.in_flight("k")


class Formatted(Exception):
    def __init__(self, user: str, code: int) -> None:
        super().__init__(f"user {user} failed with {code}")
        self.user = user
        self.code = code


def test_an_exception_reaches_every_host_as_a_copy(make_flight: MakeFlight) -> None:
    here, there = make_flight(), make_flight()
    fn = Gated(error=Formatted("ann", 7))
    leader = start_thread(lambda: here.do_sync("k", fn), "leader")
    assert fn.running.wait(WAIT)
    follower = start_thread(lambda: there.do_sync("k", fn), "follower")
    wait_until(lambda: waiting(there, "k") == 1, "the follower queues")
    fn.gate.set()
    with pytest.raises(Formatted) as at_leader:
        leader.result()
    with pytest.raises(Formatted) as at_follower:
        follower.result()
    assert at_follower.value is not at_leader.value
    assert at_follower.value.args == at_leader.value.args
    assert (at_follower.value.user, at_follower.value.code) == ("ann", 7)


def test_an_exception_reaches_every_host_with_its_chain(make_flight: MakeFlight) -> None:
    """__cause__ and __context__ (and notes) travel with the exception, rebuilt there."""
    here, there = make_flight(), make_flight()

    def fail() -> None:
        try:
            raise KeyError("inner")
        except KeyError:
            try:
                raise OSError(5, "io")
            except OSError as io:
                error = Formatted("bob", 3)
                error.add_note("while fetching")
                raise error from io

    fn = Gated()
    gate = fn.gate

    def call() -> object:
        fn()
        fail()
        return None

    leader = start_thread(lambda: here.do_sync("k", call), "leader")
    assert fn.running.wait(WAIT)
    follower = start_thread(lambda: there.do_sync("k", call), "follower")
    wait_until(lambda: waiting(there, "k") == 1, "the follower queues")
    gate.set()
    with pytest.raises(Formatted):
        leader.result()
    with pytest.raises(Formatted) as raised:
        follower.result()
    error = raised.value
    assert (error.user, error.code, error.__notes__) == ("bob", 3, ["while fetching"])
    assert isinstance(error.__cause__, OSError)
    assert error.__cause__.args == (5, "io")
    assert error.__suppress_context__
    assert error.__context__ is error.__cause__  # (sent once)
    assert isinstance(error.__context__.__context__, KeyError)
    assert fn.calls == 1


def test_a_result_that_cannot_be_shared_fails_every_caller(make_flight: MakeFlight) -> None:
    here, there = make_flight(), make_flight()
    fn = Gated(threading.Lock())
    leader = start_thread(lambda: here.do_sync("k", fn), "leader")
    assert fn.running.wait(WAIT)
    follower = start_thread(lambda: there.do_sync("k", fn), "follower")
    wait_until(lambda: waiting(there, "k") == 1, "the follower queues")
    fn.gate.set()
    for caller in (leader, follower):
        with pytest.raises(TypeError, match="cannot be shared"):
            caller.result()


@pytest.mark.parametrize("serializer", [pickle, json])
def test_a_group_made_from_a_url_pickles(make_flight: MakeFlight, serializer: Any) -> None:
    """As a RedisKeyedLock, for a pool of spawned processes: the copy reaches the same server,
    with the same options (a module serializer included)."""
    group = make_flight(prefix="p:", lease=3, serializer=serializer, ttl=5)
    copy = pickle.loads(pickle.dumps(group))
    assert (copy.prefix, copy.lease, copy.ttl) == ("p:", 3.0, 5)
    assert copy._backend.serializer is serializer
    assert group.do_sync("k", lambda: "first") == "first"
    assert copy.do_sync("k", lambda: "second") == "first"  # the value kept for every host
    copy.forget("k")


def test_a_group_made_from_a_client_does_not_pickle(
    make_flight: MakeFlight, redis_client: redis.Redis
) -> None:
    group = RedisSingleFlight(redis_client)
    with pytest.raises(TypeError, match="URL"):
        pickle.dumps(group)


def test_a_serializer_of_plain_data(make_flight: MakeFlight) -> None:
    here, there = make_flight(serializer=json), make_flight(serializer=json)
    fn = Gated({"a": [1, 2]})
    leader = start_thread(lambda: here.do_sync("k", fn), "leader")
    assert fn.running.wait(WAIT)
    follower = start_thread(lambda: there.do_sync("k", fn), "follower")
    wait_until(lambda: waiting(there, "k") == 1, "the follower queues")
    fn.gate.set()
    assert leader.result() == follower.result() == {"a": [1, 2]}


def test_a_bad_serializer_is_refused(redis_server: Server) -> None:
    with pytest.raises(TypeError, match="dumps"):
        RedisSingleFlight(redis_server.url, serializer=object())  # type: ignore[arg-type]


def test_a_kept_value_is_reused_by_every_host_until_forgotten(make_flight: MakeFlight) -> None:
    here, there = make_flight(ttl=WAIT), make_flight(ttl=WAIT)
    calls: list[str] = []

    def fn(value: str) -> str:
        calls.append(value)
        return value

    assert here.do_sync("k", fn, "first") == "first"
    assert there.do_sync("k", fn, "second") == "first"
    assert here.do_sync_ex("k", fn, "third") == Result("first", True)
    there.forget("k")
    assert here.do_sync("k", fn, "fourth") in ("fourth", "first")  # (here keeps its own copy)
    here.forget("k")
    assert there.do_sync("k", fn, "fifth") == "fifth"


def test_forget_starts_a_new_call_while_the_old_one_serves_its_followers(
    make_flight: MakeFlight,
) -> None:
    here, there = make_flight(), make_flight()
    old = Gated("old")
    leader = start_thread(lambda: here.do_sync("k", old), "old leader")
    assert old.running.wait(WAIT)
    follower = start_thread(lambda: there.do_sync("k", old), "old follower")
    wait_until(lambda: waiting(there, "k") == 1, "the follower queues")
    here.forget("k")
    assert here.do_sync("k", lambda: "new") == "new"  # a new call, run at once
    third = make_flight()
    assert third.do_sync("k", lambda: "newer") == "newer"  # and so in another process
    old.gate.set()
    assert leader.result() == follower.result() == "old"


def test_a_detached_call_serves_its_followers_for_longer_than_a_lease(
    make_flight: MakeFlight,
) -> None:
    """A follower's wait is bounded by the lease: when it runs out it asks again, and keeps
    following the detached call, neither taking it over nor following the new call."""
    lease = 0.3
    here, there, third = make_flight(lease=lease), make_flight(lease=lease), make_flight()
    old, new = Gated("old"), Gated("new")
    leader = start_thread(lambda: here.do_sync("k", old), "old leader")
    assert old.running.wait(WAIT)
    follower = start_thread(lambda: there.do_sync("k", lambda: "not run"), "old follower")
    wait_until(lambda: waiting(there, "k") == 1, "the follower queues")
    here.forget("k")
    newer = start_thread(lambda: third.do_sync("k", new), "new leader")
    assert new.running.wait(WAIT)
    threading.Event().wait(4 * lease)  # (time for the follower's waits to run out, twice)
    old.gate.set()
    assert leader.result() == follower.result() == "old"
    new.gate.set()
    assert newer.result() == "new"


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_a_cancelled_follower_leaves_the_call_at_once(
    make_flight: MakeFlight, runtime: str
) -> None:
    """The lease is long (3 x WAIT): the place goes because it is withdrawn, not by expiry."""
    here, there = make_flight(lease=3 * WAIT), make_flight(lease=3 * WAIT)
    call = Gated("v")
    leader = start_thread(lambda: here.do_sync("k", call), "leader")
    assert call.running.wait(WAIT)

    async def follow() -> object:
        return await there.do("k", lambda: "not run")

    driver = AsyncioThread() if runtime == "asyncio" else TrioThread()
    try:
        follower = driver.submit(follow, "follower")
        wait_until(lambda: waiting(here, "k") == 1, "the follower queues")
        follower.cancel()
        wait_until(lambda: waiting(here, "k") == 0, "the follower leaves")
        assert here.statistics("k").followers == 0
    finally:
        driver.close()
    call.gate.set()
    assert leader.result() == "v"


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_a_cancelled_leader_hands_the_call_to_a_follower_at_once(
    make_flight: MakeFlight, runtime: str
) -> None:
    """The lease is long (WAIT): the follower takes over because it is told, not by expiry."""
    here, there = make_flight(), make_flight()
    running = threading.Event()

    async def lead() -> object:
        async def fn() -> str:
            running.set()
            if runtime == "trio":
                await trio.sleep_forever()
            await asyncio.sleep(WAIT * 10)
            return "never"

        return await here.do("k", fn)

    driver = AsyncioThread() if runtime == "asyncio" else TrioThread()
    try:
        leader = driver.submit(lead, "leader")
        assert running.wait(WAIT)
        follower = start_thread(lambda: there.do_sync("k", lambda: "taken over"), "follower")
        wait_until(lambda: waiting(there, "k") == 1, "the follower queues")
        leader.cancel()
        assert follower.result() == "taken over"
    finally:
        driver.close()


def test_keys_are_typed(make_flight: MakeFlight) -> None:
    group = make_flight()
    assert group.do_sync("1", lambda: "s") == "s"
    with pytest.raises(TypeError, match="str, bytes or int"):
        group.do_sync(1.5, lambda: None)


def test_a_caller_joining_its_own_call_is_refused(make_flight: MakeFlight) -> None:
    group = make_flight()

    def inner() -> object:
        return group.do_sync("k", lambda: None)

    with pytest.raises(RuntimeError, match="wait for itself"):
        group.do_sync("k", inner)


# -- real processes ---------------------------------------------------------------------------


@pytest.fixture
def workers(redis_server: Server, redis_client: redis.Redis) -> Iterator[list[WorkerProcess]]:
    made = [WorkerProcess({"url": redis_server.url, "lease": 0.5}, f"host{n}") for n in range(3)]
    yield made
    for worker in made:
        worker.close()


def test_processes_share_one_call_and_its_exception(
    workers: list[WorkerProcess], make_flight: MakeFlight
) -> None:
    observer = make_flight()
    lead, first, second = workers
    lead.send("flight", id="L", key="k", runtime="thread", value="boom", block=True, fail=True)
    lead.expect("running", "L")
    first.send("flight", id="A", key="k", runtime="asyncio", value="not run")
    second.send("flight", id="T", key="k", runtime="trio", value="not run")
    wait_until(lambda: waiting(observer, "k") == 2, "both processes follow")
    lead.send("finish", id="L")
    for worker, agent in ((lead, "L"), (first, "A"), (second, "T")):
        error = worker.expect_error(agent)
        assert (error["type"], error["message"]) == ("ValueError", "boom")


def test_statistics_name_a_leader_in_another_process(
    workers: list[WorkerProcess], make_flight: MakeFlight
) -> None:
    observer = make_flight()
    lead = workers[0]
    lead.send("flight", id="S", key="k", runtime="thread", value="v", block=True)
    lead.expect("running", "S")
    stats = observer.statistics("k")
    assert stats.in_flight
    assert stats.leader == Owner("process", None, lead.pid, socket.gethostname())
    assert stats.running_for is None  # (recorded by the leader's process only)
    lead.send("finish", id="S")
    assert lead.expect("result", "S")["value"] == "v"
    assert observer.statistics("k").leader is None


def test_followers_add_up_by_runtime(make_flight: MakeFlight) -> None:
    """A follower here of a leader in another process counts by its runtime here, and as
    "process" there."""
    leader, here = make_flight(), make_flight()  # two processes, as far as Redis can tell
    started, finish = threading.Event(), threading.Event()

    def call() -> str:
        started.set()
        assert finish.wait(WAIT)
        return "v"

    leading = start_thread(lambda: leader.do_sync("k", call), "leader")
    assert started.wait(WAIT)
    following = start_thread(lambda: here.do_sync("k", lambda: "not run"), "follower")
    wait_until(lambda: waiting(here, "k") == 1, "the follower joins")
    stats = here.statistics("k")
    assert (stats.followers, dict(stats.followers_by_runtime)) == (1, {"thread": 1})
    seen = leader.statistics("k")
    assert (seen.followers, dict(seen.followers_by_runtime)) == (1, {"process": 1})
    finish.set()
    assert leading.result() == following.result() == "v"


def test_a_killed_leader_is_replaced_by_a_follower_after_its_lease(
    workers: list[WorkerProcess], make_flight: MakeFlight
) -> None:
    here = make_flight(lease=0.5)
    doomed, other, _ = workers
    doomed.send("flight", id="D", key="k", runtime="thread", value="lost", block=True)
    doomed.expect("running", "D")
    other.send("flight", id="O", key="k", runtime="trio", value="from other")
    calls: list[str] = []

    def mine() -> str:
        calls.append("here")
        return "from here"

    follower = start_thread(lambda: here.do_sync_ex("k", mine), "follower here")
    wait_until(lambda: waiting(here, "k") == 2, "both follow the doomed leader")
    doomed.kill()
    result_there = other.expect("result", "O")
    result_here = follower.result()
    # One of the two took over and ran its function; the other got its result.
    assert result_here.value == result_there["value"]
    assert result_here.value in ("from here", "from other")
    assert calls == (["here"] if result_here.value == "from here" else [])
