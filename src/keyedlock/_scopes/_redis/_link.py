"""The cluster scope's connections to its server: run a script, a batch, a blocking pop.

A :class:`Link` serves every runtime from one target (a URL, a ``redis.Redis`` or a
``redis.RedisCluster``):

- threads, and the process's renewal thread, use the sync client. Commands go straight to a
  connection of its pool (the pool of the key's node on a cluster): one command, one reply,
  no client-side retry (a release sent twice would answer "not the owner" the second time,
  which reads as a lost lease), and the reply read raw (``decode_responses`` is ignored). A
  script the server does not know (``NOSCRIPT``: it restarted) is loaded and run again; a
  cluster's ``MOVED`` refreshes its slot map once. A caller with a deadline waits for a
  reply until then (or the socket timeout, if that comes first), waits for a new
  connection's handshake no longer than that (see :mod:`._connect`), and does not open new
  connections to a server that did not answer in time until it answers again (see
  :mod:`._probe`).
- asyncio tasks use redis-py's asyncio client of their own loop (see :mod:`._loops`), and
  trio tasks run the sync calls in trio's worker threads: the trio run never blocks (the
  async half is :class:`~._linkasync.AsyncCalls`).

Every failure to reach the server (refused, reset, timed out, a cluster that is down) is
raised as :class:`~._failures.RedisUnavailable`, a builtin :class:`ConnectionError` naming
the server.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from functools import partial
from time import monotonic
from typing import Any, Final

import redis
import redis.exceptions
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import SentinelConnectionPool

from ..._ki import internal
from ._connect import connection, give_back
from ._failures import DOWN, NoAnswer, RedisUnavailable, redirected, where
from ._linkasync import AsyncCalls
from ._loops import MARGIN, NO_CAP, Late, LoopClients, async_client_for, pop_block, url_options
from ._lua import Call
from ._probe import late_servers

__all__ = ["SKIPPED", "Link"]

#: The reply of a call :meth:`Link.run_many` did not send, its server being late.
SKIPPED: Final = object()

#: The copy of each user's pool the scope's commands use (see _pool_without_retry): one per
#: user pool, shared by every lock made from a client of it, closed when that pool goes.
_copies: weakref.WeakKeyDictionary[Any, redis.ConnectionPool] = weakref.WeakKeyDictionary()


def _pool_without_retry(client: redis.Redis) -> Any:
    """The pool for the scope's commands to the server of a user's ``client``: a copy of the
    client's with its settings, no retry and no cap. The client's retry would try a refused
    connection again with back-off for seconds, holding up the process's renewal thread,
    and with it the leases of every other key; a cap would let the keys this process waits
    for (each blocks a connection) starve the renewal of the keys it holds. A pool of
    another kind than redis-py's two is used as it is."""
    pool: Any = client.connection_pool
    if type(pool) not in (redis.ConnectionPool, redis.BlockingConnectionPool):
        return pool
    ours = _copies.get(pool)
    if ours is None:  # (two threads racing here may make two copies: both work)
        settings = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
        made = redis.ConnectionPool(
            connection_class=pool.connection_class, max_connections=NO_CAP, **settings
        )
        ours = _copies.setdefault(pool, made)
        if ours is made:
            weakref.finalize(pool, made.disconnect).atexit = False  # (as a URL's client)
    return ours


@internal
class Link(AsyncCalls):
    """The connections of a scope to one server or cluster (see the module docstring)."""

    __slots__ = ("__weakref__", "_pool", "client", "cluster", "late", "loops", "server", "url")

    def __init__(self, target: object, who: str) -> None:
        self.url: str | None = None
        if isinstance(target, str):
            self.url = target
            client: Any = redis.Redis.from_url(target, **url_options(Retry(NoBackoff(), 0)))
            # Its own client: closed when it goes (not at exit, where the renewal thread
            # may still send clean-ups through it).
            weakref.finalize(self, client.close).atexit = False
        elif isinstance(target, RedisCluster | redis.Redis):
            client = target
            if isinstance(getattr(client, "connection_pool", None), SentinelConnectionPool):
                raise TypeError(
                    f"{who} cannot use a Sentinel client: its asyncio callers would need "
                    "a client of their own found through the Sentinels; pass the master's "
                    "redis:// URL or a redis.Redis client of it"
                )
        else:
            raise TypeError(
                f"{who} needs a redis:// URL, a redis.Redis or a redis.RedisCluster client "
                f"(the asyncio client is made for each event loop from its settings), got "
                f"{type(target).__name__}: {target!r}"
            )
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        if self.cluster:
            self._pool = None
        else:  # (a client made from the URL retries nothing already)
            self._pool = client.connection_pool if self.url else _pool_without_retry(client)
        if self.cluster:
            nodes = ", ".join(node.name for node in client.get_primaries())
            self.server = f"the Redis Cluster of {nodes}"
        else:
            self.server = f"the Redis server at {where(client.connection_pool.connection_kwargs)}"
        self.loops = LoopClients(partial(async_client_for, client, self.url))
        #: The servers whose last reply did not come in time (see :mod:`._probe`).
        self.late = late_servers

    def __repr__(self) -> str:
        return f"<Link {self.server}>"

    # -- errors ------------------------------------------------------------

    def unavailable(
        self, exc: BaseException, pool: Any = None, kind: type[RedisUnavailable] = RedisUnavailable
    ) -> RedisUnavailable:
        """The error to raise for ``exc``: it names the server (the node, on a cluster)."""
        server = self.server
        if pool is not None:
            server = f"the Redis server at {where(pool.connection_kwargs)}"
        if kind is NoAnswer:
            return NoAnswer(f"{server} did not answer {exc}")
        error = kind(f"{server} cannot be reached: {exc}")
        error.__cause__ = exc
        return error

    # -- threads -----------------------------------------------------------

    def _pool_of(self, key: bytes) -> Any:
        pool = self._pool
        if pool is not None:
            return pool
        client = self.client
        return client.get_redis_connection(client.get_node_from_key(key)).connection_pool

    def _exec(self, pool: Any, args: Sequence[object], wait: float | None = None) -> Any:
        """One command on a connection of ``pool``; its reply. ``wait``: Late after that
        long, unless the socket timeout is shorter (a read timeout: ConnectionError)."""
        conn = self._connected(pool, wait)
        try:
            conn.send_command(*args)
            if wait is not None:
                limit = conn.socket_timeout  # (the reply's own bound: whichever comes first)
                if (limit is None or wait < limit) and not conn.can_read(max(wait, 0.001)):
                    raise Late(f"within {wait:.3g} s")
            reply = conn.read_response(disable_decoding=True)
        except redis.exceptions.ResponseError:
            raise  # an error reply, read whole: the connection is fine
        except BaseException as exc:
            self._dropped(pool, conn, exc)
            raise
        finally:
            give_back(pool, conn)
        self._answered(pool)
        return reply

    def _connected(self, pool: Any, wait: float | None = None) -> Any:
        """A connection of ``pool``, a new one's handshake waited for ``wait`` at most (see
        :mod:`._connect`); a handshake that did not end in time marks its server late."""
        try:
            return connection(pool, wait)
        except (Late, redis.exceptions.TimeoutError):
            self.late.mark(pool)
            raise

    def _dropped(self, pool: Any, conn: Any, exc: BaseException | None) -> None:
        """``conn`` failed with ``exc``: a reply may still be on its way, so it is never
        reused; no reply in time marks its server late."""
        conn.disconnect()
        if isinstance(exc, Late | redis.exceptions.TimeoutError):
            self.late.mark(pool)

    def _answered(self, pool: Any) -> None:
        """A reply came in time from ``pool``'s server: it is not late (if it was)."""
        late = self.late
        if late.servers and late.late(pool):  # (another server's lateness costs nothing)
            late.answered(pool)

    def _call(
        self, key: bytes, args: Sequence[object], call: Call | None, wait: float | None
    ) -> Any:
        pool = None
        deadline = None if wait is None else monotonic() + wait
        try:
            for attempt in (1, 2, 3):
                pool = self._pool_of(key)
                try:
                    return self._exec(pool, args, self._left(pool, deadline))
                except redis.exceptions.NoScriptError:
                    if call is None or attempt == 3:
                        raise
                    script = ("SCRIPT", "LOAD", call.script.source)
                    self._exec(pool, script, self._left(pool, deadline))
                except redis.exceptions.ResponseError as exc:
                    if not redirected(exc):
                        raise
                    if not self.cluster or attempt == 3:  # MOVED, ASK: the slot map changed
                        self.moved(exc)
                    self.client.nodes_manager.initialize()
            raise AssertionError("unreachable")  # pragma: no cover
        except Late as exc:
            raise self.unavailable(exc, pool, NoAnswer) from None
        except DOWN as exc:
            raise self.unavailable(exc, pool) from exc

    def _left(self, pool: Any, deadline: float | None) -> float | None:
        """The time left until ``deadline`` for a command to ``pool``'s server. If that
        server is late, a caller with a deadline first waits (within it) for it to answer a
        probe, rather than open a connection whose handshake could overstay the deadline."""
        if deadline is None:
            return None
        late = self.late
        if late.servers and late.late(pool) and not self._probed(pool, deadline):
            raise Late("since it last did not answer in time")
        return deadline - monotonic()

    def _probed(self, pool: Any, deadline: float) -> bool:
        """Whether a late server answered its probe by ``deadline``. With no thread for the
        probe (at interpreter exit: a clean-up's last chance), the call itself finds out,
        within its own wait."""
        try:
            return self.late.wait(pool, deadline)
        except RuntimeError:
            return True

    def answering(self, call: Call) -> bool:
        """False if ``call``'s server is late (its last reply did not come in time), until
        it answers the probe this starts (see :mod:`._probe`): a sender that must not wait
        for a late server (the renewal thread's chores and reports) skips it."""
        if not self.late.servers:
            return True
        try:
            pool = self._pool_of(call.keys[0])
        except DOWN:
            return True  # (the call raises it)
        return not self._is_late(pool)

    def _is_late(self, pool: Any) -> bool:
        """Whether ``pool``'s server is late, its probe started if none runs (no wait)."""
        return self.late.late(pool) and not self._probed(pool, monotonic())

    def run(self, call: Call, wait: float | None = None) -> Any:
        """Run one script call; its raw reply (``wait``: NoAnswer after that long)."""
        args = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        return self._call(call.keys[0], args, call, wait)

    def command(self, key: bytes, *args: object) -> Any:
        """Run one plain command about ``key``; its raw reply."""
        return self._call(key, args, None, None)

    def pop(self, key: bytes, block: float) -> bytes | None:
        """``BLPOP key`` for at most ``block`` seconds (less if the client's socket timeout
        is shorter: the caller asks again); the value popped, or None."""
        try:
            pool = self._pool_of(key)
        except DOWN as exc:
            raise self.unavailable(exc) from exc
        block = pop_block(block, pool.connection_kwargs.get("socket_timeout"))
        reply = self._call(key, ("BLPOP", key, f"{block:.3f}"), None, block + MARGIN)
        if not reply:
            return None
        value: bytes = reply[1]
        return value

    def run_many(
        self, calls: Sequence[Call], wait: float | None = None, *, skip_late: bool = False
    ) -> list[Any]:
        """Run ``calls`` in one round trip per node; each reply, or the exception it raised.

        Every node's batch is sent before any reply is read: a node that does not answer
        holds up no other's calls. Calls a node did not run for want of their script
        (``NOSCRIPT``: it restarted) go again once the scripts are loaded, in one more round
        trip per node; calls that met a moved slot go again one by one. Each node's replies
        come within ``wait`` of its send (NoAnswer otherwise), nodes that did not answer in
        time last go last (see :mod:`._probe`). With ``skip_late``, the calls to a late node
        are not sent: their reply is :data:`SKIPPED`.
        """
        replies: list[Any] = [None] * len(calls)
        by_pool: dict[Any, list[int]] = {}
        for n, call in enumerate(calls):
            try:
                by_pool.setdefault(self._pool_of(call.keys[0]), []).append(n)
            except DOWN as exc:
                replies[n] = self.unavailable(exc)
        late = self.late
        for _ in (1, 2):
            sent: list[tuple[Any, list[int], Any, float | None]] = []
            try:
                for pool, indexes in sorted(by_pool.items(), key=lambda item: late.late(item[0])):
                    if skip_late and late.servers and self._is_late(pool):
                        for n in indexes:
                            replies[n] = SKIPPED
                        continue
                    try:
                        sent.append((pool, indexes, *self._send(pool, calls, indexes, wait)))
                    except (Late, *DOWN) as exc:
                        self._failed(pool, indexes, replies, exc)
                again: dict[Any, list[int]] = {}
                while sent:
                    pool, indexes, conn, deadline = sent.pop(0)
                    try:
                        self._read(pool, conn, indexes, replies, deadline)
                        missing = [
                            n
                            for n in indexes
                            if isinstance(replies[n], redis.exceptions.NoScriptError)
                        ]
                        for script in {calls[n].script for n in missing}:
                            self._exec(pool, ("SCRIPT", "LOAD", script.source), wait)
                    except (Late, *DOWN) as exc:
                        self._failed(pool, indexes, replies, exc)
                    else:
                        if missing:
                            again[pool] = missing
            finally:
                for pool, _, conn, _ in sent:  # (an interrupt: replies that will not be read)
                    self._dropped(pool, conn, None)
                    give_back(pool, conn)
            if not again:
                break
            by_pool = again
        for n, reply in enumerate(replies):
            if redirected(reply):
                try:
                    replies[n] = self.run(calls[n])
                except Exception as exc:
                    replies[n] = exc
        return replies

    def _failed(self, pool: Any, indexes: list[int], out: list[Any], exc: BaseException) -> None:
        for n in indexes:
            out[n] = self.unavailable(
                exc, pool, NoAnswer if isinstance(exc, Late) else RedisUnavailable
            )

    def _send(
        self, pool: Any, calls: Sequence[Call], indexes: list[int], wait: float | None
    ) -> tuple[Any, float | None]:
        """Send ``calls[indexes]`` to ``pool``'s server in one pipelined batch (a late server
        first answers a probe within ``wait``); the connection whose replies to read, and
        until when (``wait`` after the send)."""
        if wait is not None:
            self._left(pool, monotonic() + wait)  # (a late server: its probe first)
        conn = self._connected(pool, wait)
        try:
            commands = [
                ("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args)
                for c in (calls[n] for n in indexes)
            ]
            conn.send_packed_command(conn.pack_commands(commands))
        except BaseException as exc:
            self._dropped(pool, conn, exc)
            give_back(pool, conn)
            raise
        return conn, None if wait is None else monotonic() + wait

    def _read(
        self, pool: Any, conn: Any, indexes: list[int], out: list[Any], deadline: float | None
    ) -> None:
        """The replies to a batch :meth:`_send` sent on ``conn``, into ``out`` (Late if they
        are not all there by ``deadline``)."""
        try:
            for n in indexes:
                if deadline is not None and not conn.can_read(max(deadline - monotonic(), 0.001)):
                    raise Late("in time")
                try:
                    out[n] = conn.read_response(disable_decoding=True)
                except redis.exceptions.ResponseError as exc:
                    out[n] = exc
        except BaseException as exc:
            self._dropped(pool, conn, exc)
            raise
        finally:
            give_back(pool, conn)
        self._answered(pool)
