"""The lock's script calls (script, keys, arguments) and what their replies mean.

See :mod:`._lockscripts` for the protocol; :class:`Granted` is also what a single-flight
leader gets.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import NamedTuple

from ._lockscripts import ACQUIRE, INSPECT, REFRESH, RELEASE, RENEW, WITHDRAW, LockKeys
from ._lua import Call, check_id, check_ms, reply_id, reply_int, reply_pair

__all__ = [
    "Granted",
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
    "withdraw",
]


# --- calls -----------------------------------------------------------------------------------


def acquire(
    keys: LockKeys, waiter: str, *, lease_ms: int, place_ms: int, queue: bool = True
) -> Call:
    """Take the key, or (``queue``) a place in line: :func:`parse_acquire` reads the reply."""
    args = (keys.wake_prefix, check_id(waiter, "waiter"), check_ms(lease_ms, "lease_ms"))
    return Call(ACQUIRE, keys.keys, (*args, check_ms(place_ms, "place_ms"), 1 if queue else 0))


def release(keys: LockKeys, waiter: str) -> Call:
    """Release the key if ``waiter`` owns it and hand it on: ``1``, or ``0`` if not the owner."""
    return Call(RELEASE, keys.keys, (keys.wake_prefix, check_id(waiter, "waiter")))


def renew(keys: LockKeys, waiter: str, *, lease_ms: int) -> Call:
    """Extend the owner's lease to ``lease_ms``: ``1``, or ``0`` if ``waiter`` does not own it."""
    args = (keys.wake_prefix, check_id(waiter, "waiter"), check_ms(lease_ms, "lease_ms"))
    return Call(RENEW, keys.keys, args)


def refresh(keys: LockKeys, waiter: str, *, lease_ms: int, place_ms: int) -> Call:
    """Keep what ``waiter`` has on the key: :func:`parse_refresh` reads the reply."""
    args = (keys.wake_prefix, check_id(waiter, "waiter"), check_ms(lease_ms, "lease_ms"))
    return Call(REFRESH, keys.keys, (*args, check_ms(place_ms, "place_ms")))


def withdraw(keys: LockKeys, waiter: str) -> Call:
    """Leave the queue; ``1`` if the key had been handed to ``waiter`` (it is handed on)."""
    return Call(WITHDRAW, keys.keys, (keys.wake_prefix, check_id(waiter, "waiter")))


def inspect(keys: LockKeys, leaving: Iterable[str] = ()) -> Call:
    """Whether the key is held, and how many places wait, not counting those of
    ``leaving`` (waiters whose withdraw is on its way): :func:`parse_inspect`."""
    return Call(INSPECT, keys.keys, (keys.wake_prefix, "-", *leaving))


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


def parse_inspect(reply: object) -> tuple[bool, int, str | None]:
    """Read the reply of :func:`inspect`: (held, live places, the holder's waiter id or
    None)."""
    held, places = reply_pair(reply, INSPECT)
    return bool(held), reply_int(places, INSPECT), reply_id(reply, INSPECT)
