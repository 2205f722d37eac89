"""Helpers of the cluster group: a process asleep in its acquire, and FIFO order measured."""

from __future__ import annotations

import bisect
import time
from collections.abc import Sequence
from typing import Final

__all__ = ["bisect_overtakes", "wait_blocked"]

_TIMEOUT: Final = 120.0
#: How long a waiter is left blocked before the release, once it is asleep.
SETTLE: Final = 0.001


def wait_blocked(pid: int) -> None:
    """Return once process ``pid`` is asleep (state ``S`` in ``/proc/PID/stat``: in its
    acquire, as the caller knows it does nothing else), plus :data:`SETTLE`."""
    path = f"/proc/{pid}/stat"
    deadline = time.monotonic() + _TIMEOUT
    while True:
        try:
            with open(path, "rb") as f:
                stat = f.read()
        except OSError:  # no /proc: the fixed wait alone
            break
        if stat.rsplit(b")", 1)[1].split()[0] == b"S":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} never blocked in its acquire")
        time.sleep(50e-6)
    time.sleep(SETTLE)


def bisect_overtakes(arrivals_in_grant_order: Sequence[int]) -> list[int]:
    """For each acquisition (in the order they were granted), how many acquisitions granted
    before it had arrived after it: 0 everywhere is strict FIFO."""
    seen: list[int] = []
    overtakes = []
    for arrived in arrivals_in_grant_order:
        overtakes.append(len(seen) - bisect.bisect_right(seen, arrived))
        bisect.insort(seen, arrived)
    return overtakes
