"""Places in line that this process has given up, while their withdraw is on its way.

A cancelled or interrupted waiter leaves its place in Redis through the
renewal thread (the task or thread that gave up must not wait for a round
trip). Until that call has surely gone through, the process leaves the place
out of the counts it reports (``waiters``, ``statistics``): Redis is told
which places to skip in the same round trip that counts them.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from time import monotonic

from ..._ki import internal

__all__ = ["Leaving"]


@internal
class Leaving:
    """The places of one scope on their way out: waiter id -> (local key, when to forget)."""

    __slots__ = ("_lock", "_places", "keep")

    def __init__(self, keep: float) -> None:
        #: How long an entry stays: past it, the withdraw has gone through or the place
        #: expired in Redis (nobody refreshes it any more).
        self.keep = keep
        self._places: dict[str, tuple[Hashable, float]] = {}
        self._lock = threading.Lock()

    def add(self, waiter: str, local_key: Hashable) -> None:
        now = monotonic()
        with self._lock:
            self._forget(now)
            self._places[waiter] = (local_key, now + self.keep)

    def of(self, local_key: Hashable) -> list[str]:
        """The waiter ids of ``local_key`` still on their way out."""
        if not self._places:
            return []
        with self._lock:
            self._forget(monotonic())
            return [waiter for waiter, (key, _) in self._places.items() if key == local_key]

    def _forget(self, now: float) -> None:
        """Under the lock: drop the entries due by ``now`` (the oldest are first: every
        entry stays as long)."""
        places = self._places
        while places:
            first = next(iter(places))
            if places[first][1] > now:
                return
            del places[first]
