"""The lock's server-side scripts: a fair, fenced, leased lock on Redis or Valkey.

Nothing here talks to a server: the Lua sources and the names they work on (see :mod:`._lua`
for names and tokens; :mod:`._lockcalls` builds each call and reads its reply).

Key layout
==========

::

    <prefix>{<tag>}:owner         string   the holder's waiter id, expiring with its lease (PX)
    <prefix>{<tag>}:queue         list     waiter ids in arrival order (head = next in line)
    <prefix>{<tag>}:places        zset     waiter id -> expiry of its place (server ms)
    <prefix>{<tag>}:leases        hash     waiter id -> the lease (ms) it asked for
    <prefix>{<tag>}:token         string   the fencing counter (its value: the latest grant's)
    <prefix>{<tag>}:wake:<id>     list     a wake-up for waiter <id>: the token it was handed

The queue, places and leases expire together when the last place expires, so the structures
of crashed waiters do not outlive them. A waiter id names one acquisition attempt (unique per
attempt, not per process), so that a late wake-up of an earlier attempt can never be mistaken
for a grant.

The lock
========

``acquire(waiter, lease_ms, place_ms, queue)`` grants the key when it is free (no owner: it
was released or its lease ran out) and the waiter is first in line (the queue is empty, or
every place ahead of it expired): ``owner = waiter`` with a lease of ``lease_ms``, a new token,
and the waiter leaves the queue. The reply is ``[1, token]``. Otherwise, with ``queue``, the
waiter takes a place at the tail of the queue (once: asking again keeps its place and pushes
its expiry to ``now + place_ms``); the reply is ``[0, pttl]``: the holder's remaining lease.
The uncontended case (no owner, no queue) is one ``SET NX PX`` and one ``INCR``.

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
waiting places in one round trip per node: a batch of ``EVALSHA`` calls.

``withdraw(waiter)``: the waiter leaves (timeout, cancellation). If the key was handed to it
meanwhile, it is released and handed on (reply ``1``); otherwise the reply is ``0``.

``inspect()``: ``[held, waiting, owner]``: whether anyone holds the key, how many live places
the queue has, and the holder's waiter id (``""`` if none; read only).

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
"""

from __future__ import annotations

from dataclasses import dataclass

from ._lua import CLOCK, TOKENS, Script, key_base

__all__ = [
    "ACQUIRE",
    "INSPECT",
    "LOCK_SCRIPTS",
    "REFRESH",
    "RELEASE",
    "RENEW",
    "WITHDRAW",
    "LockKeys",
    "lock_keys",
]


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
    base = key_base(prefix, key)
    return LockKeys(
        owner=base + b":owner",
        queue=base + b":queue",
        places=base + b":places",
        leases=base + b":leases",
        token=base + b":token",
        wake_prefix=base + b":wake:",
    )


# --- Lua -------------------------------------------------------------------------------------

# KEYS: owner, queue, places, leases, token. ARGV[1]: the wake-list prefix; ARGV[2]: the
# waiter id; the rest depends on the script.
_LOCK = (
    """
local owner_key, queue_key, places_key, leases_key, token_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local wake_prefix, waiter = ARGV[1], ARGV[2]
"""
    + CLOCK
    + TOKENS
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
local lease_ms, place_ms, queue = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5] ~= '0'
-- Uncontended: nobody waits, and nobody holds the key.
if redis.call('EXISTS', queue_key) == 0
    and redis.call('SET', owner_key, waiter, 'NX', 'PX', int(lease_ms)) then
  return {1, next_token(lease_ms)}
end
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
if queue then
  place(waiter, lease_ms, place_ms)
end
keep_queue()
return {0, redis.call('PTTL', owner_key)}
"""
)

_RELEASE = (
    _LOCK
    + """
-- Uncontended: nobody waits.
if redis.call('EXISTS', queue_key) == 0 then
  if redis.call('GET', owner_key) == waiter then
    redis.call('DEL', owner_key)
    return 1
  end
  return 0
end
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

_INSPECT = (
    _LOCK
    + """
-- ARGV[3...]: places of the asking process that are on their way out (a withdraw queued
-- in its renewal thread): not counted.
local places = redis.call('ZCOUNT', places_key, '(' .. int(now), '+inf')
for i = 3, #ARGV do
  local score = redis.call('ZSCORE', places_key, ARGV[i])
  if score and tonumber(score) > tonumber(int(now)) then
    places = places - 1
  end
end
return {
  redis.call('EXISTS', owner_key),
  places,
  redis.call('GET', owner_key) or ''
}
"""
)

ACQUIRE = Script("acquire", _ACQUIRE)
RELEASE = Script("release", _RELEASE)
RENEW = Script("renew", _RENEW)
REFRESH = Script("refresh", _REFRESH)
WITHDRAW = Script("withdraw", _WITHDRAW)
INSPECT = Script("inspect", _INSPECT)

#: The scripts of the lock (to ``SCRIPT LOAD`` up front).
LOCK_SCRIPTS = (ACQUIRE, RELEASE, RENEW, REFRESH, WITHDRAW, INSPECT)
