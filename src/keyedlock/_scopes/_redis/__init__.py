"""The cluster scope: keyed locks and single-flight shared through Redis or Valkey.

- :mod:`._lua`, :mod:`._lockscripts` (with :mod:`._lockkeys`, :mod:`._lockcalls`),
  :mod:`._flightscripts`: the server side (Lua scripts, key names, tokens, calls and
  replies), with no client library;
- :mod:`._names`: a user's key as the scope's local key, and what it is called on the server;
- :mod:`._link` (threads, trio; with :mod:`._connect`) and :mod:`._loops` (asyncio): the
  connections;
- :mod:`._renewal`: the process's renewal thread, and :mod:`._sending`: what it sends to
  each server;
- :mod:`._lockscope`: :class:`RedisScope`, the wide scope of the lock;
- :mod:`._lockbackend`: :class:`RedisBackend` and its context, :class:`RedisContext`;
- :mod:`._outcomes`, :mod:`._flightbackend`: single-flight across hosts.

This package imports ``redis``; :mod:`keyedlock._scopes` loads it on first use only, so
``import keyedlock`` never imports ``redis``.
"""

from __future__ import annotations

from ._failures import RedisUnavailable
from ._flightbackend import RedisFlightBackend
from ._flightkeys import FlightKeys, flight_keys
from ._flightscripts import (
    FLIGHT_SCRIPTS,
    Done,
    Following,
    flight_abandon,
    flight_finish,
    flight_forget,
    flight_inspect,
    flight_join,
    flight_refresh,
    flight_renew,
    parse_flight_inspect,
    parse_flight_join,
    parse_flight_wake,
)
from ._link import Link
from ._lockbackend import RedisBackend, RedisContext
from ._lockcalls import (
    Granted,
    Inspected,
    Refreshed,
    Waiting,
    acquire,
    inspect,
    parse_acquire,
    parse_inspect,
    parse_refresh,
    parse_wake,
    refresh,
    release,
    renew,
    report,
    withdraw,
)
from ._lockkeys import LockKeys, lock_keys
from ._lockscope import RedisScope
from ._lockscripts import LOCK_SCRIPTS
from ._lua import TOKEN_KEEP_MS, Call, Script, hash_tag
from ._names import KeyNames, RedisKey, encode_key
from ._outcomes import Serializer
from ._renewal import renewer

#: Every script (to ``SCRIPT LOAD`` up front).
SCRIPTS = (*LOCK_SCRIPTS, *FLIGHT_SCRIPTS)

__all__ = [
    "FLIGHT_SCRIPTS",
    "LOCK_SCRIPTS",
    "SCRIPTS",
    "TOKEN_KEEP_MS",
    "Call",
    "Done",
    "FlightKeys",
    "Following",
    "Granted",
    "Inspected",
    "KeyNames",
    "Link",
    "LockKeys",
    "RedisBackend",
    "RedisContext",
    "RedisFlightBackend",
    "RedisKey",
    "RedisScope",
    "RedisUnavailable",
    "Refreshed",
    "Script",
    "Serializer",
    "Waiting",
    "acquire",
    "encode_key",
    "flight_abandon",
    "flight_finish",
    "flight_forget",
    "flight_inspect",
    "flight_join",
    "flight_keys",
    "flight_refresh",
    "flight_renew",
    "hash_tag",
    "inspect",
    "lock_keys",
    "parse_acquire",
    "parse_flight_inspect",
    "parse_flight_join",
    "parse_flight_wake",
    "parse_inspect",
    "parse_refresh",
    "parse_wake",
    "refresh",
    "release",
    "renew",
    "renewer",
    "report",
    "withdraw",
]
