"""The test servers themselves: standalone and cluster servers answer, and faults are real."""

from __future__ import annotations

import builtins
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from redis.cluster import RedisCluster

from ..support import WAIT, run_python, wait_until
from .servers import CLUSTER_SLOTS, Cluster, Server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_importing_keyedlock_does_not_import_redis() -> None:
    run_python(
        """
        import sys
        import keyedlock
        from keyedlock import KeyedLock, LeaseLost, flight

        with KeyedLock()("k"):
            pass
        flight.do_sync("k", lambda: 1)
        assert "redis" not in sys.modules, "keyedlock imported redis"
        import keyedlock.redis
        assert "redis" in sys.modules
        assert keyedlock.redis.LeaseLost is LeaseLost
        """
    )


def test_standalone_server_answers_on_loopback_without_persistence(
    redis_server: Server, redis_client: redis.Redis
) -> None:
    assert redis_client.ping()
    assert redis_server.host == "127.0.0.1"
    assert redis_client.config_get("bind")["bind"] == "127.0.0.1"
    assert redis_client.config_get("save")["save"] == ""
    assert redis_client.config_get("appendonly")["appendonly"] == "no"


def test_cluster_slots_cover_every_slot_across_three_primaries(
    redis_cluster: Cluster, cluster_client: RedisCluster
) -> None:
    assert cluster_client.ping()
    slots: dict[tuple[int, int], dict[str, Any]] = cast(Any, cluster_client.cluster_slots())
    covered: set[int] = set()
    primaries = set()
    for (first, last), node in slots.items():
        served = set(range(first, last + 1))
        assert not covered & served, "a slot is served twice"
        covered |= served
        primaries.add(node["primary"][1])
    assert covered == set(range(CLUSTER_SLOTS))
    assert primaries == {node.port for node in redis_cluster.nodes}


def test_cluster_keys_spread_over_every_node(
    redis_cluster: Cluster, cluster_client: RedisCluster
) -> None:
    for n in range(30):
        cluster_client.set(f"key-{n}", n)
    assert [int(cluster_client.get(f"key-{n}") or -1) for n in range(30)] == list(range(30))
    for node in redis_cluster.nodes:
        with node.client() as client:
            assert client.dbsize() > 0, f"no key on {node!r}"


def test_restart_keeps_the_port_and_loses_the_data(fresh_server: Server) -> None:
    port, pid = fresh_server.port, fresh_server.pid
    assert pid is not None
    with fresh_server.client() as client:
        client.set("k", "v")
        fresh_server.restart()
        assert fresh_server.port == port
        assert fresh_server.pid not in (None, pid)
        assert not _alive(pid)
        assert client.get("k") is None  # the client reconnects to the new process


def test_a_killed_server_refuses_connections_until_restarted(fresh_server: Server) -> None:
    with fresh_server.client() as client:
        assert client.ping()
        fresh_server.kill()
        assert not fresh_server.running
        with pytest.raises(redis.ConnectionError) as caught:
            client.ping()
        # redis-py's ConnectionError is not the builtin one: catch it by its own name.
        assert not isinstance(caught.value, builtins.ConnectionError)
        fresh_server.start()
        assert client.ping()


def test_a_paused_server_times_out_and_answers_once_resumed(fresh_server: Server) -> None:
    with fresh_server.client(socket_timeout=0.2) as client:
        assert client.ping()
        with fresh_server.paused(), pytest.raises(redis.TimeoutError) as caught:
            client.ping()
        assert not isinstance(caught.value, builtins.TimeoutError)
        assert client.ping()


def test_stop_ends_and_reaps_even_a_paused_server(server_binary: str) -> None:
    server = Server(server_binary)
    try:
        server.start()
        pid = server.pid
        assert pid is not None
        server.pause()
        server.stop()
        assert not server.running
        assert server.pid is None
        assert not _alive(pid)
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped
    finally:
        server.close()
    assert not server.dir.exists()


def _gone(pid: int) -> bool:
    """True once ``pid`` has ended (a zombie that its new parent has not reaped counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_server_ends_with_the_test_process_that_started_it(
    server_binary: str, signum: signal.Signals
) -> None:
    """A test run ended by a signal (no exit handler runs) leaves no server running."""
    root = Path(__file__).resolve().parents[2]
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                sys.path.insert(0, {str(root)!r})
                from tests.cluster.servers import Server
                server = Server({server_binary!r})
                server.start()
                print(server.pid, server.dir, flush=True)
                time.sleep(3600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    directory = ""
    try:
        assert starter.stdout is not None
        pid_text, directory = starter.stdout.readline().split()  # (bounded by the test's timeout)
        pid = int(pid_text)
        assert not _gone(pid)
        starter.send_signal(signum)
        assert starter.wait(WAIT) == -signum
        wait_until(lambda: _gone(pid), "the server ends with the process that started it")
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(WAIT)
        if starter.stdout is not None:
            starter.stdout.close()
        if directory:
            shutil.rmtree(directory, ignore_errors=True)
