"""Building the statistics snapshots from holds (see :mod:`keyedlock._statistics`)."""

from __future__ import annotations

import os
from collections.abc import Hashable, Iterable
from time import monotonic

from .._core import Hold
from .._runtime import describe_owner
from .._statistics import LockStatistics, Owner

__all__ = ["by_runtime", "lock_statistics", "owner_of", "since"]


def owner_of(hold: Hold | None, pid: int | None) -> Owner | None:
    """Who ``hold`` belongs to (None for None)."""
    if hold is None:
        return None
    runtime, name = describe_owner(hold._owner)
    return Owner(runtime, name, pid)


def since(hold: Hold | None) -> float | None:
    """Seconds since ``hold`` took its key, if that was recorded."""
    started = getattr(hold, "_since", None)
    return None if started is None else max(0.0, monotonic() - started)


def by_runtime(holds: Iterable[Hold], elsewhere: int = 0) -> dict[str, int]:
    """How many of ``holds`` belong to each runtime; ``elsewhere`` more (callers that
    other processes have in a wider scope) under ``"process"``."""
    counts: dict[str, int] = {}
    for hold in holds:
        runtime = describe_owner(hold._owner)[0]
        counts[runtime] = counts.get(runtime, 0) + 1
    if elsewhere > 0:
        counts["process"] = elsewhere
    return counts


def lock_statistics(
    shown: Hashable, locked: bool, holder: Hold | None, waiting: list[Hold], elsewhere: int = 0
) -> LockStatistics:
    """The snapshot of a key of this process's table: ``holder`` (if known), ``waiting``, and
    ``elsewhere`` waiters of other processes (those a wider scope counts)."""
    elsewhere = max(0, elsewhere)
    return LockStatistics(
        key=shown,
        locked=locked,
        holder=owner_of(holder, os.getpid()),
        held_for=since(holder),
        waiters=len(waiting) + elsewhere,
        waiters_by_runtime=by_runtime(waiting, elsewhere),
    )
