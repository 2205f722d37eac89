"""The lock's script calls (script, keys, arguments) and what their replies mean.

See :mod:`._lockscripts` for the protocol; :class:`Granted` is also what a single-flight
leader gets.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final, NamedTuple

from ._lockkeys import LockKeys
from ._lockscripts import (
    ACQUIRE,
    INSPECT,
    REFRESH,
    RELEASE,
    RENEW,
    REPORT,
    WITHDRAW,
)
from ._lua import Call, Script, check_id, check_ms, reply_id, reply_int, reply_pair

__all__ = [
    "RING",
    "Granted",
    "Inspected",
    "Refreshed",
    "Waiting",
    "acquire",
    "inspect",
    "parse_acquire",
    "parse_inspect",
    "parse_refresh",
    "parse_wake",
    "refresh",
    "release",
    "renew",
    "report",
    "ring",
    "withdraw",
]


# --- calls -----------------------------------------------------------------------------------


def _count(behind: int) -> int:
    """``behind``, checked: a count of callers (an int >= 0, not a bool)."""
    if type(behind) is not int or behind < 0:
        raise ValueError(f"behind must be an int >= 0, not {behind!r}")
    return behind


def acquire(
    keys: LockKeys,
    waiter: str,
    *,
    lease_ms: int,
    place_ms: int,
    queue: bool = True,
    behind: int = 0,
) -> Call:
    """Take the key, or (``queue``) a place in line: :func:`parse_acquire` reads the reply.
    ``behind``: the callers of this process queued behind this one."""
    args = (keys.wake_prefix, check_id(waiter, "waiter"), check_ms(lease_ms, "lease_ms"))
    flags = (1 if queue else 0, _count(behind))
    return Call(ACQUIRE, keys.keys, (*args, check_ms(place_ms, "place_ms"), *flags))


def release(keys: LockKeys, waiter: str) -> Call:
    """Release the key if ``waiter`` owns it and hand it on: ``1``, or ``0`` if not the owner."""
    return Call(RELEASE, keys.keys, (keys.wake_prefix, check_id(waiter, "waiter")))


def renew(keys: LockKeys, waiter: str, *, lease_ms: int, behind: int = 0) -> Call:
    """Extend the owner's lease to ``lease_ms``: ``1``, or ``0`` if ``waiter`` does not own it.
    ``behind``: the callers of this process queued behind it, now."""
    args = (keys.wake_prefix, check_id(waiter, "waiter"), check_ms(lease_ms, "lease_ms"))
    return Call(RENEW, keys.keys, (*args, _count(behind)))


def refresh(keys: LockKeys, waiter: str, *, lease_ms: int, place_ms: int, behind: int = 0) -> Call:
    """Keep what ``waiter`` has on the key: :func:`parse_refresh` reads the reply."""
    args = (keys.wake_prefix, check_id(waiter, "waiter"), check_ms(lease_ms, "lease_ms"))
    return Call(REFRESH, keys.keys, (*args, check_ms(place_ms, "place_ms"), _count(behind)))


def report(keys: LockKeys, waiter: str, *, behind: int, keep_ms: int) -> Call:
    """Say how many callers of this process wait behind ``waiter`` (counted while it holds
    the key or has a place; kept ``keep_ms`` at least): ``1``, or ``0`` if it has neither."""
    args = (keys.wake_prefix, check_id(waiter, "waiter"), _count(behind))
    return Call(REPORT, keys.keys, (*args, check_ms(keep_ms, "keep_ms")))


def withdraw(keys: LockKeys, waiter: str) -> Call:
    """Leave the queue; ``1`` if the key had been handed to ``waiter`` (it is handed on)."""
    return Call(WITHDRAW, keys.keys, (keys.wake_prefix, check_id(waiter, "waiter")))


#: What a waiter's alarm pushes to its wake list at its deadline (no token: no grant).
RING: Final = b"deadline"

#: A waiter's alarm (see :mod:`._alarms`): if the waiter ARGV[3] still has a place in the zset
#: KEYS[2], push ARGV[1] to its wake list KEYS[1], which expires after ARGV[2] ms. (A push ends
#: its pop at once; a waiter that left, granted or withdrawn, is not rung.)
_RING = Script(
    "ring",
    "if not redis.call('ZSCORE', KEYS[2], ARGV[3]) then return 0 end "
    "redis.call('LPUSH', KEYS[1], ARGV[1]) redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1",
)


def ring(keys: LockKeys, waiter: str, keep_ms: int) -> Call:
    """Ring the wake list of ``waiter`` (kept ``keep_ms``): its pop ends with RING."""
    args = (RING, check_ms(keep_ms, "keep_ms"), check_id(waiter, "waiter"))
    return Call(_RING, (keys.wake(waiter), keys.places), args)


def inspect(
    keys: LockKeys,
    leaving: Iterable[str] = (),
    *,
    waiter: str | None = None,
    behind: int = 0,
    keep_ms: int = 1,
) -> Call:
    """Whether the key is held, and who waits, not counting the places of ``leaving``
    (waiters whose withdraw is on its way) nor the callers behind ``waiter`` (this process's
    attempt, if any: its count ``behind`` is reported instead): :func:`parse_inspect`."""
    own = "-" if waiter is None else check_id(waiter, "waiter")
    args = (keys.wake_prefix, own, _count(behind), check_ms(keep_ms, "keep_ms"))
    return Call(INSPECT, keys.keys, (*args, *leaving))


# --- replies ---------------------------------------------------------------------------------


class Granted(NamedTuple):
    """The caller holds the key (or leads the flight) with this fencing token."""

    token: int


class Waiting(NamedTuple):
    """The caller waits: block on its wake list for at most ``wait_ms`` (the holder's lease)."""

    wait_ms: int


class Refreshed(enum.IntEnum):
    """What :func:`refresh` found the waiter to have."""

    LOST = 0
    WAITING = 1
    HELD = 2


def parse_acquire(reply: object) -> Granted | Waiting:
    """Read the reply of :func:`acquire`."""
    state, value = reply_pair(reply, ACQUIRE)
    if state == 1:
        return Granted(reply_int(value, ACQUIRE))
    return Waiting(max(0, reply_int(value, ACQUIRE)))


def parse_refresh(reply: object) -> Refreshed:
    """Read the reply of :func:`refresh`."""
    return Refreshed(reply_int(reply, REFRESH))


def parse_wake(message: bytes | str) -> Granted:
    """Read what a lock waiter popped from its wake list: the token it was handed."""
    return Granted(int(message))


class Inspected(NamedTuple):
    """What :func:`inspect` found."""

    #: Whether anyone holds the key.
    held: bool
    #: How many live places wait in the key's queue.
    places: int
    #: The holder's waiter id, or None.
    owner: str | None
    #: How many callers wait behind the holder and the places, in their processes (those
    #: of the asking process's own attempt not counted).
    behind: int


def parse_inspect(reply: object) -> Inspected:
    """Read the reply of :func:`inspect`."""
    held, places = reply_pair(reply, INSPECT)
    if not isinstance(reply, list | tuple) or len(reply) != 4:
        raise ValueError(f"unexpected reply of {INSPECT.name}: {reply!r}")
    behind = reply_int(reply[3], INSPECT)
    return Inspected(bool(held), reply_int(places, INSPECT), reply_id(reply, INSPECT), behind)
