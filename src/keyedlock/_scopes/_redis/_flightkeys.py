"""The names of one single-flight key's structures on the server (the scripts:
:mod:`._flightscripts`).

Key layout
==========

::

    <prefix>{<tag>}:flight:lead              string  the leader's id, expiring with its lease
    <prefix>{<tag>}:flight:outcome           string  the last outcome, kept ``ttl`` (if any)
    <prefix>{<tag>}:flight:token             string  the fencing counter of leaders
    <prefix>{<tag>}:flight:followers:<lead>  zset    follower id -> expiry of its place, for
                                                     the call that <lead> leads
    <prefix>{<tag>}:flight:wake:<id>         list    a follower's wake-up
    <prefix>{<tag>}:flight:detached:<lead>   string  a call detached by forget, expiring
                                                     with its leader's lease
"""

from __future__ import annotations

from dataclasses import dataclass

from ._lua import key_base

__all__ = ["FlightKeys", "flight_keys"]


@dataclass(frozen=True, slots=True)
class FlightKeys:
    """The names of one single-flight key's structures (see the module docstring)."""

    lead: bytes
    outcome: bytes
    token: bytes
    base: bytes

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The KEYS of every flight script, in order."""
        return (self.lead, self.outcome, self.token)

    def wake(self, member: str) -> bytes:
        """The wake list of the follower ``member``."""
        return self.base + b"wake:" + member.encode()

    def followers(self, lead: str) -> bytes:
        """The followers of the call ``lead`` leads."""
        return self.base + b"followers:" + lead.encode()


def flight_keys(prefix: str, key: bytes) -> FlightKeys:
    """The structures of the single flight on the encoded ``key`` under ``prefix``."""
    base = key_base(prefix, key) + b":flight:"
    return FlightKeys(
        lead=base + b"lead", outcome=base + b"outcome", token=base + b"token", base=base
    )
