"""The lock's server-side scripts: a fair, fenced, leased lock on Redis or Valkey.

Nothing here talks to a server: the Lua sources only (:mod:`._lockkeys` names the structures
they work on, :mod:`._lua` has the shared names and tokens, and :mod:`._lockcalls` builds each
call and reads its reply).

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

``inspect(waiter, behind)``: ``[held, waiting, owner, behind]``: whether anyone holds the
key, how many live places the queue has, the holder's waiter id (``""`` if none), and how
many callers wait in the processes of the holder and of the live places, behind them (not
counting the place of ``waiter``, the asking process's own attempt, nor the callers behind
it: the process counts those itself, and reports their count).

Callers behind
--------------

A process sends at most one caller per key to the server; the others queue in the process,
behind it. So that ``waiters(key)`` counts every caller cluster-wide, each process keeps the
number of its callers queued behind its attempt in ``behind`` (waiter id -> count; no entry
for 0): ``acquire``, ``renew`` and ``refresh`` carry it (``behind``), and ``report(waiter,
behind, keep_ms)`` sets it when it changes in between (sent by the renewal thread). It counts
only while its waiter holds the key or has a live place; an entry goes with its waiter's
release, withdraw or expired place, and the hash expires ``keep_ms`` after its last write.
(Why waiters are woken by a list, not pub/sub: docs/design.md, "The cluster scope's wake-ups".)
"""

from __future__ import annotations

from ._lua import CLOCK, TOKENS, Script

__all__ = [
    "ACQUIRE",
    "INSPECT",
    "LOCK_SCRIPTS",
    "REFRESH",
    "RELEASE",
    "RENEW",
    "REPORT",
    "WITHDRAW",
]


# --- Lua -------------------------------------------------------------------------------------

# KEYS: owner, queue, places, leases, token, behind. ARGV[1]: the wake-list prefix; ARGV[2]: the
# waiter id; the rest depends on the script.
_LOCK = (
    """
local owner_key, queue_key, places_key, leases_key, token_key, behind_key =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local wake_prefix, waiter = ARGV[1], ARGV[2]
"""
    + CLOCK
    + TOKENS
    + """
-- Take a waiter out of the queue, wherever it is (its count of callers behind stays).
local function unqueue(id)
  redis.call('LREM', queue_key, 1, id)
  redis.call('ZREM', places_key, id)
  redis.call('HDEL', leases_key, id)
end

-- A waiter leaves for good: out of the queue, and its callers behind no longer count.
local function forget(id)
  unqueue(id)
  redis.call('HDEL', behind_key, id)
end

-- Set how many callers of its process wait behind a waiter (0: none, no entry); the hash
-- is kept for at least keep_ms.
local function set_behind(id, count, keep_ms)
  if count > 0 then
    redis.call('HSET', behind_key, id, count)
    if redis.call('PTTL', behind_key) < keep_ms then
      redis.call('PEXPIRE', behind_key, int(keep_ms))
    end
  else
    redis.call('HDEL', behind_key, id)
  end
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
    redis.call('HDEL', behind_key, head)
  end
end

-- Make a waiter the owner; it leaves the queue. Returns its token.
local function grant(id, lease_ms)
  redis.call('SET', owner_key, id, 'PX', int(lease_ms))
  unqueue(id)
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
local behind = tonumber(ARGV[6])
-- Uncontended: nobody waits, and nobody holds the key.
if redis.call('EXISTS', queue_key) == 0
    and redis.call('SET', owner_key, waiter, 'NX', 'PX', int(lease_ms)) then
  if behind > 0 then
    set_behind(waiter, behind, lease_ms)
  end
  return {1, next_token(lease_ms)}
end
prune()
local owner = redis.call('GET', owner_key)
if owner == waiter then
  -- Handed to this waiter while it was not looking: it holds the key from now on.
  redis.call('PEXPIRE', owner_key, int(lease_ms))
  redis.call('DEL', wake_prefix .. waiter)
  unqueue(waiter)
  set_behind(waiter, behind, lease_ms)
  keep_queue()
  return {1, current_token(lease_ms)}
end
if not owner then
  local head = live_head()
  if not head or head == waiter then
    local token = grant(waiter, lease_ms)
    set_behind(waiter, behind, lease_ms)
    keep_queue()
    return {1, token}
  end
  -- Free, but another waiter is first in line: its turn (it is woken).
  hand_on()
end
if queue then
  place(waiter, lease_ms, place_ms)
  set_behind(waiter, behind, place_ms)
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
    redis.call('HDEL', behind_key, waiter)
    return 1
  end
  return 0
end
prune()
local owner = redis.call('GET', owner_key)
local released = 0
if owner == waiter then
  redis.call('DEL', owner_key)
  redis.call('HDEL', behind_key, waiter)
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
local lease_ms, behind = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('GET', owner_key) ~= waiter then
  return 0
end
redis.call('PEXPIRE', owner_key, int(lease_ms))
keep_token(lease_ms)
set_behind(waiter, behind, lease_ms)
return 1
"""
)

_REFRESH = (
    _LOCK
    + """
local lease_ms, place_ms, behind = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
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
  set_behind(waiter, behind, lease_ms)
  state = 2
elseif redis.call('ZSCORE', places_key, waiter) then
  place(waiter, lease_ms, place_ms)
  set_behind(waiter, behind, place_ms)
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
  redis.call('HDEL', behind_key, waiter)
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

_REPORT = (
    _LOCK
    + """
-- ARGV[3]: how many callers wait behind the waiter in its process; ARGV[4]: keep_ms.
local behind, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('GET', owner_key) == waiter or redis.call('ZSCORE', places_key, waiter) then
  set_behind(waiter, behind, keep_ms)
  return 1
end
return 0
"""
)

_INSPECT = (
    _LOCK
    + """
-- ARGV[2]: the asking process's own attempt ('-': none), whose count of callers behind
-- (ARGV[3], kept ARGV[4] ms) is reported, and neither its place nor that count is summed:
-- the process counts its own. ARGV[5...]: places of the asking process that are on their
-- way out (a withdraw queued in its renewal thread): not counted either.
local count, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local owner = redis.call('GET', owner_key)
if waiter ~= '-' and (owner == waiter or redis.call('ZSCORE', places_key, waiter)) then
  set_behind(waiter, count, keep_ms)
end
-- The live places, but those of the asking process.
local function live(id)
  local score = redis.call('ZSCORE', places_key, id)
  return score and tonumber(score) > tonumber(int(now))
end
local places = redis.call('ZCOUNT', places_key, '(' .. int(now), '+inf')
local mine = {}
mine[waiter] = true
if live(waiter) then
  places = places - 1
end
for i = 5, #ARGV do
  if not mine[ARGV[i]] then
    mine[ARGV[i]] = true
    if live(ARGV[i]) then
      places = places - 1
    end
  end
end
-- The callers behind the holder and the live places, but those of the asking process.
local behind = 0
local entries = redis.call('HGETALL', behind_key)
for i = 1, #entries, 2 do
  local id = entries[i]
  if not mine[id] and (id == owner or live(id)) then
    behind = behind + tonumber(entries[i + 1])
  end
end
return {
  owner and 1 or 0,
  places,
  owner or '',
  behind
}
"""
)

ACQUIRE = Script("acquire", _ACQUIRE)
RELEASE = Script("release", _RELEASE)
RENEW = Script("renew", _RENEW)
REFRESH = Script("refresh", _REFRESH)
WITHDRAW = Script("withdraw", _WITHDRAW)
REPORT = Script("report", _REPORT)
INSPECT = Script("inspect", _INSPECT)

#: The scripts of the lock (to ``SCRIPT LOAD`` up front).
LOCK_SCRIPTS = (ACQUIRE, RELEASE, RENEW, REFRESH, WITHDRAW, REPORT, INSPECT)
