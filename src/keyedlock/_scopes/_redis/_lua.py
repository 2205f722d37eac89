"""What every server-side script of the cluster scope shares: scripts, calls, names, tokens.

Nothing here talks to a server or imports a client library. A :class:`Script` is a Lua
source and its SHA1 (run with ``EVALSHA``; loaded with ``SCRIPT LOAD`` on ``NOSCRIPT``); a
:class:`Call` is one run of it (script, keys, arguments), built by the lock's and the
flight's modules (:mod:`._lockscripts`, :mod:`._flightscripts`) and run by the connection
layer (:mod:`._link`) alike for the sync and the async clients.

Names
=====

Every structure of one key lives under one hash tag, so that a script sees all of them on one
node of a Redis Cluster (a script may only touch keys of one slot)::

    <prefix>{<tag>}:<structure>

``<tag>`` is the encoded key with ``%``, ``{`` and ``}`` escaped (``%25``, ``%7B``, ``%7D``),
and ``%`` alone for the empty key, so it is never empty and never ends early: every name of
one key hashes to the same slot, and two keys never share names. The prefix may not contain
braces.

Tokens
======

Every grant of a key (a lock's holder, a flight's leader) takes a new token from the key's
counter: ``max(counter + 1, server clock in microseconds)``, stored back. Tokens strictly
increase, per key, cluster-wide (one key lives on one node), and the holder passes its token to
the resources it writes so that they refuse a holder whose lease ran out (fencing). Every grant
and every renewal sets the counter's expiry to ``max(TOKEN_KEEP_MS, lease)``, so it never
expires while the key is in use, and a key idle for a day leaves nothing behind.

Taking the clock makes tokens survive what loses the counter: a key idle for a day, an
eviction, a restart without persistence (the clock is past every token issued before, as long
as it did not step back), and a failover to a replica that missed the last grants (its clock
is past them, as long as the failover takes longer than the two servers' clocks disagree:
seconds against milliseconds). Tokens stay below 2**53 (exact in Lua's doubles) until the year
2255.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "CLOCK",
    "TOKENS",
    "TOKEN_KEEP_MS",
    "Call",
    "Script",
    "check_id",
    "check_ms",
    "hash_tag",
    "key_base",
    "reply_id",
    "reply_int",
    "reply_pair",
]

#: The fencing counter of a key is kept at least this long (ms) after its last grant or
#: renewal: a day.
TOKEN_KEEP_MS = 24 * 60 * 60 * 1000


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script: its name (for messages), source and SHA1 (for ``EVALSHA``)."""

    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()
        object.__setattr__(self, "sha", digest)


class Call(NamedTuple):
    """One script call: ``EVALSHA script.sha len(keys) *keys *args``."""

    script: Script
    keys: tuple[bytes, ...]
    args: tuple[bytes | str | int, ...]


# --- names -----------------------------------------------------------------------------------


def hash_tag(key: bytes) -> bytes:
    """The hash tag of an encoded key: never empty, free of braces, one per key."""
    if not key:
        return b"%"
    return key.replace(b"%", b"%25").replace(b"{", b"%7B").replace(b"}", b"%7D")


def key_base(prefix: str, key: bytes) -> bytes:
    """``<prefix>{<tag>}``: what every name of the encoded ``key`` starts with."""
    if not isinstance(prefix, str):
        raise TypeError(f"the key prefix must be a str, got {type(prefix).__name__}")
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"the key prefix may not contain braces, got {prefix!r}")
    if not isinstance(key, bytes):
        raise TypeError(f"the encoded key must be bytes, got {type(key).__name__}")
    return prefix.encode() + b"{" + hash_tag(key) + b"}"


# --- Lua shared by the scripts ---------------------------------------------------------------

#: The server clock, read once per call (all expiries are server time: no client clock is
#: trusted), and integers written out in full (a Lua number passed as is may print as 1e+15).
CLOCK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function int(n) return string.format('%.0f', n) end
"""

#: The fencing counter (``token_key`` is set by the script that includes this, after CLOCK).
TOKENS = (
    """
local TOKEN_KEEP_MS = __TOKEN_KEEP_MS__

local function keep_token(lease_ms)
  redis.call('PEXPIRE', token_key, int(math.max(TOKEN_KEEP_MS, lease_ms)))
end

-- A new token: the counter plus one, or the server clock in microseconds if that is more
-- (a counter that went missing, a replica that missed the last grants).
local function next_token(lease_ms)
  local token = redis.call('INCR', token_key)
  local clock_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
  if token < clock_us then
    token = clock_us
    redis.call('SET', token_key, int(token))
  end
  keep_token(lease_ms)
  return token
end

-- The token of the grant in force (the counter's value), for a holder asking again.
local function current_token(lease_ms)
  local value = redis.call('GET', token_key)
  if not value then
    return next_token(lease_ms)
  end
  keep_token(lease_ms)
  return tonumber(value)
end
"""
).replace("__TOKEN_KEEP_MS__", str(TOKEN_KEEP_MS))


# --- arguments and replies -------------------------------------------------------------------


def check_id(value: str, what: str) -> str:
    """A waiter's or member's id: a non-empty str (ValueError otherwise)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"the {what} id must be a non-empty str, got {value!r}")
    return value


def check_ms(value: int, what: str) -> int:
    """A duration in milliseconds: a positive int (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int of milliseconds, got {value!r}")
    return value


def reply_pair(reply: object, script: Script) -> tuple[int, object]:
    """A ``{state, value}`` reply; ValueError for anything else."""
    if not isinstance(reply, list | tuple) or len(reply) < 2 or not isinstance(reply[0], int):
        raise ValueError(f"unexpected reply of {script.name}: {reply!r}")
    return reply[0], reply[1]


def reply_id(reply: object, script: Script) -> str | None:
    """The id a ``{state, value, id}`` reply ends with (``""``: None); ValueError if it is
    not text."""
    assert isinstance(reply, list | tuple)
    if len(reply) < 3 or reply[2] in (b"", ""):
        return None
    value = reply[2]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ValueError(f"unexpected reply of {script.name}: {reply!r}")


def reply_int(value: object, script: Script) -> int:
    """An integer reply; ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"unexpected reply of {script.name}: {value!r}")
