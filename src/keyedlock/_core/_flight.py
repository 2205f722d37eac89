"""The single-flight state machine: the same per-key machine as the lock.

The caller running a key's call (the *leader*) is the key's holder in a
:class:`~keyedlock._core._keytable.KeyTable`; callers arriving meanwhile (the
*followers*) are its waiters. The two differ from a lock only at the end:

- the call finished (value or exception): every follower queued at that
  moment gets the outcome (state ABORTED, ``cause`` = the outcome) and the key
  is free;
- the leader gave up without an outcome (cancelled, KeyboardInterrupt): the
  key is handed to the earliest follower, which takes over and runs its own
  function (plain hand-off, as a lock release does).

``forget`` detaches the current call: new callers start a new one, while the
detached call still serves the followers it had and never removes the newer
call when it ends. With ``ttl`` a successful value is kept for reuse.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Final

from ._keytable import RELEASED, Hold, KeyTable

__all__ = ["MISS", "FlightTable"]

#: What :meth:`FlightTable.cached` returns when there is no fresh value.
MISS: Final = object()


class FlightTable(KeyTable):
    """Calls in flight by key (``holds``) and, with ``ttl``, recent values."""

    __slots__ = ("results", "ttl")

    def __init__(self, ttl: float = 0.0) -> None:
        super().__init__(None)
        self.ttl = ttl
        # key -> (expiry, value); insertion order is expiry order (one ttl).
        self.results: dict[Hashable, tuple[float, object]] = {}

    def release(self, key: Hashable, expected: Hold | None = None, abort: object = None) -> None:
        """The leader ``expected`` gave up without an outcome: the earliest follower takes over.

        Works for a detached call too (it hands off within its own group).
        """
        if expected is None or abort is not None:
            raise TypeError("FlightTable.release needs the leader and no abort; use finish()")
        with self.guard:
            nxt = self._pass_on(key, expected)
        self._wake_next(key, nxt)

    def finish(
        self, key: Hashable, leader: Hold, outcome: object, value: object, now: float
    ) -> bool:
        """The leader's call ended: give ``outcome`` to every follower queued now.

        ``value`` is the successful result to keep for ``ttl`` seconds from
        ``now`` (MISS for an error: errors are never kept). A detached
        (forgotten) call keeps nothing. Returns True if any follower shared it.
        """
        with self.guard:
            if self.holds.get(key) is leader and value is not MISS and self.ttl > 0:
                self.results.pop(key, None)
                self.results[key] = (now + self.ttl, value)
                self._expire(now)
            queue = leader.waiters
            if queue is None or not queue.live:
                leader.state = RELEASED
                if self.holds.get(key) is leader:
                    del self.holds[key]
                followers = []
            else:
                followers = self._abort(key, leader, queue, outcome)
        for h in followers:
            h.wake()
        return bool(followers)

    def cached(self, key: Hashable, now: float) -> object:
        """A value kept for ``key`` that is still fresh at ``now``, else MISS."""
        entry = self.results.get(key)
        if entry is None:
            return MISS
        if entry[0] > now:
            return entry[1]
        with self.guard:
            self._expire(now)
        return MISS

    def _expire(self, now: float) -> None:
        """Under the guard: drop every kept value that expired by ``now``."""
        results = self.results
        while results:
            first = next(iter(results))
            if results[first][0] > now:
                break
            del results[first]

    def forget(self, key: Hashable) -> None:
        """Next callers of ``key`` start a new call; drops a kept value."""
        with self.guard:
            self.results.pop(key, None)
            self.holds.pop(key, None)
