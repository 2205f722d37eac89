"""RedisKeyedLock across real processes: exclusion, FIFO, tokens, crashes and stops.

Each worker process (``lock_worker.py``) runs callers in threads, asyncio tasks and trio
tasks, steered by the test; SIGKILL and SIGSTOP are real signals. Short leases let a test see
a lease run out; every wait is bounded.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from keyedlock import Owner
from keyedlock.redis import RedisKeyedLock

from ..support import run_python, wait_until
from .conftest import MakeLock
from .processes import WorkerProcess
from .servers import Server

#: A lease short enough to run out within a test (seconds).
SHORT_LEASE = 0.5


class Workers:
    """Four worker processes shared by the module's tests (each test uses agent names of its
    own); a worker a test killed is replaced when the next test asks for it."""

    def __init__(self, url: str) -> None:
        self.config = {"url": url, "lease": SHORT_LEASE}
        self.made: list[WorkerProcess] = []

    def __getitem__(self, n: int) -> WorkerProcess:
        while len(self.made) <= n:
            self.made.append(WorkerProcess(self.config, f"p{len(self.made)}"))
        if self.made[n].process.poll() is not None:  # killed by an earlier test
            self.made[n].close()
            self.made[n] = WorkerProcess(self.config, f"p{n}")
        return self.made[n]

    def close(self) -> None:
        for worker in self.made:
            worker.close()


@pytest.fixture(scope="module")
def workers(redis_server: Server) -> Iterator[Workers]:
    pool = Workers(redis_server.url)
    try:
        yield pool
    finally:
        pool.close()


def log_of(client: redis.Redis, log: str) -> list[tuple[str, int]]:
    entries: Any = client.lrange(log, 0, -1)
    pairs = [bytes(entry).decode().split() for entry in entries]
    return [(agent, int(token)) for agent, token in pairs]


def test_exclusion_across_processes_threads_and_tasks(
    workers: Workers, redis_client: redis.Redis
) -> None:
    rounds = 15
    agents = []
    for n, worker in enumerate(workers[n] for n in range(4)):
        for runtime in ("thread", "asyncio", "trio"):
            agent = f"p{n}-{runtime}"
            worker.send(
                "work", id=agent, key="k", runtime=runtime, rounds=rounds, counter="c", log="log"
            )
            agents.append((worker, agent))
    for worker, agent in agents:
        worker.expect("done", agent)
    total = rounds * len(agents)
    assert int(redis_client.get("c") or 0) == total  # no update lost between a read and a write
    log = log_of(redis_client, "log")
    assert len(log) == total
    tokens = [token for _, token in log]
    assert tokens == sorted(set(tokens))  # a new, larger token for every grant


def test_fifo_across_processes_with_threads_and_tasks(
    workers: Workers, make_lock: MakeLock
) -> None:
    """Callers take their places in Redis in arrival order and are served in that order: a
    process's first caller at once, its next one when its turn comes in the process (so no
    process keeps a key while others wait)."""
    observer = make_lock()
    observer.acquire("k")
    runtimes = ["thread", "asyncio", "trio", "thread"]
    procs = [workers[n] for n in range(4)]
    for n, (worker, runtime) in enumerate(zip(procs, runtimes, strict=True)):
        worker.send("hold", id=f"p{n}a", key="k", runtime=runtime)
        wait_until(lambda n=n: observer.waiters("k") == n + 1, f"p{n}a queues")  # type: ignore[misc]
    for n, worker in enumerate(procs):  # second callers: queued in their own process
        worker.send("hold", id=f"p{n}b", key="k", runtime=runtimes[(n + 1) % 4])
        worker.send("queued", id=f"p{n}q", key="k", count=1)
        worker.expect("queued", f"p{n}q")
    # Every caller counts: the first ones in Redis, the second ones behind them in their
    # processes (each process tells Redis how many wait behind its first one).
    wait_until(lambda: observer.waiters("k") == 8, "the second callers count")
    observer.release("k")
    order = [(procs[n], f"p{n}a") for n in range(4)] + [(procs[n], f"p{n}b") for n in range(4)]
    tokens = []
    for step, (worker, agent) in enumerate(order):
        tokens.append(worker.expect("held", agent)["token"])
        worker.send("release", id=agent)
        worker.expect("released", agent)
        if step < 4:  # its process's second caller takes its place in Redis now
            left = 8 - step - 2  # (not the released ones, nor the next holder)
            wait_until(lambda: observer.waiters("k") == left, f"{agent}'s next caller queues")  # noqa: B023
    assert tokens == sorted(set(tokens))


def test_statistics_name_a_holder_in_another_process(workers: Workers, make_lock: MakeLock) -> None:
    observer = make_lock()
    assert observer.statistics("k").holder is None
    worker = workers[1]
    worker.send("hold", id="s", key="k", runtime="asyncio")
    worker.expect("held", "s")
    stats = observer.statistics("k")
    assert stats.locked
    assert stats.holder == Owner("process", None, worker.pid, socket.gethostname())
    assert stats.held_for is None  # (recorded by the holder's process only)
    worker.send("release", id="s")
    worker.expect("released", "s")
    assert observer.statistics("k").holder is None


def test_a_killed_holder_frees_its_key_when_its_lease_runs_out(
    workers: Workers, make_lock: MakeLock
) -> None:
    observer = make_lock()
    first, second = workers[2], workers[3]
    first.send("hold", id="a", key="k", runtime="thread")
    token_a = first.expect("held", "a")["token"]
    second.send("hold", id="b", key="k", runtime="asyncio")
    wait_until(lambda: observer.waiters("k") == 1, "b waits in Redis")
    first.kill()  # SIGKILL: no release, no renewal
    token_b = second.expect("held", "b")["token"]
    assert token_b > token_a
    second.send("release", id="b")
    second.expect("released", "b")
    assert not observer.locked("k")


def test_a_killed_waiter_never_blocks_the_queue(workers: Workers, make_lock: MakeLock) -> None:
    holder = make_lock()
    holder.acquire("k")
    doomed, patient = workers[2], workers[3]
    doomed.send("hold", id="d", key="k", runtime="trio")
    wait_until(lambda: holder.waiters("k") == 1, "the doomed waiter queues")
    patient.send("hold", id="p", key="k", runtime="thread")
    wait_until(lambda: holder.waiters("k") == 2, "the patient waiter queues")
    doomed.kill()
    wait_until(lambda: holder.waiters("k") == 1, "the dead waiter's place expires")
    holder.release("k")
    patient.expect("held", "p")
    patient.send("release", id="p")
    patient.expect("released", "p")


def test_a_killed_waiter_handed_the_key_frees_it_when_its_lease_runs_out(
    workers: Workers, make_lock: MakeLock
) -> None:
    holder = make_lock()
    holder.acquire("k")
    doomed, patient = workers[2], workers[3]
    doomed.send("hold", id="d2", key="k", runtime="asyncio")
    wait_until(lambda: holder.waiters("k") == 1, "the doomed waiter queues")
    patient.send("hold", id="p2", key="k", runtime="thread")
    wait_until(lambda: holder.waiters("k") == 2, "the patient waiter queues")
    doomed.kill()
    holder.release("k")  # handed to the dead waiter's place, which has not expired yet
    patient.expect("held", "p2")
    patient.send("release", id="p2")
    patient.expect("released", "p2")


def test_a_holder_stopped_past_its_lease_loses_the_key_and_its_exit_raises(
    workers: Workers, make_lock: MakeLock
) -> None:
    observer = make_lock()
    stopped, waiting = workers[0], workers[1]
    stopped.send("hold", id="s", key="k", runtime="thread")
    token_s = stopped.expect("held", "s")["token"]
    waiting.send("hold", id="w", key="k", runtime="trio")
    wait_until(lambda: observer.waiters("k") == 1, "w waits in Redis")
    stopped.stop()  # SIGSTOP: it cannot renew
    try:
        token_w = waiting.expect("held", "w")["token"]
    finally:
        stopped.cont()
    assert token_w > token_s
    stopped.send("watch", id="s")
    stopped.expect("lost", "s")  # the renewal found the lease gone
    stopped.send("release", id="s")
    error = stopped.expect_error("s")
    assert error["type"] == "LeaseLost"
    assert observer.locked("k")  # the stopped holder's exit did not take w's grant
    waiting.send("release", id="w")
    waiting.expect("released", "w")
    assert not observer.locked("k")


@pytest.mark.slow
def test_exclusion_on_a_cluster_across_processes(redis_cluster: Any, cluster_client: Any) -> None:
    nodes = [(node.host, node.port) for node in redis_cluster.nodes]
    workers = [WorkerProcess({"nodes": nodes, "lease": SHORT_LEASE}, f"p{n}") for n in range(3)]
    try:
        for n, worker in enumerate(workers):
            for key in ("alpha", "beta"):
                worker.send(
                    "work",
                    id=f"p{n}-{key}",
                    key=key,
                    runtime=("thread", "asyncio", "trio")[n],
                    rounds=10,
                    counter="{" + key + "}c",
                    log="{" + key + "}log",
                )
        for n, worker in enumerate(workers):
            for key in ("alpha", "beta"):
                worker.expect("done", f"p{n}-{key}")
    finally:
        for worker in workers:
            worker.close()
    for key in ("alpha", "beta"):
        assert int(cluster_client.get("{" + key + "}c")) == 30
        log = log_of(cluster_client, "{" + key + "}log")
        tokens = [token for _, token in log]
        assert tokens == sorted(set(tokens))
    lock = RedisKeyedLock(cluster_client)
    assert not lock.locked("alpha")


# -- fork ---------------------------------------------------------------------------------

FORK_CHILD_RENEWS = """
import os, time
from keyedlock.redis import RedisKeyedLock, RedisSingleFlight

URL, LEASE = {url!r}, {lease!r}
# Made before the fork, as a preloaded web server's workers or a fork pool's get them.
lock = RedisKeyedLock(URL, prefix="fork:", lease=LEASE)
flight = RedisSingleFlight(URL, prefix="fork:", lease=LEASE)
with lock("warm-up"):  # the parent's renewal thread is running when it forks
    pass
started, finish = os.pipe(), os.pipe()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        def call():
            os.write(started[1], b"x")
            os.read(finish[0], 1)  # until the parent has looked, leases later
            return "child's"
        with lock("k"):
            assert flight.do_sync("call", call) == "child's"
        code = 0
    finally:
        os._exit(code)
os.read(started[0], 1)  # the child holds "k" and leads "call"
other_lock = RedisKeyedLock(URL, prefix="fork:", lease=LEASE)
other_flight = RedisSingleFlight(URL, prefix="fork:", lease=LEASE)
time.sleep(4 * LEASE)  # (time for four leases to run out, were they not renewed)
print("locked", other_lock.locked("k"), "in flight", other_flight.in_flight("call"))
os.write(finish[1], b"x")
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_a_fork_child_renews_its_leases(redis_server: Server) -> None:
    """Locks and single-flight groups made before a fork: the child's holds and calls are
    renewed (the parent's renewal thread did not fork with it), so they outlive their
    lease, and a call longer than it is not run a second time."""
    out = run_python(FORK_CHILD_RENEWS.format(url=redis_server.url, lease=SHORT_LEASE))
    assert out == "locked True in flight True\nchild 0\n"
