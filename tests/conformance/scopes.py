"""The scopes the conformance suite runs over: one factory per scope.

Every contract test that takes the ``lock`` fixture (or ``make_lock``) runs once per entry of
:data:`LOCK_SCOPES`, and every single-flight contract test that takes ``flight`` (or
``make_flight``) once per entry of :data:`FLIGHT_SCOPES`. A new scope is one more entry here.

Where a scope's documented semantics differ from the process scope's, the test says so with
:func:`differs` (an explicit skip naming the documented difference) or a variant.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from keyedlock import FileKeyedLock, KeyedLock, SingleFlight
from keyedlock.multiprocessing import KeyedLockManager

__all__ = [
    "FLIGHT_SCOPES",
    "LOCK_SCOPES",
    "Scope",
    "differs",
]


@dataclass(frozen=True)
class Scope:
    """How to make a lock (or a single-flight group) of one scope, and what it documents."""

    name: str
    #: ``make(**options)``: a new lock (or group) of this scope, e.g. ``make(max_waiters=2)``.
    make: Callable[..., Any]
    #: Which keys it takes: "any hashable", or "str, bytes or int" (the lock file).
    keys: str = "any hashable"
    #: True if ``waiters``, ``len`` and ``max_waiters`` count every process, not this one's.
    remote: bool = False


class _Manager:
    """One manager process for the whole run, started on first use."""

    def __init__(self) -> None:
        self.manager: KeyedLockManager | None = None

    def get(self) -> KeyedLockManager:
        if self.manager is None:
            self.manager = KeyedLockManager()
            self.manager.start()
        return self.manager

    def close(self) -> None:
        if self.manager is not None:
            self.manager.shutdown()
            self.manager = None


_manager = _Manager()
_files: list[Path] = []


class _Redis:
    """One Redis (or Valkey) server for the whole run, started on first use; every lock or
    group made on it has names of its own (a prefix per object)."""

    def __init__(self) -> None:
        self.server: Any = None
        self.made = itertools.count()

    def url(self) -> str:
        if self.server is None:
            from ..cluster.servers import Server, find_server_binary

            binary = find_server_binary()
            if binary is None:
                pytest.skip("no redis-server or valkey-server binary (see tests/cluster)")
            server = Server(binary)
            server.start()
            self.server = server
        return str(self.server.url)

    def prefix(self) -> str:
        return f"conformance-{next(self.made)}:"

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None


_redis = _Redis()


def _redis_lock(**options: Any) -> Any:
    from keyedlock.redis import RedisKeyedLock

    return RedisKeyedLock(_redis.url(), prefix=_redis.prefix(), lease=2.0, **options)


def _redis_flight(**options: Any) -> Any:
    from keyedlock.redis import RedisSingleFlight

    return RedisSingleFlight(_redis.url(), prefix=_redis.prefix(), lease=2.0, **options)


def _file_lock(**options: Any) -> FileKeyedLock:
    directory = _files[-1]
    count = len(list(directory.iterdir()))
    return FileKeyedLock(directory / f"keys-{count}.lock", **options)


LOCK_SCOPES: list[Scope] = [
    Scope("process", KeyedLock),
    Scope("file", _file_lock, keys="str, bytes or int"),
    Scope("manager", lambda **options: _manager.get().KeyedLock(**options), remote=True),
    Scope("redis", _redis_lock, keys="str, bytes or int"),
]

FLIGHT_SCOPES: list[Scope] = [
    Scope("process", SingleFlight),
    Scope("manager", lambda **options: _manager.get().SingleFlight(**options), remote=True),
    Scope("redis", _redis_flight, keys="str, bytes or int"),
]


def differs(scope: Scope, *names: str, why: str) -> None:
    """Skip the current test for the scopes ``names``: their documented semantics differ."""
    if scope.name in names:
        pytest.skip(f"{scope.name} scope: {why}")


@pytest.fixture(scope="session", autouse=True)
def _scopes_cleanup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    _files.append(tmp_path_factory.mktemp("lock-files"))
    yield
    _manager.close()
    _redis.close()
