"""The cluster scope: keyed locks and single-flight shared through Redis or Valkey.

``pip install "keyedlock[redis]"`` (from a clone of the repository:
``pip install ".[redis]"``) adds redis-py. ``import keyedlock`` never imports it;
this module does::

    from keyedlock.redis import RedisKeyedLock, RedisSingleFlight, LeaseLost

    lock = RedisKeyedLock("redis://localhost:6379/0")  # or a redis.Redis / redis.RedisCluster

    with lock(f"invoice:{invoice_id}", timeout=5) as held:    # threads
        write_invoice(invoice_id, fencing_token=held.token)

    async with lock(f"invoice:{invoice_id}") as held:         # asyncio or trio
        ...

See "Choosing a scope" in the documentation for the lease and fencing model, the names of
the keys on the server and the limits.
"""

from __future__ import annotations

import importlib
import math
import pickle
from collections.abc import Hashable
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol

from ._errors import LeaseLost
from ._lock import KeyedLock
from ._scopes import Link, RedisBackend, RedisContext, RedisFlightBackend
from ._singleflight import SingleFlight
from ._validate import check_flag, check_max_waiters, check_ttl, check_warn_after, seconds

if TYPE_CHECKING:
    import redis  # (the types of the clients taken: this module needs redis-py anyway)

__all__ = ["LeaseLost", "RedisContext", "RedisKeyedLock", "RedisSingleFlight"]

#: The shortest lease accepted (seconds): renewals come every third of it.
MIN_LEASE: Final = 0.05


def _check_lease(lease: object) -> float:
    value = seconds(lease, "lease")
    if not math.isfinite(value) or value < MIN_LEASE:
        raise ValueError(
            f"lease must be a finite number of seconds >= {MIN_LEASE} (it is renewed every "
            f"third of it while the key is held), got {lease!r}"
        )
    return value


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"prefix may not contain braces (they make the key's hash tag), got {prefix!r}"
        )
    return prefix


class Serializer(Protocol):
    """What carries single-flight outcomes to the other processes: ``dumps(obj)`` makes
    bytes or a str, ``loads(data)`` the object again (the :mod:`pickle` and :mod:`json`
    modules are such)."""

    def dumps(self, obj: Any, /) -> bytes | str: ...

    def loads(self, data: bytes, /) -> Any: ...


def _check_serializer(serializer: object) -> Any:
    dumps = getattr(serializer, "dumps", None)
    loads = getattr(serializer, "loads", None)
    if not (callable(dumps) and callable(loads)):
        raise TypeError(
            f"serializer must have dumps(obj) -> bytes or str and loads(bytes), as the pickle "
            f"and json modules have, got {serializer!r}"
        )
    return serializer


class RedisKeyedLock(KeyedLock):
    """A lock per key shared by every process, on every host, that uses the same Redis.

    It has the whole :class:`~keyedlock.KeyedLock` API (``with`` / ``async with
    lock(key, timeout=...)``, ``acquire``, ``acquire_async``, ``release``, ``run``,
    ``run_sync``, ``guard``, the same errors), and the key is held against every process
    using the same server (or cluster) and prefix, as well as against this process's threads
    and tasks. Entering returns the context, a :class:`RedisContext`, with the grant's
    fencing ``token`` and the ``lost`` flag::

        lock = RedisKeyedLock("redis://localhost:6379/0")

        with lock("invoice:42", timeout=5) as held:
            write_invoice(42, fencing_token=held.token)

    - **Fair, no polling.** Callers are served in arrival order across hosts: this
      process's callers queue locally, and one per process and key waits in the key's queue
      in Redis. Release hands the key to the head of that queue and wakes it (a blocking pop
      on a list of its own), so a hand-off between processes takes one round trip.
    - **Leases.** A key is held for ``lease`` seconds at a time, renewed every third of it
      by one renewal thread per process (one round trip per period, whatever the number of
      keys). A process that dies frees its keys when their lease runs out; the next waiter
      gets the key then (a waiter that dies loses its place the same way).
    - **Fencing.** ``held.token`` grows strictly with every grant of the key, cluster-wide.
      A holder stopped longer than its lease (a pause, a partition) loses the key: its
      ``held.lost`` turns True, leaving raises :class:`LeaseLost`, and a resource that
      remembers the highest token it saw refuses its late writes.
    - **Failures.** A server that cannot be reached makes acquiring raise
      :class:`ConnectionError` naming it (never a false grant); the lock works again once
      the server is back.

    Keys are ``str``, ``bytes`` or ``int`` (``"1"``, ``b"1"`` and ``1`` are three keys;
    anything else, ``bool`` included, raises TypeError); the lock on ``"invoice:42"`` lives in
    ``<prefix>{s:invoice:42}:owner`` and its neighbours (one hash slot per key, so it works on
    a Redis Cluster). :meth:`locked` and :meth:`waiters` answer for the whole cluster (one
    round trip each; ``waiters`` counts every waiting caller of every process, those queued
    in their process behind its place in Redis included); ``len()``, ``max_waiters`` /
    :class:`~keyedlock.QueueFull` and ``on_error="stop"`` / :class:`~keyedlock.Aborted`
    concern this process's callers.

    One object serves threads (the sync client), asyncio tasks (redis-py's asyncio client,
    one per event loop, closed with it) and trio tasks (the sync client in trio's worker
    threads): the event loop never blocks on the network, except in the few calls that are
    synchronous by nature (``release(key)``, ``locked``, ``waiters``).

    Args:
        client_or_url: a ``redis://`` / ``rediss://`` / ``unix://`` URL (a client is made
            with 5 s socket timeouts unless the URL says otherwise), a ``redis.Redis`` (its
            settings are used through a copy of its pool, without retries or cap; a
            Sentinel client is refused) or a ``redis.RedisCluster``.
        prefix: what every name on the server starts with (no braces).
        lease: seconds a grant lasts without renewal (at least 0.05). A crashed holder
            blocks its key this long; a holder cut off from the server this long loses it.
        max_waiters: how many callers of this process may wait for one key, the one
            waiting in Redis included (None: unbounded; 0: never wait).
        fast_acquire: under trio, take a key free in this process without trio.Lock's
            checkpoints (the round trip to Redis runs in a worker thread all the same).
        warn_after: log a hold of this process still held after this many seconds
            (see :class:`~keyedlock.KeyedLock`).
    """

    __slots__ = ()

    _backend: RedisBackend

    def __init__(
        self,
        client_or_url: str | redis.Redis | redis.RedisCluster,
        *,
        prefix: str = "keyedlock:",
        lease: float = 10.0,
        max_waiters: int | None = None,
        fast_acquire: bool = False,
        warn_after: float | None = None,
    ) -> None:
        prefix = _check_prefix(prefix)
        lease = _check_lease(lease)
        max_waiters = check_max_waiters(max_waiters)
        fast_acquire = check_flag(fast_acquire)
        warn_after = check_warn_after(warn_after)
        link = Link(client_or_url, "RedisKeyedLock")
        self._bind(RedisBackend(link, prefix, lease, max_waiters, fast_acquire), warn_after)

    if TYPE_CHECKING:

        def __call__(self, key: Hashable, *, timeout: float | None = None) -> RedisContext:
            """A context manager holding ``key`` for the body of a ``with`` / ``async with``
            (see :class:`~keyedlock.KeyedLock`); entering returns it, with ``token`` and
            ``lost`` (:class:`RedisContext`)."""
            ...

    @property
    def prefix(self) -> str:
        """What every name of this lock on the server starts with."""
        return self._backend.scope.map_key.prefix

    @property
    def lease(self) -> float:
        """Seconds a grant lasts without renewal."""
        return self._backend.scope.lease

    def __repr__(self) -> str:
        link = self._backend.scope.link
        return (
            f"<RedisKeyedLock {link.server} prefix={self.prefix!r} lease={self.lease} "
            f"keys={len(self)} max_waiters={self.max_waiters}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy in another process (multiprocessing with spawn) connects to the same URL.
        url = _url_to_pickle(self._backend.scope.link, "RedisKeyedLock")
        options = (self.prefix, self.lease, self.max_waiters, self.fast_acquire, self.warn_after)
        return (_restore_lock, (url, *options))


def _url_to_pickle(link: Link, kind: str) -> str:
    """The URL a pickled copy connects to; TypeError for an object made from a client."""
    if link.url is None:
        raise TypeError(
            f"a {kind} made from a client object cannot be pickled; make it from a URL to "
            "send it to other processes, or make one in each process"
        )
    return link.url


def _restore_lock(
    url: str,
    prefix: str,
    lease: float,
    max_waiters: int | None,
    fast_acquire: bool,
    warn_after: float | None = None,
) -> RedisKeyedLock:
    return RedisKeyedLock(
        url,
        prefix=prefix,
        lease=lease,
        max_waiters=max_waiters,
        fast_acquire=fast_acquire,
        warn_after=warn_after,
    )


class RedisSingleFlight(SingleFlight):
    """Concurrent callers of one key, on every host, share one call of the function.

    It has the whole :class:`~keyedlock.SingleFlight` API (``do``, ``do_ex``,
    ``do_sync``, ``do_sync_ex``, ``coalesce``, ``forget``, ``in_flight``): the first caller
    of a key, anywhere, runs its function; the others (threads, asyncio or trio tasks, in
    any process of any host using the same server and prefix) wait for it and get its
    result, or its exception (each a copy), deserialized.

    - This process's callers of a key coalesce locally first; one of them joins the call in
      Redis, as its leader or as a follower (woken by a blocking pop, no polling).
    - The leader's lease is renewed while its function runs. If the leader is cancelled or
      interrupted, its followers are told at once and the earliest takes over; if its process
      dies, a follower takes over when the lease runs out.
    - The result travels through ``serializer`` (``dumps``/``loads``; :mod:`pickle` by
      default: only share a server with trusted clients, or pass one such as ``json`` for
      plain data). A result that cannot be serialized makes every caller, the one that ran
      it included, raise TypeError; an exception that cannot be reaches the others as a
      TypeError describing it.
    - ``in_flight(key)`` and ``statistics(key)`` answer for every process (one round trip);
      ``len(flight)`` and ``keys()`` count only the calls this process's callers run or wait
      for (a call another process leads alone is in flight, but not counted here).

    Args:
        client_or_url: as for :class:`RedisKeyedLock`.
        prefix: what every name on the server starts with (no braces).
        lease: seconds a leader holds its call without renewal (at least 0.05).
        serializer: carries results and exceptions to the other callers.
        ttl: seconds a successful result is reused, by every host, after it completes
            (0, the default: never).
    """

    __slots__ = ()

    _backend: RedisFlightBackend

    def __init__(
        self,
        client_or_url: str | redis.Redis | redis.RedisCluster,
        *,
        prefix: str = "keyedlock:",
        lease: float = 10.0,
        serializer: Serializer = pickle,
        ttl: float = 0,
    ) -> None:
        prefix = _check_prefix(prefix)
        lease = _check_lease(lease)
        serializer = _check_serializer(serializer)
        ttl = check_ttl(ttl)
        link = Link(client_or_url, "RedisSingleFlight")
        self._bind(RedisFlightBackend(link, prefix, lease, ttl, serializer))

    @property
    def prefix(self) -> str:
        """What every name of this group on the server starts with."""
        return self._backend.map_key.prefix

    @property
    def lease(self) -> float:
        """Seconds a leader holds its call without renewal."""
        return self._backend.lease

    def __repr__(self) -> str:
        return (
            f"<RedisSingleFlight {self._backend.link.server} prefix={self.prefix!r} "
            f"in_flight={len(self)} ttl={self.ttl}>"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # As RedisKeyedLock's: a copy in another process connects to the same URL. A module
        # serializer (pickle, json) goes by its name: modules do not pickle.
        backend = self._backend
        url = _url_to_pickle(backend.link, "RedisSingleFlight")
        serializer = backend.serializer
        named = serializer.__name__ if isinstance(serializer, ModuleType) else serializer
        return (_restore_flight, (url, self.prefix, self.lease, named, self.ttl))


def _restore_flight(
    url: str, prefix: str, lease: float, serializer: Any, ttl: float
) -> RedisSingleFlight:
    if isinstance(serializer, str):
        serializer = importlib.import_module(serializer)
    return RedisSingleFlight(url, prefix=prefix, lease=lease, serializer=serializer, ttl=ttl)
