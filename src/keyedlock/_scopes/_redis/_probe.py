"""Servers that did not answer in time, and the PING that finds out when they answer again.

A reply that does not come within its caller's wait (or the socket timeout) leaves the
connection dropped, and the next command needs a new one, whose handshake (``HELLO``,
``CLIENT SETINFO``, ...) only the client's socket timeout bounds: on a stopped server, a
caller with a deadline would overstay it there. So until that server answers again, callers
with a deadline do not open connections to it: one thread per server sends a ``PING`` on a
connection of its own, and they wait for its answer within their own deadline. A server is
known by its address, whatever the client or pool that met it late (a lock and a
single-flight group each made from a URL have a pool each, to one server). The probe sends
nothing else, so a probe nobody waits for any more takes nothing on the server. An answer,
or a quick failure (refused, reset: the callers then learn it from their own call), ends the
late state; a probe that timed out is replaced by the next caller that still waits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Hashable
from time import monotonic
from typing import Any, Final

import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..._ki import internal
from ._failures import where
from ._loops import MARGIN

__all__ = ["LateServers", "late_servers", "server_of"]

#: The probe connection's own settings (see :meth:`LateServers.ping`): a server that answers
#: slowly, but within the wait of a renewal round (three MARGINs, for a lease of 9 s or more),
#: answers its probe too.
_PROBE_OPTIONS: Final = {
    "socket_timeout": 3 * MARGIN,
    "socket_connect_timeout": MARGIN,
    "retry": Retry(NoBackoff(), 0),
}


@internal
class _Probe:
    """One PING to a late server, from its own thread."""

    __slots__ = ("ended", "thread")

    def __init__(self, late: LateServers, server: Hashable, pool: Any) -> None:
        self.ended = threading.Event()
        # (What it needs of the pool, not the pool: a dropped client's pool goes.)
        options = dict(pool.connection_kwargs, **_PROBE_OPTIONS)
        self.thread = threading.Thread(
            target=late.ping,
            args=(server, pool.connection_class, options, self),
            name="keyedlock-redis-probe",
            daemon=True,
        )

    def running(self) -> bool:
        return not self.ended.is_set() and self.thread.is_alive()  # (dead: a fork child's)


def server_of(pool: Any) -> Hashable:
    """Who answers ``pool``'s calls: its server's address, or, for a pool that finds its
    server itself (Sentinel's: no address in its settings), the pool."""
    kwargs = pool.connection_kwargs
    if kwargs.get("host") or kwargs.get("port") or kwargs.get("path"):
        return where(kwargs)
    return ("pool", id(pool))  # (not the pool: a dropped client's pool goes)


@internal
class LateServers:
    """The servers that did not answer in time, by address, whichever link met them: what
    one client learns of a server holds for every other. One per process
    (:data:`late_servers`)."""

    __slots__ = ("_lock", "_news", "news", "servers")

    def __init__(self) -> None:
        #: Late server (see :func:`server_of`) -> its running probe (None: none yet). Empty
        #: on the hot path. (An entry stays until its server answers: one per server that
        #: went away.)
        self.servers: dict[Hashable, _Probe | None] = {}
        #: How many times a late server answered, or a probe ended (see :meth:`wait_news`).
        self.news = 0
        self._lock = threading.Lock()
        self._news = threading.Condition(self._lock)

    def late(self, pool: Any) -> bool:
        """Whether ``pool``'s server is late (cheap when none is)."""
        return bool(self.servers) and server_of(pool) in self.servers

    def mark(self, pool: Any) -> None:
        """A reply from ``pool``'s server did not come in time."""
        server = server_of(pool)
        with self._lock:
            self.servers.setdefault(server, None)

    def answered(self, pool: Any) -> None:
        """``pool``'s server answered: no longer late (its waiting callers go on)."""
        self._answered(server_of(pool))

    def _answered(self, server: Hashable) -> None:
        with self._lock:
            if server not in self.servers:
                return
            probe = self.servers.pop(server)
            self._told()
        if probe is not None:
            probe.ended.set()

    def _told(self) -> None:
        """(Under the lock.) Something happened that a :meth:`wait_news` waits for."""
        self.news += 1
        self._news.notify_all()

    def wait_news(self, news: int, deadline: float) -> None:
        """Wait until a late server answers, or a probe ends (the next one is then to be
        started), after :attr:`news` was ``news``; at most until ``deadline``."""
        with self._lock:
            while self.news == news:
                left = deadline - monotonic()
                if left <= 0:
                    return
                self._news.wait(left)

    def wait(self, pool: Any, deadline: float) -> bool:
        """Wait until ``pool``'s server answers a probe; False if it has not by ``deadline``.
        (RuntimeError if its probe's thread cannot start: at exit, or none left.)"""
        servers = self.servers
        server = server_of(pool)
        while server in servers:
            with self._lock:
                try:
                    probe = servers[server]
                except KeyError:
                    return True  # answered meanwhile
                if probe is None or not probe.running():
                    probe = _Probe(self, server, pool)
                    probe.thread.start()  # (if it cannot start, nothing is recorded)
                    servers[server] = probe
            left = deadline - monotonic()
            if left <= 0 or not probe.ended.wait(left):
                return False
        return True

    def ping(
        self, server: Hashable, connection_class: Any, options: dict[str, Any], probe: _Probe
    ) -> None:
        """The probe's thread: PING ``server`` on a connection of its own."""
        try:
            # Its own timeouts, no retries: a probe lost with its connection (a failover
            # behind a proxy) gives way to the next one soon.
            conn = connection_class(**options)
            try:
                conn.connect()
                conn.send_command("PING")
                conn.read_response()
            finally:
                conn.disconnect()
        except redis.exceptions.TimeoutError:
            pass  # still late: a caller that still waits sends the next probe
        except BaseException:  # refused, reset: its callers learn it from their own call
            self._answered(server)
        else:
            self._answered(server)
        finally:
            probe.ended.set()
            with self._lock:
                self._told()

    def forked(self) -> None:
        """In a fork child: no probe runs, and the lock may have been held at the fork."""
        self._lock = threading.Lock()
        self._news = threading.Condition(self._lock)
        self.servers = dict.fromkeys(list(self.servers))


#: The late servers of this process.
late_servers: Final = LateServers()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=late_servers.forked)
