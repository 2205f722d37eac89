"""A connection of a pool, within a caller's deadline.

A pool hands out an idle connection at once; a new one (or one dropped earlier, or one its
server closed: the pool connects it again) first connects and shakes hands (``HELLO``,
``CLIENT SETINFO``, ...), which only the client's own timeouts bound: a minute, or never, on
a server that stopped or was cut off after accepting the connection. A caller with a
deadline (a renewal, a timed wait) must not overstay it there: :func:`connection` then makes
the connection from a thread of its own and waits for it until the deadline. Made later,
the connection goes to the pool as an idle one."""

from __future__ import annotations

import inspect
import os
import threading
from typing import Any, Final

import redis

from ._loops import Late

__all__ = ["connection", "give_back"]

# redis-py 5.0 needs a command name to get a connection; later versions deprecate it.
_get_params = inspect.signature(redis.ConnectionPool.get_connection).parameters
_NAMED: Final = (
    "command_name" in _get_params and _get_params["command_name"].default is inspect.Parameter.empty
)


def _get(pool: Any) -> Any:
    return pool.get_connection("_") if _NAMED else pool.get_connection()


def _idle_ready(pool: Any) -> bool:
    """(Under the pool's lock.) Whether ``pool`` hands out next an idle connection that needs
    no handshake: connected, with nothing to read (a connection its server closed reads as
    an end of file: the pool would connect it again)."""
    idle = pool._available_connections
    if not idle:
        return False
    conn = idle[-1]  # (the one it hands out next)
    if getattr(conn, "_sock", None) is None:
        return False
    try:
        return not conn.can_read(timeout=0)
    except Exception:  # (closed by its server, reset)
        return False


class _Handshake:
    """One connection being made from a thread of its own, for a caller that may give up."""

    __slots__ = ("_lock", "done", "pool", "result", "waited")

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.done = threading.Event()
        self._lock = threading.Lock()
        self.result: tuple[Any, BaseException | None] | None = None
        self.waited = True

    def make(self) -> None:
        conn = exc = None
        try:
            conn = _get(self.pool)
        except BaseException as error:
            exc = error
        with self._lock:
            if self.waited:
                self.result = (conn, exc)
                self.done.set()
                return
        if conn is not None:  # its caller gave up: an idle connection of the pool now
            self.pool.release(conn)

    def take(self, wait: float) -> Any:
        """The connection, once made within ``wait``; Late if it was not. (Interrupted
        while it waits, it leaves the connection, once made, to the pool.)"""
        try:
            self.done.wait(max(wait, 0.001))
        except BaseException:
            with self._lock:
                self.waited = False
                made = self.result
            if made is not None and made[0] is not None:
                self.pool.release(made[0])
            raise
        with self._lock:
            if self.result is None:
                self.waited = False
                raise Late(f"(a new connection's handshake) within {wait:.3g} s")
        conn, exc = self.result
        if exc is not None:
            raise exc
        return conn


#: The type of a reentrant lock (redis-py 8's pool lock is one; 5.x and 6.0 have a plain one).
_RLOCK: Final = type(threading.RLock())


def connection(pool: Any, wait: float | None) -> Any:
    """A connection of ``pool``; with ``wait``, Late if a new one is not made by then.
    (redis-py's own pools; a pool of another kind makes its connections in the caller's
    thread, as without ``wait``.)"""
    lock = getattr(pool, "_lock", None)
    if wait is None or lock is None or not hasattr(pool, "_available_connections"):
        return _get(pool)
    # In a fork child the pool's connections and lock are still the parent's until redis-py
    # resets it (in get_connection): none is looked into here, the child makes its own.
    ready = False
    if getattr(pool, "pid", None) == os.getpid():
        if type(lock) is _RLOCK:
            with lock:  # (the pool takes it again: what was found ready is what it hands out)
                if _idle_ready(pool):
                    return _get(pool)
        else:  # (a plain lock: only the check under it; in the instant between, another
            # thread may take that connection, and this one connect another, unbounded)
            with lock:
                ready = _idle_ready(pool)
            if ready:
                return _get(pool)
    handshake = _Handshake(pool)
    try:
        threading.Thread(target=handshake.make, name="keyedlock-redis-connect", daemon=True).start()
    except RuntimeError:  # no thread left, or interpreter exit: one bounded by its timeouts
        return _of_its_own(pool, wait)
    return handshake.take(wait)


def _of_its_own(pool: Any, wait: float) -> Any:
    """A connection made in this thread with timeouts of ``wait`` (a clean-up's last chance
    at interpreter exit, where no thread can start). It is not the pool's (its timeouts are
    not the client's): the pool does not take it back, and it closes when it goes."""
    options = dict(pool.connection_kwargs, socket_timeout=wait, socket_connect_timeout=wait)
    conn = pool.connection_class(**options)
    conn.connect()
    conn.keyedlock_own = True  # (see give_back)
    return conn


def give_back(pool: Any, conn: Any) -> None:
    """Return ``conn`` to ``pool``, or close it if it is one of its own (redis-py 5 would
    take it in, with timeouts that are not the client's)."""
    if getattr(conn, "keyedlock_own", False):
        conn.disconnect()
    else:
        pool.release(conn)
