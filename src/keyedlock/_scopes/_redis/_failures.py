"""How the cluster scope reports a server it cannot reach, or that does not answer."""

from __future__ import annotations

import re
from typing import Any, Final

import redis
import redis.exceptions

__all__ = [
    "DOWN",
    "NoAnswer",
    "NoThread",
    "RedisUnavailable",
    "cluster_node_error",
    "redirected",
    "where",
]

#: What redis-py raises when the server cannot serve a command now.
DOWN: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.RedisClusterException,
    TimeoutError,  # an asyncio timeout around a blocking pop
)


class RedisUnavailable(ConnectionError):
    """The Redis server (or a node of the cluster) could not be reached, or did not answer."""


class NoAnswer(RedisUnavailable):
    """No reply within the time the caller gave it (``wait``): the server may be stopped or
    stuck. A caller with a deadline reports it as its timeout (see :mod:`._lockscope`)."""


class NoThread(NoAnswer):
    """Under trio, no worker thread was free for the call within its time (see
    :mod:`._linkasync`): nothing was sent. Reported as the caller's timeout too."""


def where(kwargs: dict[str, Any]) -> str:
    path = kwargs.get("path")
    if path:
        return str(path)
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


#: A cluster's redirection, as redis-py reads it: ``MOVED <slot> <host>:<port>``.
_REDIRECTION: Final = re.compile(r"(MOVED|ASK) \d+ \S+:\d+")


def redirected(reply: object) -> bool:
    """Whether ``reply`` is a cluster's MOVED or ASK (an AskError, or a plain ResponseError:
    redis-py before 6 reads them so from a client that is not a cluster's)."""
    return isinstance(reply, redis.exceptions.AskError) or (
        type(reply) is redis.exceptions.ResponseError
        and _REDIRECTION.fullmatch(str(reply)) is not None
    )


def cluster_node_error(exc: BaseException, server: str) -> ValueError:
    """What to raise when a server that is not known as a cluster answers MOVED or ASK: it is a
    node of a Redis Cluster, reached through a URL or a ``redis.Redis`` client."""
    error = ValueError(
        f"{server} is a node of a Redis Cluster (it answered {exc}); pass a redis.RedisCluster "
        "client for a cluster, e.g. redis.RedisCluster.from_url(url)"
    )
    error.__cause__ = exc
    return error
