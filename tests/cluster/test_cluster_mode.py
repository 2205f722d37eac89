"""RedisKeyedLock and RedisSingleFlight on a Redis Cluster of three primaries.

Every structure of a key shares its hash slot, so each script runs on the key's node; keys
of different slots live on different nodes, and the renewal thread sends one batch per node.
Threads use the cluster client given; asyncio tasks an asyncio cluster client made from its
settings; trio tasks the given client in worker threads.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest
import trio
from redis.cluster import RedisCluster
from redis.crc import key_slot

from keyedlock._scopes._redis import renewer
from keyedlock.redis import RedisKeyedLock, RedisSingleFlight

from ..support import WAIT, start_thread, wait_until

#: Keys whose slots are served by different nodes of a 3-primary cluster.
KEYS = [f"key-{n}" for n in range(12)]


@pytest.fixture
def locks(cluster_client: RedisCluster) -> Iterator[list[RedisKeyedLock]]:
    """Two locks of the cluster (two processes, as far as Redis can tell), checked clean."""
    made = [RedisKeyedLock(cluster_client, lease=1.0) for _ in range(2)]
    yield made
    for lock in made:
        assert len(lock) == 0
    assert renewer.settle(WAIT)
    left: Any = cluster_client.keys("*:owner", target_nodes=RedisCluster.PRIMARIES)
    assert left == []


def test_keys_spread_over_every_node(cluster_client: RedisCluster) -> None:
    client: Any = cluster_client
    nodes = {client.get_node_from_key(f"keyedlock:{{s:{key}}}:owner").name for key in KEYS}
    assert len(nodes) == 3
    assert len({key_slot(f"{{s:{key}}}".encode()) for key in KEYS}) == len(KEYS)


def test_hand_offs_between_processes_on_every_node(locks: list[RedisKeyedLock]) -> None:
    a, b = locks
    for key in KEYS:
        a.acquire(key)
    waiters = [start_thread(partial(b.acquire, key), key) for key in KEYS]
    wait_until(lambda: all(a.waiters(key) == 1 for key in KEYS), "b waits on every key")
    tokens = {}
    for key in KEYS:
        with pytest.raises(RuntimeError):
            b.release(key)  # (b is handed it here, but waits in Redis: not held yet)
        a.release(key)
    for waiter in waiters:
        assert waiter.result()
    for key in KEYS:
        assert b.locked(key)
        b.release(key)
        with a(key) as held:
            tokens[key] = held.token
    assert all(token > 0 for token in tokens.values())


def test_renewal_keeps_keys_of_every_node(
    locks: list[RedisKeyedLock], cluster_client: RedisCluster
) -> None:
    a = RedisKeyedLock(cluster_client, lease=0.3)
    b = locks[0]
    for key in KEYS:
        a.acquire(key)
    time.sleep(1.0)  # three leases: only the renewal keeps them
    assert not any(b.acquire(key, blocking=False) for key in KEYS)
    for key in KEYS:
        a.release(key)


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_tasks_wait_in_a_cluster(locks: list[RedisKeyedLock], runtime: str) -> None:
    a, b = locks
    for key in KEYS[:3]:
        a.acquire(key)

    async def wait_all() -> list[int]:
        tokens = []
        for key in KEYS[:3]:
            async with b(key, timeout=WAIT) as held:
                tokens.append(held.token)
        return tokens

    async def main() -> list[int]:
        if runtime == "asyncio":
            task = asyncio.create_task(wait_all())
            await asyncio.sleep(0)
            return await task
        return await wait_all()

    releaser = start_thread(lambda: release_when_waited(a, KEYS[:3]), "releaser")
    tokens = asyncio.run(main()) if runtime == "asyncio" else trio.run(main)
    releaser.result()
    assert len(tokens) == 3
    assert all(token > 0 for token in tokens)


def release_when_waited(lock: RedisKeyedLock, keys: list[str]) -> None:
    for key in keys:
        wait_until(partial(has_a_waiter, lock, key), f"{key} has a waiter")
        lock.release(key)


def has_a_waiter(lock: RedisKeyedLock, key: str) -> bool:
    return lock.waiters(key) == 1


def test_single_flight_across_processes_on_a_cluster(cluster_client: RedisCluster) -> None:
    here, there = (RedisSingleFlight(cluster_client, lease=1.0) for _ in range(2))
    for key in KEYS[:3]:
        share_one_call(here, there, key)


def share_one_call(here: RedisSingleFlight, there: RedisSingleFlight, key: str) -> None:
    calls: list[str] = []
    gate = threading.Event()

    def fn(name: str) -> str:
        calls.append(name)
        assert gate.wait(WAIT)
        return f"{name} ran"

    leader = start_thread(lambda: here.do_sync(key, fn, "leader"), "leader")
    wait_until(lambda: calls == ["leader"], "the leader runs")
    follower = start_thread(lambda: there.do_sync(key, fn, "follower"), "follower")
    backend: Any = there._backend
    local = backend.map_key(key)
    wait_until(lambda: backend.waiters(local) == 1, "the follower joins")
    gate.set()
    assert leader.result() == follower.result() == "leader ran"
    assert calls == ["leader"]


@pytest.mark.parametrize("runtime", ["thread", "asyncio"])
def test_a_url_of_a_cluster_node_says_to_pass_a_cluster_client(
    redis_cluster: Any, cluster_client: RedisCluster, runtime: str
) -> None:
    node = redis_cluster.nodes[0]
    client: Any = cluster_client
    elsewhere = next(  # a key that another node serves: this one answers MOVED
        key
        for key in KEYS
        if client.get_node_from_key(f"keyedlock:{{s:{key}}}:owner").port != node.port
    )
    lock = RedisKeyedLock(f"redis://{node.host}:{node.port}", lease=1.0)
    if runtime == "thread":
        attempt = partial(lock.acquire, elsewhere, timeout=WAIT)
    else:
        attempt = partial(asyncio.run, lock.acquire_async(elsewhere, timeout=WAIT))
    with pytest.raises(ValueError, match=r"is a node of a Redis Cluster .* redis\.RedisCluster"):
        attempt()
    assert len(lock) == 0
