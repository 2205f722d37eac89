"""A stopped server and the renewal of the keys held on the others, whatever the clients.

Each lock here has a client of its own (its own connection pool) of the server that stops,
as locks and single-flight groups made from URLs, or separate ``RedisCluster`` clients, do:
what one learns of a late server holds for all (a server is known by its address), each
lock's renewals go from a thread of their own, and a late server's are sent as soon as it
answers its probe. See also test_faults.py, whose ``split`` locks share one pool.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from keyedlock import LeaseLost
from keyedlock._scopes._redis import renewer
from keyedlock._scopes._redis._link import Link
from keyedlock._scopes._redis._lua import Call, Script
from keyedlock._scopes._redis._probe import late_servers
from keyedlock._scopes._redis._sending import renew
from keyedlock.redis import RedisKeyedLock

from ..support import WAIT, scope_of, wait_until
from .conftest import LEASE
from .holds import held
from .servers import Cluster, Server


def test_clients_of_their_own_of_a_stopped_server_cost_the_others_one_wait(
    fresh_server: Server, redis_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two locks, each with a connection pool of its own to the server of keys ``x-*``, hold
    a key there and one on the healthy server: once one lock met the stopped server late,
    the other's round does not wait for it again before renewing its healthy key."""
    pools: dict[Link, Any] = {}
    pool_of = Link._pool_of

    def routed(self: Link, key: bytes) -> Any:
        if b"x-" in key:
            if self not in pools:
                url = f"{fresh_server.url}?socket_timeout=60"
                pools[self] = redis.Redis.from_url(url).connection_pool
            return pools[self]
        return pool_of(self, key)

    monkeypatch.setattr(Link, "_pool_of", routed)
    locks = [RedisKeyedLock(redis_server.url, prefix=f"sep-{n}:", lease=LEASE) for n in range(2)]
    stopped = [lock("x-1") for lock in locks]
    healthy = [lock("y-1") for lock in locks]
    for ctx in stopped + healthy:
        ctx.__enter__()
    try:
        with fresh_server.paused():
            time.sleep(3 * LEASE)
        assert [ctx.lost for ctx in healthy] == [False, False]
    finally:
        for ctx in healthy + stopped:
            with contextlib.suppress(LeaseLost, ConnectionError):
                ctx.__exit__(None, None, None)
        assert renewer.settle(WAIT)
        for pool in pools.values():
            pool.disconnect()


def test_a_stopped_server_costs_a_lease_shorter_than_its_wait_on_another_nothing(
    fresh_server: Server, redis_server: Server
) -> None:
    """Leases shorter than the wait a server's replies get (a second): a key held on a
    server that stops, one on a healthy server. The healthy server's renewals go out on
    time, from a thread of their own, however long the stopped one is waited for."""
    lease = 0.6
    on_stopped = RedisKeyedLock(f"{fresh_server.url}?socket_timeout=60", prefix="s:", lease=lease)
    on_healthy = RedisKeyedLock(redis_server.url, prefix="h:", lease=lease)
    healthy = on_healthy("y")
    with held([on_stopped("x")], [healthy]), fresh_server.paused():
        time.sleep(6 * lease)  # (long enough to lose the lease if renewals were held up)
        assert not healthy.lost


def test_cluster_clients_of_their_own_keep_the_leases_on_a_healthy_node(
    redis_cluster: Cluster,
) -> None:
    """The same on a Redis Cluster: two RedisCluster clients (one lock each) each hold a key
    on node 0 and one on another node; node 0 stops (its node timeout raised, so the
    cluster stays up). The keys on the other node keep their leases."""
    admins = [node.client() for node in redis_cluster.nodes]
    old = [
        str(admin.config_get("cluster-node-timeout")["cluster-node-timeout"]) for admin in admins
    ]
    for admin in admins:
        admin.config_set("cluster-node-timeout", 60000)
    clients = [redis_cluster.client(socket_timeout=60) for _ in range(2)]
    try:
        locks = [RedisKeyedLock(c, prefix=f"cl-{n}:", lease=LEASE) for n, c in enumerate(clients)]
        any_client: Any = clients[0]
        stopped_node = redis_cluster.nodes[0]
        stopped_name = f"{stopped_node.host}:{stopped_node.port}"

        def key_on(on_stopped: bool, prefix: str) -> str:
            for n in range(1000):
                name = any_client.get_node_from_key(f"{prefix}{{s:k{n}}}:owner").name
                if (name == stopped_name) == on_stopped:
                    return f"k{n}"
            raise AssertionError

        stopped = [lock(key_on(True, lock.prefix)) for lock in locks]
        healthy = [lock(key_on(False, lock.prefix)) for lock in locks]
        for ctx in stopped + healthy:
            ctx.__enter__()
        with stopped_node.paused():
            time.sleep(1.5 * LEASE)
            lost = [ctx.lost for ctx in healthy]
        for ctx in healthy + stopped:
            with contextlib.suppress(LeaseLost, ConnectionError):
                ctx.__exit__(None, None, None)
        assert renewer.settle(WAIT)
        assert lost == [False, False]
    finally:
        for admin, value in zip(admins, old, strict=True):
            admin.config_set("cluster-node-timeout", value)
            admin.close()
        for c in clients:
            c.close()
        redis_cluster.wait_ok()


def test_a_server_late_once_is_renewed_while_another_stays_stopped(
    fresh_server: Server, redis_server: Server
) -> None:
    """Server A stays stopped; healthy server B was late once (one reply later than its
    wait): the next rounds send B's renewals as soon as B answers its probe, whatever A
    does meanwhile, and B's keys keep their leases."""
    lock_a = RedisKeyedLock(f"{fresh_server.url}?socket_timeout=60", prefix="a:", lease=LEASE)
    lock_b = RedisKeyedLock(redis_server.url, prefix="b:", lease=LEASE)
    a_ctx = lock_a("x")
    a_ctx.__enter__()
    b_ctxs = [lock_b(f"y-{n}") for n in range(3)]
    for ctx in b_ctxs:
        ctx.__enter__()
    try:
        with fresh_server.paused():
            wait_until(lambda: late_servers.late(scope_of(lock_a).link._pool), "A is late")
            late_servers.mark(scope_of(lock_b).link._pool)  # B's reply came late once
            time.sleep(3 * LEASE)  # (long enough to lose B's leases if it were not renewed)
            assert [ctx.lost for ctx in b_ctxs] == [False, False, False]
    finally:
        for ctx in [*b_ctxs, a_ctx]:
            with contextlib.suppress(LeaseLost, ConnectionError):
                ctx.__exit__(None, None, None)
        assert renewer.settle(WAIT)


def test_a_late_server_back_after_its_probe_timed_out_is_renewed_within_the_wait(
    fresh_server: Server,
) -> None:
    """A round's wait is longer than a probe's (a 15 s lease: 5 s): the probe started at
    the round's start times out while the server is still stopped; the next one, started
    at once, finds it back, and the renewal goes within the same wait."""
    link = Link(f"{fresh_server.url}?socket_timeout=60", "test")
    call = Call(Script("late_renewal", "return 1"), (b"late-renewal",), ())
    link.run(call)  # (the script loaded, a connection made)
    replies: list[Any] = []

    class Member:
        period = 5.0
        link: Link

        def renewals(self) -> list[Any]:
            return [(call, replies.append)]

        def forked(self) -> None:
            pass

    member = Member()
    member.link = link
    fresh_server.pause()
    try:
        late_servers.mark(link._pool)  # (a reply came late)
        back = threading.Timer(3.5, fresh_server.resume)  # (after the first probe timed out)
        back.start()
        renew(link, member.renewals(), member.period)
        back.join()
    finally:
        if fresh_server.running:
            fresh_server.resume()
    assert replies == [1]


def test_pools_that_find_their_server_themselves_are_not_one_server() -> None:
    """Sentinel's pools have no address in their settings (they ask the sentinels): one
    late master does not make every other service late."""

    class Sentinels:
        pass

    a = SentinelConnectionPool("service-a", Sentinels())  # type: ignore[no-untyped-call]
    b = SentinelConnectionPool("service-b", Sentinels())  # type: ignore[no-untyped-call]
    late_servers.mark(a)
    try:
        assert late_servers.late(a)
        assert not late_servers.late(b)
    finally:
        late_servers.answered(a)
