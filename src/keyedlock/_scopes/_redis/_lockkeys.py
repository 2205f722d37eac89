"""The names of one lock key's structures on the server (the scripts: :mod:`._lockscripts`).

Key layout
==========

::

    <prefix>{<tag>}:owner         string   the holder's waiter id, expiring with its lease (PX)
    <prefix>{<tag>}:queue         list     waiter ids in arrival order (head = next in line)
    <prefix>{<tag>}:places        zset     waiter id -> expiry of its place (server ms)
    <prefix>{<tag>}:leases        hash     waiter id -> the lease (ms) it asked for
    <prefix>{<tag>}:token         string   the fencing counter (its value: the latest grant's)
    <prefix>{<tag>}:behind        hash     waiter id -> callers of its process queued behind it
    <prefix>{<tag>}:wake:<id>     list     a wake-up for waiter <id>: the token it was handed

The queue, places and leases expire together when the last place expires, so the structures
of crashed waiters do not outlive them; an entry of ``behind`` counts only while its waiter
holds the key or has a live place. A waiter id names one acquisition attempt (unique per
attempt, not per process), so that a late wake-up of an earlier attempt can never be mistaken
for a grant.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._lua import key_base

__all__ = ["LockKeys", "lock_keys"]


@dataclass(frozen=True, slots=True)
class LockKeys:
    """The names of one lock key's structures (see the module docstring)."""

    owner: bytes
    queue: bytes
    places: bytes
    leases: bytes
    token: bytes
    behind: bytes
    wake_prefix: bytes

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The KEYS of every lock script, in order."""
        return (self.owner, self.queue, self.places, self.leases, self.token, self.behind)

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
        behind=base + b":behind",
        wake_prefix=base + b":wake:",
    )
