"""One acquisition of a lock key in Redis, as the cluster scope records it.

An :class:`Attempt` is the record :class:`~._lockscope.RedisScope` keeps for one local holder:
its waiter id on the server, whether it waits or holds the key, the fencing token it was
granted, when its lease runs out, and how many of this process's callers queue behind it.
:func:`lose` marks a hold's lease lost, once, and logs it.

Losing the lease: a renewal that finds the key no longer its own (the server restarted, or
the process was stopped past its lease), or that cannot reach the server until the lease is
over, marks the attempt and its hold ``lost``; so does a release that the server refuses
(the script only deletes its own grant). The backend then raises LeaseLost.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final, Protocol, cast

from ..._core import Hold
from ..._errors import shown_key
from ..._ki import internal
from ..._log import logger
from ._names import RedisKey, new_id

__all__ = [
    "HELD",
    "WAITING",
    "Attempt",
    "Fenced",
    "LocalQueue",
    "lose",
    "nobody",
    "not_held_error",
]

#: An attempt's states: waiting in the server's queue, or holding the key.
WAITING: Final = 0
HELD: Final = 1


class Fenced(Protocol):
    """The public attributes of a cluster-scope context, which the scope keeps up to date."""

    token: int
    lost: bool


def not_held_error(local_key: object) -> RuntimeError:
    """The error of a release by a caller that does not hold ``local_key`` in Redis."""
    return RuntimeError(
        f"release of key {shown_key(local_key)}, which this caller does not hold in Redis "
        "(not acquired yet: still waiting for another process, or released already)"
    )


@internal
class Attempt:
    """One acquisition of a key in Redis by one local holder (its life: :mod:`._lockscope`)."""

    __slots__ = ("asked", "behind", "expires", "key", "lost", "state", "token", "waiter")

    def __init__(self, key: RedisKey) -> None:
        self.key = key
        self.waiter = new_id()
        self.state = WAITING
        self.token = 0
        self.lost = False
        #: The count of this process's callers queued behind it, as last sent to the server.
        self.behind = 0
        #: The count its last acquire carried (a report sent meanwhile may reach the server
        #: first, and find no place there to count it in).
        self.asked = 0
        #: When the lease runs out at the latest, by this process's clock (monotonic).
        self.expires = 0.0


#: ``local(key)``: the key's holder in this process (None if free) and how many callers
#: wait behind it here.
LocalQueue = Callable[[Hashable], tuple[Hold | None, int]]


def nobody(local_key: Hashable) -> tuple[Hold | None, int]:
    """The :data:`LocalQueue` of a scope with no backend (any more): nobody anywhere."""
    return None, 0


def lose(hold: Hold, attempt: Attempt, why: str) -> None:
    """Mark ``hold``'s lease lost (its exit raises LeaseLost) and log it, once."""
    if attempt.lost:
        return
    attempt.lost = True
    cast(Fenced, hold).lost = True
    logger.warning(
        "the lease of key %r (fencing token %d) was lost while it was held: %s",
        attempt.key,
        attempt.token,
        why,
    )
