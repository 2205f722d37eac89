"""Servers that did not answer in time, and the PING that finds out when they answer again.

A reply that does not come within its caller's wait (or the socket timeout) leaves the
connection dropped, and the next command needs a new one, whose handshake (``HELLO``,
``CLIENT SETINFO``, ...) only the client's socket timeout bounds: on a stopped server, a
caller with a deadline would overstay it there. So until that server answers again, callers
with a deadline do not open connections to it: one thread per server (per connection pool)
sends a ``PING`` on a connection of its own, and they wait for its answer within their own
deadline. The probe sends nothing else, so a probe nobody waits for any more takes nothing
on the server. An answer, or a quick failure (refused, reset: the callers then learn it from
their own call), ends the late state; a probe that timed out is replaced by the next caller
that still waits.
"""

from __future__ import annotations

import os
import threading
import weakref
from time import monotonic
from typing import Any, Final

import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..._ki import internal
from ._loops import MARGIN

__all__ = ["LateServers", "late_servers"]

#: The probe connection's own settings (see :meth:`LateServers.ping`).
_PROBE_OPTIONS: Final = {
    "socket_timeout": MARGIN,
    "socket_connect_timeout": MARGIN,
    "retry": Retry(NoBackoff(), 0),
}


@internal
class _Probe:
    """One PING to a late server, from its own thread."""

    __slots__ = ("ended", "thread")

    def __init__(self, late: LateServers, pool: Any) -> None:
        self.ended = threading.Event()
        self.thread = threading.Thread(
            target=late.ping, args=(pool, self), name="keyedlock-redis-probe", daemon=True
        )

    def running(self) -> bool:
        return not self.ended.is_set() and self.thread.is_alive()  # (dead: a fork child's)


@internal
class LateServers:
    """The connection pools whose server did not answer in time, whichever link met it:
    links may share a client (a lock and a single-flight group made from one
    ``redis.Redis``), and what one learns of a server holds for the other. One per process
    (:data:`late_servers`)."""

    __slots__ = ("_lock", "pools")

    def __init__(self) -> None:
        #: Late pool -> its running probe (None: none yet). Empty on the hot path. Held
        #: weakly: a pool whose client the program dropped goes, answer or not.
        self.pools: weakref.WeakKeyDictionary[Any, _Probe | None] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def mark(self, pool: Any) -> None:
        """A reply from ``pool``'s server did not come in time."""
        with self._lock:
            self.pools.setdefault(pool, None)

    def answered(self, pool: Any) -> None:
        """``pool``'s server answered: no longer late (its waiting callers go on)."""
        with self._lock:
            probe = self.pools.pop(pool, None)
        if probe is not None:
            probe.ended.set()

    def wait(self, pool: Any, deadline: float) -> bool:
        """Wait until ``pool``'s server answers a probe; False if it has not by ``deadline``."""
        pools = self.pools
        while pool in pools:
            with self._lock:
                try:
                    probe = pools[pool]
                except KeyError:
                    return True  # answered meanwhile
                if probe is None or not probe.running():
                    probe = _Probe(self, pool)
                    probe.thread.start()  # (if it cannot start, nothing is recorded)
                    pools[pool] = probe
            left = deadline - monotonic()
            if left <= 0 or not probe.ended.wait(left):
                return False
        return True

    def ping(self, pool: Any, probe: _Probe) -> None:
        """The probe's thread: PING ``pool``'s server on a connection of its own."""
        try:
            # Its own short timeouts, no retries: a probe lost with its connection (a
            # failover behind a proxy) gives way to the next one within MARGIN.
            options = dict(pool.connection_kwargs, **_PROBE_OPTIONS)
            conn = pool.connection_class(**options)
            try:
                conn.connect()
                conn.send_command("PING")
                conn.read_response()
            finally:
                conn.disconnect()
        except redis.exceptions.TimeoutError:
            pass  # still late: a caller that still waits sends the next probe
        except BaseException:  # refused, reset: its callers learn it from their own call
            self.answered(pool)
        else:
            self.answered(pool)
        finally:
            probe.ended.set()

    def forked(self) -> None:
        """In a fork child: no probe runs, and the lock may have been held at the fork."""
        self._lock = threading.Lock()
        self.pools = weakref.WeakKeyDictionary(dict.fromkeys(list(self.pools.keys())))


#: The late servers of this process.
late_servers: Final = LateServers()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=late_servers.forked)
