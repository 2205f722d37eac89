"""The cluster scope: keyed locks and single-flight shared through Redis or Valkey.

So far this holds the server side only: the Lua scripts of a fair, fenced, leased lock
(:mod:`._lockscripts`, its calls and replies in :mod:`._lockcalls`) and of single-flight
across hosts (:mod:`._flightscripts`), with what they share (:mod:`._lua`: names, calls,
tokens). The client side plugs in later.

Nothing here imports a client library: ``import keyedlock`` never imports ``redis``.
"""

from __future__ import annotations

from ._flightscripts import (
    FLIGHT_SCRIPTS,
    Done,
    FlightKeys,
    Following,
    flight_abandon,
    flight_finish,
    flight_forget,
    flight_inspect,
    flight_join,
    flight_keys,
    flight_refresh,
    flight_renew,
    parse_flight_inspect,
    parse_flight_join,
    parse_flight_wake,
)
from ._lockcalls import (
    Granted,
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
    withdraw,
)
from ._lockscripts import LOCK_SCRIPTS, LockKeys, lock_keys
from ._lua import TOKEN_KEEP_MS, Call, Script, hash_tag

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
    "LockKeys",
    "Refreshed",
    "Script",
    "Waiting",
    "acquire",
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
    "withdraw",
]
