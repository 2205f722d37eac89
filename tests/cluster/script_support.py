"""Running the cluster scope's Lua scripts through redis-py, for the tests.

- :func:`run`: one script call (``EVALSHA``; on ``NOSCRIPT``, ``SCRIPT LOAD`` and again).
- :func:`run_many`: calls in one pipeline: one round trip per node. A call that met
  ``NOSCRIPT`` did not run, so it alone is sent again once the scripts are loaded.
- :func:`acquire_blocking`: the client side of a waiter, as the module docstring of
  :mod:`keyedlock._scopes._redis._scripts` describes it: ask, block on the wake list for at
  most the holder's remaining lease, ask again. Bounded by :data:`~tests.support.WAIT`.
- :func:`server_ms`: the server's clock, in ms.
- :func:`wait_server_ms`: wait (bounded) until ``ms`` milliseconds of the server's own clock
  have passed, for places and leases that must have run out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError

from keyedlock._scopes._redis import (
    SCRIPTS,
    Call,
    Granted,
    LockKeys,
    Waiting,
    acquire,
    parse_acquire,
    parse_wake,
    withdraw,
)

from ..support import WAIT, wait_until

__all__ = [
    "AnyClient",
    "acquire_blocking",
    "load_scripts",
    "run",
    "run_many",
    "server_ms",
    "wait_server_ms",
]

#: A standalone or a cluster client.
AnyClient = redis.Redis | RedisCluster


def load_scripts(client: AnyClient) -> None:
    """``SCRIPT LOAD`` every script (a cluster client loads them on every primary)."""
    for script in SCRIPTS:
        client.script_load(script.source)


def _evalsha(client: Any, call: Call) -> Any:
    return client.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)


def run(client: AnyClient, call: Call) -> object:
    """Run one script call and return its raw reply."""
    try:
        return _evalsha(client, call)
    except NoScriptError:
        client.script_load(call.script.source)
        return _evalsha(client, call)


def run_many(client: AnyClient, calls: Sequence[Call]) -> list[object]:
    """Run ``calls`` in one pipeline (one round trip per node); the raw replies, in order."""
    replies = _pipeline(client, calls)
    missing = [n for n, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        load_scripts(client)
        for n, reply in zip(missing, _pipeline(client, [calls[n] for n in missing]), strict=True):
            replies[n] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _pipeline(client: AnyClient, calls: Sequence[Call]) -> list[object]:
    pipe: Any = client.pipeline(transaction=False)
    try:
        for call in calls:
            _evalsha(pipe, call)
    except RedisClusterException:  # (redis-py before 6: no scripts in a cluster's pipeline)
        return [_reply_or_error(client, call) for call in calls]
    replies: list[object] = pipe.execute(raise_on_error=False)
    return replies


def _reply_or_error(client: AnyClient, call: Call) -> object:
    try:
        return _evalsha(client, call)
    except ResponseError as exc:
        return exc


def acquire_blocking(
    client: AnyClient,
    keys: LockKeys,
    waiter: str,
    *,
    lease_ms: int,
    place_ms: int,
    on_wait: Callable[[Waiting], None] | None = None,
    timeout: float = WAIT / 2,
) -> int:
    """Take the key, waiting in line as a client would; return the fencing token.

    ``on_wait`` is called with each :class:`Waiting` reply (the first one tells that the
    waiter has its place). Past ``timeout`` seconds the waiter withdraws and the test fails.
    """
    deadline = time.monotonic() + timeout
    while True:
        reply = parse_acquire(
            run(client, acquire(keys, waiter, lease_ms=lease_ms, place_ms=place_ms))
        )
        if isinstance(reply, Granted):
            return reply.token
        if on_wait is not None:
            on_wait(reply)
        left = deadline - time.monotonic()
        if left <= 0:
            run(client, withdraw(keys, waiter))
            raise AssertionError(f"{waiter} was not granted the key within {timeout} s")
        # BLPOP's timeout 0 would mean "forever": block at least a millisecond.
        block = max(0.001, min(reply.wait_ms / 1000, left))
        popped: Any = client.blpop([keys.wake(waiter)], block)
        if popped is not None:
            return parse_wake(popped[1]).token


_SERVER_MS = "local t = redis.call('TIME') return t[1] * 1000 + math.floor(t[2] / 1000)"


def server_ms(client: AnyClient, near: bytes) -> int:
    """The server clock (ms) of the node serving ``near``'s slot."""
    now: Any = client.eval(_SERVER_MS, 1, near)
    return int(now)


def wait_server_ms(client: AnyClient, near: bytes, ms: int) -> None:
    """Wait (bounded) until ``ms`` ms of server time have passed on the node serving ``near``.

    A marker key in ``near``'s slot expires after ``ms`` ms by the server's clock: once it is
    gone, every place or lease of at most ``ms`` set before the call has run out.
    """
    marker = near + b":marker"
    client.set(marker, b"1", px=ms)
    wait_until(lambda: not client.exists(marker), f"{ms} ms of server time passed")
