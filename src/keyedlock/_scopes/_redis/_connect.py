"""A connection of a pool, within a caller's deadline.

A pool hands out an idle connection at once; a new one (or one dropped earlier) first
connects and shakes hands (``HELLO``, ``CLIENT SETINFO``, ...), which only the client's own
timeouts bound: a minute, or never, on a server that stopped or was cut off after accepting
the connection. A caller with a deadline (a renewal, a timed wait) must not overstay it
there: :func:`connection` then makes the connection from a thread of its own and waits for
it until the deadline. Made later, the connection goes to the pool as an idle one.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any, Final

import redis

from ._loops import Late

__all__ = ["connection"]

# redis-py 5.0 needs a command name to get a connection; later versions deprecate it.
_get_params = inspect.signature(redis.ConnectionPool.get_connection).parameters
_NAMED: Final = (
    "command_name" in _get_params and _get_params["command_name"].default is inspect.Parameter.empty
)


def _get(pool: Any) -> Any:
    return pool.get_connection("_") if _NAMED else pool.get_connection()


def _ready(pool: Any) -> bool:
    """Whether ``pool`` would hand out a connected connection (no handshake). A pool of
    another kind than redis-py's own is taken as ready: its connections are made in the
    caller's thread, as before."""
    idle = getattr(pool, "_available_connections", None)
    if not isinstance(idle, list):
        return True
    try:
        return getattr(idle[-1], "_sock", None) is not None  # (the one it hands out next)
    except IndexError:
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
        """The connection, once made within ``wait``; Late if it was not."""
        self.done.wait(max(wait, 0.001))
        with self._lock:
            if self.result is None:
                self.waited = False
                raise Late(f"(a new connection's handshake) within {wait:.3g} s")
        conn, exc = self.result
        if exc is not None:
            raise exc
        return conn


def connection(pool: Any, wait: float | None) -> Any:
    """A connection of ``pool``; with ``wait``, Late if a new one is not made by then."""
    if wait is None or _ready(pool):
        return _get(pool)
    handshake = _Handshake(pool)
    try:
        threading.Thread(target=handshake.make, name="keyedlock-redis-connect", daemon=True).start()
    except RuntimeError:  # (no thread left, or interpreter exit: from this one, then)
        return _get(pool)
    return handshake.take(wait)
