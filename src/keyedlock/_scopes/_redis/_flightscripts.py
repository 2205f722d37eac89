"""Single-flight's server-side scripts: one leader per key computes, every follower gets it.

Nothing here talks to a server: Lua sources, builders of each call and parsers of their
replies (the names they work on: :mod:`._flightkeys`; :mod:`._lua` for names and tokens).

Protocol
========

``flight_join(id, lease_ms, place_ms)`` answers, in this order:

- ``[2, outcome]``: an outcome is there for this caller: one pushed to its wake list (it
  followed a call that finished while it was between two waits), or the kept one (``ttl``);
- ``[1, token]``: the caller leads (no live leader: ``SET NX`` semantics, a new token). A
  follower whose leader is gone (it gave up, or its lease ran out) names that leader
  (``previous``) and takes its call over: the other followers of that call follow it now,
  so the call still runs once for all of them, whoever asks again first;
- ``[0, pttl, lead]``: it follows the call ``lead`` leads (a place in that call's followers,
  renewed by asking again or by ``flight_refresh``), and blocks on its wake list for at most
  the leader's remaining lease.

``flight_finish(lead, outcome, keep_ms)`` pushes ``=<outcome>`` to every live follower of the
call (whether or not it is still the key's current call: see forget) and, if the caller still
leads the key, ends the call and keeps the outcome ``keep_ms`` (0: not at all). Its reply is
the number of followers woken. ``flight_abandon(lead)`` ends the call without an outcome and
pushes ``!`` ("ask again") to its followers: the first of them to ask again takes it over. A
leader that crashes leaves no outcome: its lease runs out, the followers' pops time out, they
join again and the first of them takes it over, with a larger token. A follower asking again
takes every outcome pushed to it, and keeps the first one (``=``).

``flight_forget()`` detaches the current call: new callers start a new one, while the
detached call still serves its followers (their set is named after its leader) and, as it no
longer leads the key, neither ends nor replaces the new call. Its lease goes on under its
own name (``detached:<lead>``), renewed as the lead was: a follower of it whose wait runs out
asks again naming it (``previous``) and keeps following it, neither the new call nor a
takeover of its own. A follower that gives up (``flight_abandon`` naming its ``lead``)
leaves that call's followers at once.
"""

from __future__ import annotations

from typing import NamedTuple

from ._flightkeys import FlightKeys
from ._lockcalls import Granted
from ._lua import (
    CLOCK,
    TOKENS,
    Call,
    Script,
    check_id,
    check_ms,
    reply_id,
    reply_int,
    reply_pair,
)

__all__ = [
    "FLIGHT_ABANDON",
    "FLIGHT_FINISH",
    "FLIGHT_FORGET",
    "FLIGHT_INSPECT",
    "FLIGHT_JOIN",
    "FLIGHT_REFRESH",
    "FLIGHT_RENEW",
    "FLIGHT_SCRIPTS",
    "Done",
    "Following",
    "flight_abandon",
    "flight_finish",
    "flight_forget",
    "flight_inspect",
    "flight_join",
    "flight_refresh",
    "flight_renew",
    "parse_flight_inspect",
    "parse_flight_join",
    "parse_flight_wake",
]


# --- Lua -------------------------------------------------------------------------------------

# KEYS: lead, outcome, token. ARGV[1]: the names' base (``...:flight:``); ARGV[2]: the caller.
_FLIGHT = (
    """
local lead_key, outcome_key, token_key = KEYS[1], KEYS[2], KEYS[3]
local base, member = ARGV[1], ARGV[2]
"""
    + CLOCK
    + TOKENS
    + """
-- The lease of the call ``id`` leads once forget detached it.
local function detached_key(id)
  return base .. 'detached:' .. id
end

-- A call's followers expire with the last place.
local function keep_followers(followers_key)
  local last = redis.call('ZRANGE', followers_key, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', followers_key, last[2])
  end
end

-- Push a message to every live follower of the caller's call; with ``drop``, the set goes.
local function wake_followers(message, keep_ms, drop)
  local followers_key = base .. 'followers:' .. member
  redis.call('ZREMRANGEBYSCORE', followers_key, '-inf', int(now))
  local live = redis.call('ZRANGE', followers_key, 0, -1)
  for i = 1, #live do
    local wake_key = base .. 'wake:' .. live[i]
    redis.call('LPUSH', wake_key, message)
    redis.call('PEXPIRE', wake_key, int(keep_ms))
  end
  if drop then
    redis.call('DEL', followers_key)
  end
  return #live
end
"""
)

_FLIGHT_JOIN = (
    _FLIGHT
    + """
local lease_ms, place_ms, previous = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]

-- It follows the call ``leader`` leads: a place among its followers; block ``wait_ms``.
local function follow(leader, wait_ms)
  local followers_key = base .. 'followers:' .. leader
  redis.call('ZADD', followers_key, int(now + place_ms), member)
  keep_followers(followers_key)
  return {0, wait_ms, leader}
end

local wake_key = base .. 'wake:' .. member
local woken = redis.call('LRANGE', wake_key, 0, -1)
redis.call('DEL', wake_key)
for i = 1, #woken do
  if string.sub(woken[i], 1, 1) == '=' then
    return {2, string.sub(woken[i], 2)}
  end
end
if previous ~= '' and previous ~= member then
  -- The call it followed was detached (forget) and its leader lives: it keeps following
  -- it (not the key's current call, nor the outcome that call kept).
  local detached = redis.call('PTTL', detached_key(previous))
  if detached > 0 then
    return follow(previous, detached)
  end
end
local outcome = redis.call('GET', outcome_key)
if outcome then
  return {2, outcome}
end
local leader = redis.call('GET', lead_key)
if leader == member then
  redis.call('PEXPIRE', lead_key, int(lease_ms))
  return {1, current_token(lease_ms)}
end
if not leader then
  redis.call('SET', lead_key, member, 'PX', int(lease_ms))
  if previous ~= '' and previous ~= member then
    -- It takes over the call it followed: the other followers of that call follow it now.
    local old_key = base .. 'followers:' .. previous
    redis.call('ZREM', old_key, member)
    redis.call('ZREMRANGEBYSCORE', old_key, '-inf', int(now))
    if redis.call('EXISTS', old_key) == 1 then
      redis.call('RENAME', old_key, base .. 'followers:' .. member)
    end
  end
  return {1, next_token(lease_ms)}
end
return follow(leader, redis.call('PTTL', lead_key))
"""
)

_FLIGHT_FINISH = (
    _FLIGHT
    + """
local outcome, keep_ms, place_ms = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
if redis.call('GET', lead_key) == member then
  redis.call('DEL', lead_key)
  if keep_ms > 0 then
    redis.call('SET', outcome_key, outcome, 'PX', int(keep_ms))
  end
end
redis.call('DEL', detached_key(member))
return wake_followers('=' .. outcome, place_ms, true)
"""
)

_FLIGHT_ABANDON = (
    _FLIGHT
    + """
local place_ms, lead = tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', lead_key) == member then
  redis.call('DEL', lead_key)
end
redis.call('DEL', detached_key(member))
if lead ~= '' then
  -- A follower of ``lead``'s call gives up: it leaves that call's followers.
  redis.call('ZREM', base .. 'followers:' .. lead, member)
  redis.call('DEL', base .. 'wake:' .. member)
end
-- The set stays: the first follower to ask again takes the call over, and its followers.
return wake_followers('!', place_ms, false)
"""
)

_FLIGHT_RENEW = (
    _FLIGHT
    + """
local lease_ms = tonumber(ARGV[3])
if redis.call('GET', lead_key) ~= member then
  -- Detached (forget): its lease goes on under that name while it runs.
  return redis.call('PEXPIRE', detached_key(member), int(lease_ms))
end
redis.call('PEXPIRE', lead_key, int(lease_ms))
keep_token(lease_ms)
return 1
"""
)

_FLIGHT_REFRESH = (
    _FLIGHT
    + """
local leader, place_ms = ARGV[3], tonumber(ARGV[4])
local followers_key = base .. 'followers:' .. leader
local place = redis.call('ZSCORE', followers_key, member)
if not place or tonumber(place) <= now then
  return 0
end
redis.call('ZADD', followers_key, int(now + place_ms), member)
keep_followers(followers_key)
return 1
"""
)

_FLIGHT_FORGET = (
    _FLIGHT
    + """
local leader = redis.call('GET', lead_key)
if leader then
  local lease = redis.call('PTTL', lead_key)
  if lease > 0 then
    redis.call('SET', detached_key(leader), '1', 'PX', lease)
  end
end
return redis.call('DEL', lead_key, outcome_key)
"""
)

_FLIGHT_INSPECT = (
    _FLIGHT
    + """
local leader = redis.call('GET', lead_key)
if not leader then
  return {0, 0, ''}
end
return {1, redis.call('ZCOUNT', base .. 'followers:' .. leader, '(' .. int(now), '+inf'), leader}
"""
)

FLIGHT_JOIN = Script("flight_join", _FLIGHT_JOIN)
FLIGHT_FINISH = Script("flight_finish", _FLIGHT_FINISH)
FLIGHT_ABANDON = Script("flight_abandon", _FLIGHT_ABANDON)
FLIGHT_RENEW = Script("flight_renew", _FLIGHT_RENEW)
FLIGHT_REFRESH = Script("flight_refresh", _FLIGHT_REFRESH)
FLIGHT_FORGET = Script("flight_forget", _FLIGHT_FORGET)
FLIGHT_INSPECT = Script("flight_inspect", _FLIGHT_INSPECT)

#: The scripts of single-flight (to ``SCRIPT LOAD`` up front).
FLIGHT_SCRIPTS = (
    FLIGHT_JOIN,
    FLIGHT_FINISH,
    FLIGHT_ABANDON,
    FLIGHT_RENEW,
    FLIGHT_REFRESH,
    FLIGHT_FORGET,
    FLIGHT_INSPECT,
)


# --- calls -----------------------------------------------------------------------------------


def _keep(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"keep_ms must be an int of milliseconds >= 0, got {value!r}")
    return value


def flight_join(
    keys: FlightKeys, member: str, *, lease_ms: int, place_ms: int, previous: str = ""
) -> Call:
    """Get the outcome, lead the flight, or follow it: :func:`parse_flight_join`.

    ``previous``: the leader of the call ``member`` followed so far; if ``member`` leads now,
    it takes over that call's followers."""
    args = (keys.base, check_id(member, "member"), check_ms(lease_ms, "lease_ms"))
    return Call(FLIGHT_JOIN, keys.keys, (*args, check_ms(place_ms, "place_ms"), previous))


def flight_finish(
    keys: FlightKeys, leader: str, outcome: bytes, *, keep_ms: int, place_ms: int
) -> Call:
    """Wake the call's followers with ``outcome``; keep it ``keep_ms`` if still the key's call.
    The reply: how many followers were woken."""
    if not isinstance(outcome, bytes):
        raise TypeError(f"the outcome must be bytes, got {type(outcome).__name__}")
    args = (keys.base, check_id(leader, "leader"), outcome, _keep(keep_ms))
    return Call(FLIGHT_FINISH, keys.keys, (*args, check_ms(place_ms, "place_ms")))


def flight_abandon(keys: FlightKeys, leader: str, *, place_ms: int, lead: str = "") -> Call:
    """Give up leading without an outcome; the followers are told to ask again. ``lead``: the
    call ``leader`` followed (if it did), which it leaves."""
    args = (keys.base, check_id(leader, "leader"), check_ms(place_ms, "place_ms"))
    return Call(FLIGHT_ABANDON, keys.keys, (*args, lead))


def flight_renew(keys: FlightKeys, leader: str, *, lease_ms: int) -> Call:
    """Extend the leader's lease: ``1``, or ``0`` if ``leader`` no longer leads."""
    args = (keys.base, check_id(leader, "leader"), check_ms(lease_ms, "lease_ms"))
    return Call(FLIGHT_RENEW, keys.keys, args)


def flight_refresh(keys: FlightKeys, member: str, leader: str, *, place_ms: int) -> Call:
    """Keep a follower's place in ``leader``'s call: ``1``, or ``0`` if it has none."""
    args = (keys.base, check_id(member, "member"), check_id(leader, "leader"))
    return Call(FLIGHT_REFRESH, keys.keys, (*args, check_ms(place_ms, "place_ms")))


def flight_forget(keys: FlightKeys) -> Call:
    """Detach the current call and drop a kept outcome."""
    return Call(FLIGHT_FORGET, keys.keys, (keys.base, "-"))


def flight_inspect(keys: FlightKeys) -> Call:
    """Whether a call is in flight, and how many followers wait: :func:`parse_flight_inspect`."""
    return Call(FLIGHT_INSPECT, keys.keys, (keys.base, "-"))


# --- replies ---------------------------------------------------------------------------------


class Following(NamedTuple):
    """The caller follows ``lead``'s call: block on its wake list for at most ``wait_ms``."""

    wait_ms: int
    lead: str


class Done(NamedTuple):
    """The flight's outcome, as its leader stored it."""

    outcome: bytes


def parse_flight_join(reply: object) -> Granted | Following | Done:
    """Read the reply of :func:`flight_join`."""
    state, value = reply_pair(reply, FLIGHT_JOIN)
    if state == 2:
        if not isinstance(value, bytes):
            raise ValueError(f"unexpected outcome in the reply of flight_join: {value!r}")
        return Done(value)
    if state == 1:
        return Granted(reply_int(value, FLIGHT_JOIN))
    assert isinstance(reply, list | tuple)
    lead = reply[2] if len(reply) > 2 else None
    if not isinstance(lead, bytes):
        raise ValueError(f"unexpected reply of flight_join: {reply!r}")
    return Following(max(0, reply_int(value, FLIGHT_JOIN)), lead.decode())


def parse_flight_wake(message: bytes) -> Done | None:
    """Read a follower's wake-up: the outcome, or ``None`` for "the leader gave up: ask again"."""
    if message.startswith(b"="):
        return Done(message[1:])
    return None


def parse_flight_inspect(reply: object) -> tuple[bool, int, str | None]:
    """Read the reply of :func:`flight_inspect`: (in flight, live followers, the leader's
    member id or None)."""
    busy, followers = reply_pair(reply, FLIGHT_INSPECT)
    return bool(busy), reply_int(followers, FLIGHT_INSPECT), reply_id(reply, FLIGHT_INSPECT)
