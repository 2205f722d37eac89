"""asyncio callers' connections: redis-py's asyncio client, one per event loop.

A connection belongs to the loop that opened it, so each loop that uses a scope gets a client
of its own, made from the same connection settings as the scope's sync client (host, port,
database, credentials, TLS and timeouts; never the sync client's own objects) and with no
retries (a retried release would look like a lost lease). It is closed with its loop: an
asynchronous generator registered with the loop is closed by the loop's
``shutdown_asyncgens()`` (which :func:`asyncio.run`, :class:`asyncio.Runner` and anyio call
before closing it), and closing it closes the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncGenerator, Awaitable, Callable
from functools import partial
from time import monotonic
from typing import Any, Final

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster

from ..._ki import internal
from ._lua import Call

__all__ = [
    "MARGIN",
    "NO_CAP",
    "POP_SLACK",
    "AsyncSide",
    "Late",
    "LoopClients",
    "pop_block",
    "reply_wait",
]

#: How much longer than a blocking pop's own timeout its reply may take before the server is
#: taken for unresponsive (seconds).
MARGIN: Final = 1.0

#: A round trip's wait longer than this is no bound (a huge timeout): the client's own.
_UNBOUNDED: Final = 1e6


def reply_wait(deadline: float | None) -> float | None:
    """How long a round trip may wait for its reply: until ``deadline``, plus MARGIN
    (None: the client's own socket timeout)."""
    if deadline is None:
        return None
    wait = deadline - monotonic() + MARGIN
    return None if wait > _UNBOUNDED else wait


#: How much shorter than the socket timeout a blocking pop's own timeout is, at least: the
#: server answers a pop that timed out at its next clock tick (100 ms by default), then the
#: reply travels back. (A fifth of the socket timeout, up to MARGIN, when that is more: a
#: server that stalls a moment near the end of a pop is no read timeout.)
POP_SLACK: Final = 0.25


def pop_block(block: float, read_timeout: float | None) -> float:
    """How long a blocking pop may block: ``block``, cut short so that the server's reply
    to a pop that timed out comes within the client's read timeout."""
    if read_timeout is not None:
        slack = max(POP_SLACK, min(MARGIN, read_timeout / 5))
        block = min(block, read_timeout - slack)
    return max(0.001, block)


class Late(Exception):
    """No reply within the time the caller gave the server (see ``Link``'s ``NoAnswer``)."""


#: The connection settings copied from the sync client: what makes it reach the same server
#: as the same user, nothing that is an object of the sync client.
_SETTINGS: Final = frozenset(
    {
        "host",
        "port",
        "path",
        "db",
        "username",
        "password",
        "credential_provider",
        "client_name",
        "socket_timeout",
        "socket_connect_timeout",
        "socket_keepalive",
        "socket_keepalive_options",
        "health_check_interval",
        "ssl_keyfile",
        "ssl_certfile",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_check_hostname",
        "ssl_min_version",
        "ssl_ciphers",
    }
)


def _accepted(*functions: Callable[..., Any]) -> set[str]:
    names: set[str] = set()
    for function in functions:
        names.update(inspect.signature(function).parameters)
    return names


def _settings(kwargs: dict[str, Any], accepted: set[str]) -> dict[str, Any]:
    return {name: value for name, value in kwargs.items() if name in _SETTINGS & accepted}


def async_client_for(sync: redis.Redis | RedisCluster, url: str | None) -> Any:
    """A new asyncio client reaching the same server (or cluster) as ``sync``."""
    no_retry = Retry(NoBackoff(), 0)
    if url is not None:
        return redis.asyncio.Redis.from_url(url, **url_options(no_retry))
    if isinstance(sync, RedisCluster):
        kwargs = sync.nodes_manager.connection_kwargs
        accepted = _accepted(redis.asyncio.RedisCluster.__init__)
        nodes = [
            redis.asyncio.cluster.ClusterNode(node.host, node.port)
            for node in sync.get_primaries()  # type: ignore[no-untyped-call]
        ]
        return redis.asyncio.RedisCluster(
            startup_nodes=nodes, retry=no_retry, **_settings(kwargs, accepted)
        )
    pool = sync.connection_pool
    connection_class: Any = redis.asyncio.connection.Connection
    for cls in type.mro(pool.connection_class):
        found = getattr(redis.asyncio.connection, cls.__name__, None)
        if isinstance(found, type) and cls.__module__ == "redis.connection":
            connection_class = found
            break
    accepted = _accepted(
        connection_class.__init__, redis.asyncio.connection.AbstractConnection.__init__
    )
    async_pool = redis.asyncio.ConnectionPool(
        connection_class=connection_class,
        retry=no_retry,
        max_connections=NO_CAP,
        **_settings(pool.connection_kwargs, accepted),
    )
    client = redis.asyncio.Redis(connection_pool=async_pool)
    # The pool is the client's own: closing the client closes it, and its connections
    # (redis-py leaves a pool given to a client open, as the caller's).
    client.auto_close_connection_pool = True
    return client


#: ``max_connections`` of the pools the scope makes: no cap (redis-py 8 caps a pool at 100
#: by default). Each key a process waits for blocks a connection until it is woken: a cap
#: would make the waiters beyond it fail, and starve the renewal of the keys it holds.
NO_CAP: Final = 2**31


def url_options(retry: object) -> dict[str, Any]:
    """Options of a client made from a URL (the URL's own query options win)."""
    return {
        "socket_timeout": 5.0,
        "socket_connect_timeout": 5.0,
        "retry": retry,
        "max_connections": NO_CAP,
    }


@internal
class AsyncSide:
    """One event loop's client, and the generator that closes it with the loop."""

    __slots__ = ("client", "closer", "read_timeout")

    def __init__(self, client: Any, closer: AsyncGenerator[None, None]) -> None:
        self.client = client
        self.closer = closer
        pool = getattr(client, "connection_pool", None)
        kwargs = pool.connection_kwargs if pool is not None else client.get_connection_kwargs()
        self.read_timeout: float | None = kwargs.get("socket_timeout")

    async def execute(self, *args: object) -> Any:
        """One command."""
        return await _delivering_cancellation(self.client.execute_command(*args))

    async def run(self, call: Call) -> object:
        """Run one script call (loading the script on ``NOSCRIPT``)."""
        args = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        try:
            return await self.execute(*args)
        except redis.exceptions.NoScriptError:
            await _delivering_cancellation(self.client.script_load(call.script.source))
            return await self.execute(*args)

    async def command(self, *args: object) -> object:
        return await self.execute(*args)

    async def pop(self, key: bytes, block: float) -> bytes | None:
        """``BLPOP key`` for at most ``block`` seconds (less if the client's read timeout is
        shorter: the caller asks again); None if nothing came.

        The pop runs in a task of its own, which this one awaits through a shield: a
        cancellation ends the wait at once, even where the client would only notice it
        once the pop returns (a cancellation that lands while the command is being sent
        is lost on Python 3.11). The pop is then cancelled and left to end by itself;
        what it may still take is the caller's to give back (by withdrawing).
        """
        block = pop_block(block, self.read_timeout)
        pop = asyncio.ensure_future(self.client.execute_command("BLPOP", key, f"{block:.3f}"))
        bound = asyncio.timeout(block + MARGIN)  # (a stopped server: the caller's deadline)
        try:
            async with bound:
                reply: Any = await asyncio.shield(pop)
        except BaseException as exc:
            if not pop.done() and not pop.get_loop().is_closed():  # (closed: it never runs)
                pop.cancel()
            pop.add_done_callback(_forget)
            if isinstance(exc, TimeoutError) and bound.expired():
                raise Late(f"within {block + MARGIN:.3g} s") from None  # (only the bound's own)
            raise
        if not reply:
            return None
        value: bytes = reply[1]
        return value


def _forget(task: asyncio.Future[Any]) -> None:
    """An abandoned pop ended: its outcome goes nowhere (the caller withdrew)."""
    if not task.cancelled():
        task.exception()


async def _delivering_cancellation(command: Awaitable[Any]) -> Any:
    """Await a command of the client, and raise the task's cancellation if it came meanwhile.

    redis-py's asyncio client may complete a command whose task was cancelled while it
    waited for the reply (or raise the command's error) as if the cancellation had not
    come, leaving the task marked "cancelling": a caller cancelled there would go on
    holding the key.
    """
    task: Any = asyncio.current_task()
    before = task.cancelling()
    try:
        reply = await command
    except Exception:
        if task.cancelling() > before:
            raise asyncio.CancelledError from None  # (what it raised instead)
        raise
    if task.cancelling() > before:
        raise asyncio.CancelledError
    return reply


async def _close_with_loop(client: Any, forget: Callable[[], None]) -> AsyncGenerator[None, None]:
    """Suspended for the loop's life; ``shutdown_asyncgens()`` closes it, and the client."""
    try:
        yield
    finally:
        forget()
        with contextlib.suppress(Exception):
            close = getattr(client, "aclose", None) or client.close
            await close()


@internal
class LoopClients:
    """The asyncio clients of one scope, by event loop."""

    __slots__ = ("_make", "_sides")

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._sides: dict[asyncio.AbstractEventLoop, AsyncSide] = {}

    def _forget(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sides.pop(loop, None)

    def get(self, loop: asyncio.AbstractEventLoop) -> AsyncSide | None:
        """The loop's client, if it has one already."""
        return self._sides.get(loop)

    async def open(self, loop: asyncio.AbstractEventLoop) -> AsyncSide:
        """The loop's client, made on its first use (loops closed since are forgotten)."""
        side = self._sides.get(loop)
        if side is not None:
            return side
        for old in [old for old in self._sides if old.is_closed()]:
            del self._sides[old]
        client = self._make()
        closer = _close_with_loop(client, partial(self._forget, loop))
        await closer.asend(None)  # registered with the loop: its shutdown closes it
        side = AsyncSide(client, closer)
        self._sides[loop] = side
        return side
