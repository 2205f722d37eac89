"""Server-side scripts of the cluster scope: a fair, fenced, leased lock on Redis or Valkey.

Nothing here talks to a server or imports a client library: this module holds the Lua
sources, the key names they work on, builders of each call (:class:`Call`: script, keys,
arguments) and parsers of their replies, so that the sync and the async sides can run them
alike (``EVALSHA`` with the script's SHA1, ``SCRIPT LOAD`` and again on ``NOSCRIPT``).

Key layout
==========

Every structure of one lock key lives under one hash tag, so that a script sees all of them on
one node of a Redis Cluster (a script may only touch keys of one slot)::

    <prefix>{<tag>}:owner         string   the holder's waiter id, expiring with its lease (PX)
    <prefix>{<tag>}:queue         list     waiter ids in arrival order (head = next in line)
    <prefix>{<tag>}:places        zset     waiter id -> expiry of its place (server ms)
    <prefix>{<tag>}:leases        hash     waiter id -> the lease (ms) it asked for
    <prefix>{<tag>}:token         string   the fencing counter (its value: the latest grant's)
    <prefix>{<tag>}:wake:<id>     list     a wake-up for waiter <id>: the token it was handed

``<tag>`` is the encoded key with ``%``, ``{`` and ``}`` escaped (``%25``, ``%7B``, ``%7D``),
and ``%`` alone for the empty key, so it is never empty and never ends early: every name of
one key hashes to the same slot, and two keys never share names. The prefix may not contain
braces. The queue, places and leases expire together when the last place expires, so the
structures of crashed waiters do not outlive them.

A waiter id names one acquisition attempt (unique per attempt, not per process), so that a
late wake-up of an earlier attempt can never be mistaken for a grant.

The lock
========

``acquire(waiter, lease_ms, place_ms)`` grants the key when it is free (no owner: it was
released or its lease ran out) and the waiter is first in line (the queue is empty, or every
place ahead of it expired): ``owner = waiter`` with a lease of ``lease_ms``, a new token, and
the waiter leaves the queue. The reply is ``[1, token]``. Otherwise the waiter takes a place at
the tail of the queue (once: asking again keeps its place and pushes its expiry to
``now + place_ms``) and the reply is ``[0, pttl]``: the holder's remaining lease.

The client then blocks on ``BLPOP <prefix>{<tag>}:wake:<id>`` for at most ``pttl`` (and at
most its own deadline), and:

- pops a token: the key was handed to it (see release), it holds it from now on;
- times out: it asks ``acquire`` again. Either the holder still holds the key (renewed: wait
  again, for its new remaining lease), or the holder's lease ran out: the key went to the
  head of the queue (which may be this waiter: granted). No polling while the holder is alive;
  a crashed holder delays the queue by at most its lease.

The owner key is the truth, the wake list only a doorbell: a waiter that asks again after the
key was handed to it is granted with the token of that hand-off, so a lost wake-up (a
connection that died during the pop) costs at most one wait, never the key.

A waiter whose place expired (it crashed, or stopped asking) is dropped from the queue by any
script that looks at the queue; it never blocks the waiters behind it. A live waiter keeps its
place by asking again or by ``refresh`` before ``place_ms`` runs out.

``release(waiter)`` is a compare-and-delete: only the current owner releases (reply ``1``;
``0`` means "not yours": the lease ran out and the key may belong to someone else now, which
is never touched). The key then goes straight to the head live waiter: ``owner = head`` with
the lease that waiter asked for, a new token, and its wake list gets the token (LPUSH, expiring
with that lease). A free key with live waiters is handed on the same way by every script that
finds it so (the owner's lease ran out): the queue never waits for a poll.

``renew(waiter, lease_ms)``: ``PEXPIRE`` the owner key only if the waiter still owns it
(reply ``1``), else ``0``. ``refresh(waiter, lease_ms, place_ms)`` keeps whatever the waiter
has: ``2`` it holds the key (the lease is renewed: it was handed the key, maybe while the
wake-up is still on its way), ``1`` it is waiting (its place is renewed), ``0`` it has
nothing (its place expired: it must ask again). A process renews all its held keys and
waiting places in one round trip per node: a pipeline of ``EVALSHA`` calls (a cluster
pipeline sends one batch to each node).

``withdraw(waiter)``: the waiter leaves (timeout, cancellation). If the key was handed to it
meanwhile, it is released and handed on (reply ``1``); otherwise the reply is ``0``.

Why a wake list and not pub/sub
-------------------------------

A per-waiter list popped with ``BLPOP`` keeps the wake-up until the waiter takes it: a
hand-off that lands between ``acquire``'s reply and the start of the ``BLPOP``, or while the
client reconnects, is not lost (a ``PUBLISH`` with nobody subscribed is). The list is in the
key's slot, so the release script can push it on a Cluster (``PUBLISH`` is broadcast to every
node, and ``SPUBLISH`` needs Redis 7 and a channel in the script's slot), it works the same on
Redis 6.2 and Valkey, and the blocking pop's timeout is exactly the "holder's lease may have
run out" bound. The price is one connection blocked per key a process waits for (the local
side lets at most one caller per key and process reach the server).

Tokens
======

Every grant of a key takes ``INCR <prefix>{<tag>}:token``: tokens strictly increase, per key,
cluster-wide (one key lives on one node), and the holder passes its token to the resources
it writes so that they refuse a holder whose lease ran out (fencing). The counter outlives
the owner key: every grant and every renewal sets its expiry to
``max(TOKEN_KEEP_MS, lease)``, so it never expires while the key is in use, and a key idle
for a day leaves nothing behind.

A counter that is missing (idle for a day, evicted, or the server restarted without
persistence) does not restart at 1: it is seeded with the server clock in microseconds. That
is above every token it issued before, as long as that counter issued fewer than one token
per microsecond on average (a grant is a script run: it takes longer than that) and the
server clock did not step back. Tokens stay below 2**53 (exact in Lua's doubles) until the
year 2255.

Single-flight across hosts (sketch)
===================================

One leader per key computes, the others wait for its outcome::

    <prefix>{<tag>}:flight:lead        string  the leader's id, expiring with its lease (PX)
    <prefix>{<tag>}:flight:outcome     string  the (pickled) outcome, kept for keep_ms
    <prefix>{<tag>}:flight:followers   zset    follower id -> expiry of its place
    <prefix>{<tag>}:flight:token       string  the fencing counter of leaders
    <prefix>{<tag>}:flight:wake:<id>   list    a follower's wake-up

``flight_join(id, lease_ms, place_ms)``: ``[2, outcome]`` if an outcome is there; ``[1, token]``
if the caller leads now (``SET NX`` semantics: no live leader); else ``[0, pttl]``: it follows,
and blocks on its wake list for at most the leader's remaining lease. ``flight_finish``
(leader only, else ``0``) stores the outcome with a short expiry and pushes ``=<outcome>`` to
every live follower's wake list; ``flight_abandon`` (leader only) pushes ``!`` ("ask again")
so that one follower takes over at once. A leader that crashes leaves no outcome: its lease
runs out, the followers' blocking pops time out, they join again and one of them leads, with
a larger token.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "ACQUIRE",
    "FLIGHT_ABANDON",
    "FLIGHT_FINISH",
    "FLIGHT_JOIN",
    "FLIGHT_RENEW",
    "LOCK_SCRIPTS",
    "REFRESH",
    "RELEASE",
    "RENEW",
    "SCRIPTS",
    "TOKEN_KEEP_MS",
    "WITHDRAW",
    "Call",
    "Done",
    "FlightKeys",
    "Granted",
    "LockKeys",
    "Refreshed",
    "Script",
    "Waiting",
    "acquire",
    "flight_abandon",
    "flight_finish",
    "flight_join",
    "flight_keys",
    "flight_renew",
    "hash_tag",
    "lock_keys",
    "parse_acquire",
    "parse_flight_join",
    "parse_flight_wake",
    "parse_refresh",
    "parse_wake",
    "refresh",
    "release",
    "renew",
    "withdraw",
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


# --- key names -----------------------------------------------------------------------------


def hash_tag(key: bytes) -> bytes:
    """The hash tag of an encoded key: never empty, free of braces, one per key."""
    if not key:
        return b"%"
    return key.replace(b"%", b"%25").replace(b"{", b"%7B").replace(b"}", b"%7D")


def _base(prefix: str, key: bytes) -> bytes:
    if "{" in prefix or "}" in prefix:
        raise ValueError(f"the key prefix may not contain braces, got {prefix!r}")
    if not isinstance(key, bytes):
        raise TypeError(f"the encoded key must be bytes, got {type(key).__name__}")
    return prefix.encode() + b"{" + hash_tag(key) + b"}"


@dataclass(frozen=True, slots=True)
class LockKeys:
    """The names of one lock key's structures (see the module docstring)."""

    owner: bytes
    queue: bytes
    places: bytes
    leases: bytes
    token: bytes
    wake_prefix: bytes

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The KEYS of every lock script, in order."""
        return (self.owner, self.queue, self.places, self.leases, self.token)

    def wake(self, waiter: str) -> bytes:
        """The wake list of ``waiter``: ``BLPOP`` it to wait for a hand-off."""
        return self.wake_prefix + waiter.encode()


def lock_keys(prefix: str, key: bytes) -> LockKeys:
    """The structures of the lock on the encoded ``key`` under ``prefix``."""
    base = _base(prefix, key)
    return LockKeys(
        owner=base + b":owner",
        queue=base + b":queue",
        places=base + b":places",
        leases=base + b":leases",
        token=base + b":token",
        wake_prefix=base + b":wake:",
    )


@dataclass(frozen=True, slots=True)
class FlightKeys:
    """The names of one single-flight key's structures (see the module docstring)."""

    lead: bytes
    outcome: bytes
    followers: bytes
    token: bytes
    wake_prefix: bytes

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The KEYS of every flight script, in order."""
        return (self.lead, self.outcome, self.followers, self.token)

    def wake(self, member: str) -> bytes:
        """The wake list of the follower ``member``."""
        return self.wake_prefix + member.encode()


def flight_keys(prefix: str, key: bytes) -> FlightKeys:
    """The structures of the single flight on the encoded ``key`` under ``prefix``."""
    base = _base(prefix, key) + b":flight"
    return FlightKeys(
        lead=base + b":lead",
        outcome=base + b":outcome",
        followers=base + b":followers",
        token=base + b":token",
        wake_prefix=base + b":wake:",
    )


# --- Lua -------------------------------------------------------------------------------------

# The server clock, read once per call (all expiries are server time: no client clock is
# trusted), and integers written out in full (a Lua number passed as is may print as 1e+15).
_CLOCK = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function int(n) return string.format('%.0f', n) end
"""

# The fencing counter (``token_key`` is set by the script that includes this).
_TOKENS = (
    """
local TOKEN_KEEP_MS = __TOKEN_KEEP_MS__

local function keep_token(lease_ms)
  redis.call('PEXPIRE', token_key, int(math.max(TOKEN_KEEP_MS, lease_ms)))
end

-- A new token: the counter plus one. A missing counter starts from the server clock in
-- microseconds, above every token it issued before it went missing.
local function next_token(lease_ms)
  if redis.call('EXISTS', token_key) == 0 then
    redis.call('SET', token_key, clock[1] .. string.format('%06d', tonumber(clock[2])))
  end
  local token = redis.call('INCR', token_key)
  keep_token(lease_ms)
  return token
end

-- The token of the grant in force (the counter's value), for an owner asking again.
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

# KEYS: owner, queue, places, leases, token. ARGV[1]: the wake-list prefix; ARGV[2]: the
# waiter id; the rest depends on the script.
_LOCK = (
    """
local owner_key, queue_key, places_key, leases_key, token_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local wake_prefix, waiter = ARGV[1], ARGV[2]
"""
    + _CLOCK
    + _TOKENS
    + """
-- Take a waiter out of the queue, wherever it is.
local function forget(id)
  redis.call('LREM', queue_key, 1, id)
  redis.call('ZREM', places_key, id)
  redis.call('HDEL', leases_key, id)
end

-- Drop every waiter whose place expired: it crashed or stopped asking.
local function prune()
  local gone = redis.call('ZRANGEBYSCORE', places_key, '-inf', int(now))
  for i = 1, #gone do
    forget(gone[i])
  end
end

-- The first waiter in line that still has a place (and a lease), or nil.
local function live_head()
  while true do
    local head = redis.call('LINDEX', queue_key, 0)
    if not head then
      return nil
    end
    if redis.call('ZSCORE', places_key, head)
        and redis.call('HEXISTS', leases_key, head) == 1 then
      return head
    end
    redis.call('LPOP', queue_key)
    redis.call('ZREM', places_key, head)
    redis.call('HDEL', leases_key, head)
  end
end

-- Make a waiter the owner; it leaves the queue. Returns its token.
local function grant(id, lease_ms)
  redis.call('SET', owner_key, id, 'PX', int(lease_ms))
  forget(id)
  return next_token(lease_ms)
end

-- The key is free: give it to the first live waiter, if any, and wake it with its token.
local function hand_on()
  local head = live_head()
  if not head then
    return
  end
  local lease_ms = tonumber(redis.call('HGET', leases_key, head))
  local token = grant(head, lease_ms)
  local wake_key = wake_prefix .. head
  redis.call('LPUSH', wake_key, int(token))
  redis.call('PEXPIRE', wake_key, int(lease_ms))
end

-- Take a place at the tail (once), or renew the place already taken.
local function place(id, lease_ms, place_ms)
  if not redis.call('ZSCORE', places_key, id) then
    redis.call('RPUSH', queue_key, id)
  end
  redis.call('ZADD', places_key, int(now + place_ms), id)
  redis.call('HSET', leases_key, id, int(lease_ms))
end

-- The queue's structures expire with the last place.
local function keep_queue()
  local last = redis.call('ZRANGE', places_key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', queue_key, last[2])
    redis.call('PEXPIREAT', places_key, last[2])
    redis.call('PEXPIREAT', leases_key, last[2])
  else
    redis.call('DEL', queue_key, leases_key)
  end
end
"""
)

_ACQUIRE = (
    _LOCK
    + """
local lease_ms, place_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
prune()
local owner = redis.call('GET', owner_key)
if owner == waiter then
  -- Handed to this waiter while it was not looking: it holds the key from now on.
  redis.call('PEXPIRE', owner_key, int(lease_ms))
  redis.call('DEL', wake_prefix .. waiter)
  forget(waiter)
  keep_queue()
  return {1, current_token(lease_ms)}
end
if not owner then
  local head = live_head()
  if not head or head == waiter then
    local token = grant(waiter, lease_ms)
    keep_queue()
    return {1, token}
  end
  -- Free, but another waiter is first in line: its turn (it is woken).
  hand_on()
end
place(waiter, lease_ms, place_ms)
keep_queue()
return {0, redis.call('PTTL', owner_key)}
"""
)

_RELEASE = (
    _LOCK
    + """
prune()
local owner = redis.call('GET', owner_key)
local released = 0
if owner == waiter then
  redis.call('DEL', owner_key)
  released = 1
end
if released == 1 or not owner then
  hand_on()
end
keep_queue()
return released
"""
)

_RENEW = (
    _LOCK
    + """
local lease_ms = tonumber(ARGV[3])
if redis.call('GET', owner_key) ~= waiter then
  return 0
end
redis.call('PEXPIRE', owner_key, int(lease_ms))
keep_token(lease_ms)
return 1
"""
)

_REFRESH = (
    _LOCK
    + """
local lease_ms, place_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
prune()
local owner = redis.call('GET', owner_key)
if not owner then
  hand_on()
  owner = redis.call('GET', owner_key)
end
local state = 0
if owner == waiter then
  redis.call('PEXPIRE', owner_key, int(lease_ms))
  keep_token(lease_ms)
  state = 2
elseif redis.call('ZSCORE', places_key, waiter) then
  place(waiter, lease_ms, place_ms)
  state = 1
end
keep_queue()
return state
"""
)

_WITHDRAW = (
    _LOCK
    + """
prune()
local owner = redis.call('GET', owner_key)
redis.call('DEL', wake_prefix .. waiter)
local held = 0
if owner == waiter then
  redis.call('DEL', owner_key)
  held = 1
else
  forget(waiter)
end
if held == 1 or not owner then
  hand_on()
end
keep_queue()
return held
"""
)

# KEYS: lead, outcome, followers, token. ARGV[1]: the wake-list prefix; ARGV[2]: the caller.
_FLIGHT = (
    """
local lead_key, outcome_key, followers_key, token_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local wake_prefix, member = ARGV[1], ARGV[2]
"""
    + _CLOCK
    + _TOKENS
    + """
-- Drop followers whose place expired; the set expires with the last place.
local function keep_followers()
  redis.call('ZREMRANGEBYSCORE', followers_key, '-inf', int(now))
  local last = redis.call('ZRANGE', followers_key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', followers_key, last[2])
  end
end

-- Push a message to every live follower's wake list; they all leave the set.
local function wake_followers(message, keep_ms)
  keep_followers()
  local live = redis.call('ZRANGE', followers_key, 0, -1)
  for i = 1, #live do
    local wake_key = wake_prefix .. live[i]
    redis.call('LPUSH', wake_key, message)
    redis.call('PEXPIRE', wake_key, int(keep_ms))
  end
  redis.call('DEL', followers_key)
end
"""
)

_FLIGHT_JOIN = (
    _FLIGHT
    + """
local lease_ms, place_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local outcome = redis.call('GET', outcome_key)
if outcome then
  redis.call('ZREM', followers_key, member)
  keep_followers()
  return {2, outcome}
end
local leader = redis.call('GET', lead_key)
if leader == member then
  redis.call('PEXPIRE', lead_key, int(lease_ms))
  return {1, current_token(lease_ms)}
end
if not leader then
  redis.call('SET', lead_key, member, 'PX', int(lease_ms))
  redis.call('ZREM', followers_key, member)
  keep_followers()
  return {1, next_token(lease_ms)}
end
redis.call('ZADD', followers_key, int(now + place_ms), member)
keep_followers()
return {0, redis.call('PTTL', lead_key)}
"""
)

_FLIGHT_FINISH = (
    _FLIGHT
    + """
local outcome, keep_ms = ARGV[3], tonumber(ARGV[4])
if redis.call('GET', lead_key) ~= member then
  return 0
end
redis.call('SET', outcome_key, outcome, 'PX', int(keep_ms))
redis.call('DEL', lead_key)
wake_followers('=' .. outcome, keep_ms)
return 1
"""
)

_FLIGHT_RENEW = (
    _FLIGHT
    + """
local lease_ms = tonumber(ARGV[3])
if redis.call('GET', lead_key) ~= member then
  return 0
end
redis.call('PEXPIRE', lead_key, int(lease_ms))
keep_token(lease_ms)
return 1
"""
)

_FLIGHT_ABANDON = (
    _FLIGHT
    + """
local keep_ms = tonumber(ARGV[3])
if redis.call('GET', lead_key) ~= member then
  return 0
end
redis.call('DEL', lead_key)
wake_followers('!', keep_ms)
return 1
"""
)

ACQUIRE = Script("acquire", _ACQUIRE)
RELEASE = Script("release", _RELEASE)
RENEW = Script("renew", _RENEW)
REFRESH = Script("refresh", _REFRESH)
WITHDRAW = Script("withdraw", _WITHDRAW)
FLIGHT_JOIN = Script("flight_join", _FLIGHT_JOIN)
FLIGHT_FINISH = Script("flight_finish", _FLIGHT_FINISH)
FLIGHT_RENEW = Script("flight_renew", _FLIGHT_RENEW)
FLIGHT_ABANDON = Script("flight_abandon", _FLIGHT_ABANDON)

#: The scripts of the lock, and every script (to ``SCRIPT LOAD`` up front).
LOCK_SCRIPTS = (ACQUIRE, RELEASE, RENEW, REFRESH, WITHDRAW)
SCRIPTS = (*LOCK_SCRIPTS, FLIGHT_JOIN, FLIGHT_FINISH, FLIGHT_RENEW, FLIGHT_ABANDON)


# --- calls -----------------------------------------------------------------------------------


def _id(value: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"the {what} id must be a non-empty str, got {value!r}")
    return value


def _ms(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int of milliseconds, got {value!r}")
    return value


def acquire(keys: LockKeys, waiter: str, *, lease_ms: int, place_ms: int) -> Call:
    """Take the key, or a place in line: :func:`parse_acquire` reads the reply."""
    args = (keys.wake_prefix, _id(waiter, "waiter"), _ms(lease_ms, "lease_ms"))
    return Call(ACQUIRE, keys.keys, (*args, _ms(place_ms, "place_ms")))


def release(keys: LockKeys, waiter: str) -> Call:
    """Release the key if ``waiter`` owns it and hand it on: ``1``, or ``0`` if not the owner."""
    return Call(RELEASE, keys.keys, (keys.wake_prefix, _id(waiter, "waiter")))


def renew(keys: LockKeys, waiter: str, *, lease_ms: int) -> Call:
    """Extend the owner's lease to ``lease_ms``: ``1``, or ``0`` if ``waiter`` does not own it."""
    args = (keys.wake_prefix, _id(waiter, "waiter"), _ms(lease_ms, "lease_ms"))
    return Call(RENEW, keys.keys, args)


def refresh(keys: LockKeys, waiter: str, *, lease_ms: int, place_ms: int) -> Call:
    """Keep what ``waiter`` has on the key: :func:`parse_refresh` reads the reply."""
    args = (keys.wake_prefix, _id(waiter, "waiter"), _ms(lease_ms, "lease_ms"))
    return Call(REFRESH, keys.keys, (*args, _ms(place_ms, "place_ms")))


def withdraw(keys: LockKeys, waiter: str) -> Call:
    """Leave the queue; ``1`` if the key had been handed to ``waiter`` (it is handed on)."""
    return Call(WITHDRAW, keys.keys, (keys.wake_prefix, _id(waiter, "waiter")))


def flight_join(keys: FlightKeys, member: str, *, lease_ms: int, place_ms: int) -> Call:
    """Lead the flight, follow it, or get its outcome: :func:`parse_flight_join`."""
    args = (keys.wake_prefix, _id(member, "member"), _ms(lease_ms, "lease_ms"))
    return Call(FLIGHT_JOIN, keys.keys, (*args, _ms(place_ms, "place_ms")))


def flight_finish(keys: FlightKeys, leader: str, outcome: bytes, *, keep_ms: int) -> Call:
    """Publish the leader's outcome for ``keep_ms`` and wake the followers: ``1``, or ``0``."""
    if not isinstance(outcome, bytes):
        raise TypeError(f"the outcome must be bytes, got {type(outcome).__name__}")
    args = (keys.wake_prefix, _id(leader, "leader"), outcome, _ms(keep_ms, "keep_ms"))
    return Call(FLIGHT_FINISH, keys.keys, args)


def flight_renew(keys: FlightKeys, leader: str, *, lease_ms: int) -> Call:
    """Extend the leader's lease: ``1``, or ``0`` if ``leader`` no longer leads."""
    args = (keys.wake_prefix, _id(leader, "leader"), _ms(lease_ms, "lease_ms"))
    return Call(FLIGHT_RENEW, keys.keys, args)


def flight_abandon(keys: FlightKeys, leader: str, *, keep_ms: int) -> Call:
    """Give up leading without an outcome; the followers are told to ask again."""
    args = (keys.wake_prefix, _id(leader, "leader"), _ms(keep_ms, "keep_ms"))
    return Call(FLIGHT_ABANDON, keys.keys, args)


# --- replies ---------------------------------------------------------------------------------


class Granted(NamedTuple):
    """The caller holds the key (or leads the flight) with this fencing token."""

    token: int


class Waiting(NamedTuple):
    """The caller waits: block on its wake list for at most ``wait_ms`` (the holder's lease)."""

    wait_ms: int


class Done(NamedTuple):
    """The flight's outcome, as its leader stored it."""

    outcome: bytes


class Refreshed(enum.IntEnum):
    """What :func:`refresh` found the waiter to have."""

    LOST = 0
    WAITING = 1
    HELD = 2


def _pair(reply: object, script: Script) -> tuple[int, object]:
    if not isinstance(reply, list | tuple) or len(reply) != 2 or not isinstance(reply[0], int):
        raise ValueError(f"unexpected reply of {script.name}: {reply!r}")
    return reply[0], reply[1]


def _int(value: object, script: Script) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"unexpected reply of {script.name}: {value!r}")


def parse_acquire(reply: object) -> Granted | Waiting:
    """Read the reply of :func:`acquire`."""
    state, value = _pair(reply, ACQUIRE)
    if state == 1:
        return Granted(_int(value, ACQUIRE))
    return Waiting(max(0, _int(value, ACQUIRE)))


def parse_refresh(reply: object) -> Refreshed:
    """Read the reply of :func:`refresh`."""
    return Refreshed(_int(reply, REFRESH))


def parse_wake(message: bytes | str) -> Granted:
    """Read what a lock waiter popped from its wake list: the token it was handed."""
    return Granted(int(message))


def parse_flight_join(reply: object) -> Granted | Waiting | Done:
    """Read the reply of :func:`flight_join`."""
    state, value = _pair(reply, FLIGHT_JOIN)
    if state == 2:
        if not isinstance(value, bytes):
            raise ValueError(f"unexpected outcome in the reply of flight_join: {value!r}")
        return Done(value)
    if state == 1:
        return Granted(_int(value, FLIGHT_JOIN))
    return Waiting(max(0, _int(value, FLIGHT_JOIN)))


def parse_flight_wake(message: bytes) -> Done | None:
    """Read a follower's wake-up: the outcome, or ``None`` for "the leader gave up: ask again"."""
    if message.startswith(b"="):
        return Done(message[1:])
    return None
