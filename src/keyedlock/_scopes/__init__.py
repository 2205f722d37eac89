"""Scope backends: where lock and single-flight state lives, behind one contract.

- :mod:`._contract`: the written contract (:class:`LockBackend`,
  :class:`WideScope`, :class:`FlightBackend`);
- :mod:`._context`: the context every lock hands out (:class:`LockContext`);
- :mod:`._local`: the process scope (:class:`LocalBackend`);
- :mod:`._wide`: the local-then-wide model over a :class:`WideScope`;
- :mod:`._lockfile`: the host scope through a lock file (:class:`FileBackend`);
- :mod:`._localflight`: single-flight in the process scope;
- :mod:`._manager`: the host scope through a manager process;
- :mod:`._redis`: the cluster scope on Redis or Valkey. It imports ``redis``, so its names
  (:class:`RedisBackend`, :class:`RedisContext`, :class:`RedisFlightBackend`,
  :class:`Link`, :class:`RedisUnavailable`) are loaded on first use (``import keyedlock``
  never imports ``redis``).

This module is the package-internal API of the scope layer: the public
classes import these names from here. It includes the parts of a
:class:`LockContext` that the lock and ``run``/``guard`` use (its underscore
fields and ``_acquire_sync``, ``_acquire_async``, ``_finish``, ``_undo``),
which are not part of its public surface.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._context import BAD_EXIT, ENTERED, EXITED, NEW, REUSE, LockContext, timeout_error
from ._contract import FlightBackend, LockBackend, Outcome, WideScope
from ._local import LocalBackend, LocalContext, settle
from ._localflight import LocalFlightBackend, recursion_error
from ._lockfile import DEFAULT_MAX_THREADS, FileBackend, KeyOffset, default_path, key_offset
from ._wide import WideBackend, WideContext

if TYPE_CHECKING:  # (at run time: __getattr__ below)
    from ._redis import Link as Link
    from ._redis import RedisBackend as RedisBackend
    from ._redis import RedisContext as RedisContext
    from ._redis import RedisFlightBackend as RedisFlightBackend
    from ._redis import RedisUnavailable as RedisUnavailable

#: The cluster scope's names, loaded on first use (they import ``redis``).
_REDIS = frozenset(
    {"Link", "RedisBackend", "RedisContext", "RedisFlightBackend", "RedisUnavailable"}
)


def __getattr__(name: str) -> object:
    if name in _REDIS:
        from ._redis import (
            Link,
            RedisBackend,
            RedisContext,
            RedisFlightBackend,
            RedisUnavailable,
        )

        found: dict[str, object] = {
            "Link": Link,
            "RedisBackend": RedisBackend,
            "RedisContext": RedisContext,
            "RedisFlightBackend": RedisFlightBackend,
            "RedisUnavailable": RedisUnavailable,
        }
        return found[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BAD_EXIT",
    "DEFAULT_MAX_THREADS",
    "ENTERED",
    "EXITED",
    "NEW",
    "REUSE",
    "FileBackend",
    "FlightBackend",
    "KeyOffset",
    "LocalBackend",
    "LocalContext",
    "LocalFlightBackend",
    "LockBackend",
    "LockContext",
    "Outcome",
    "WideBackend",
    "WideContext",
    "WideScope",
    "default_path",
    "key_offset",
    "recursion_error",
    "settle",
    "timeout_error",
]
