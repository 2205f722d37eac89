"""The single-flight state machine: the same per-key machine as the lock.

The caller running a key's call (the *leader*) is the key's holder in a
:class:`~keyedlock._core._keytable.KeyTable`; callers arriving meanwhile (the
*followers*) are its waiters. The two differ from a lock only at the end
(:meth:`FlightTable.conclude`):

- the call finished (value or exception): every follower queued at that
  moment gets the outcome (one store on the queue ends every wait, see
  :class:`~keyedlock._core._keytable.WaitQueue`) and the key is free;
- the leader gave up without an outcome (cancelled, KeyboardInterrupt): the
  key is handed to the earliest follower, which takes over and runs its own
  function (plain hand-off, as a lock release does).

``forget`` detaches the current call: new callers start a new one, while the
detached call still serves the followers it had and never removes the newer
call when it ends. With ``ttl`` a successful value is kept for reuse.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Final

from .._ki import internal
from ._complete import complete
from ._hold import GRANTED, IDLE, RELEASED, WAITING, Hold, Record, new_queue
from ._keytable import KeyTable

__all__ = ["MISS", "FlightTable"]

#: What :meth:`FlightTable.cached` returns when there is no fresh value.
MISS: Final = object()


@internal
class FlightTable(KeyTable):
    """Calls in flight by key (``holds``) and, with ``ttl``, recent values."""

    __slots__ = ("results", "ttl")

    def __init__(self, ttl: float = 0.0) -> None:
        super().__init__(None)
        self.ttl = ttl
        # key -> (expiry, value); insertion order is expiry order (one ttl).
        self.results: dict[Hashable, tuple[float, object]] = {}

    def conclude(
        self, key: Hashable, hold: Hold, outcome: object, value: object = MISS, now: float = 0.0
    ) -> bool:
        """``hold``'s part in the call for ``key`` is over: call it in ``finally``, always.

        If ``hold`` leads the call (it started it or took it over; forgotten
        or not): with an ``outcome`` (not None), every follower queued at this
        moment gets it; with None (it gave up: cancelled, interrupted), the
        earliest follower takes over. ``value`` is the successful result to
        keep for ``ttl`` seconds from ``now`` (MISS for an error: errors are
        never kept); only the key's current call keeps one. If ``hold`` does
        not lead (a follower, or a caller interrupted before it joined),
        nothing changes. Calling it again changes nothing either.

        Returns True if any follower shared the outcome.
        """
        out: Record = []
        guard = self._guard
        try:
            try:  # (the guard taken by hand, as in KeyTable.release: every call concludes)
                guard.acquire()
                state = hold._state
                if state != IDLE and state != GRANTED:
                    return False  # a follower, or concluded already
                holds = self._holds
                is_entry = key in holds and holds[key] is hold
                queue = hold._waiters
                if not is_entry and queue is None:
                    hold._state = RELEASED  # never joined, or detached with nobody waiting
                    return False
                if outcome is None:
                    self._give_up(key, hold, out)
                else:
                    results = self.results
                    keep = is_entry and value is not MISS and self.ttl > 0
                    if keep:
                        if key in results:
                            del results[key]  # re-inserted last: insertion order is expiry order
                        results[key] = (now + self.ttl, value)
                    if queue is not None and queue.live:
                        self._conclude(key, hold, queue, outcome, is_entry, out)
                    else:
                        hold._state = RELEASED
                        if is_entry:
                            del holds[key]
                    if keep:
                        self._expire(now)
            finally:
                try:  # noqa: SIM105 - one call, no window: see KeyTable's module docstring
                    guard.release()
                except RuntimeError:  # an interrupt stopped acquire() before it took it
                    pass
            if out:  # (nobody to wake: no call, for a call nobody shared)
                self._deliver(key, out)
        except BaseException:
            complete(self._deliver, key, out)  # (again if another interrupt lands in it)
            raise
        return outcome is not None and bool(out)

    def release(self, key: Hashable, expected: Hold | None = None, abort: object = None) -> None:
        """The leader ``expected`` gave up without an outcome: the earliest follower takes over."""
        if expected is None or abort is not None:
            raise TypeError("FlightTable.release needs the leader and no abort; use conclude()")
        self.conclude(key, expected, None)

    def finish(
        self, key: Hashable, leader: Hold, outcome: object, value: object, now: float
    ) -> bool:
        """The leader's call ended with ``outcome``: :meth:`conclude` with it."""
        return self.conclude(key, leader, outcome, value, now)

    def take_over(
        self, key: Hashable, leader: Hold, hold: Hold, wake: Callable[[], bool] | None = None
    ) -> bool:
        """``hold`` (a new one) leads the call for ``key`` in place of ``leader``.

        For a waiter that stands for several callers: handed the call, it
        passes it to the one of them that runs it. With ``wake``, ``leader``
        waits again for the others, first in line behind ``hold`` (``wake`` as
        :meth:`enqueue` takes it); without, it is done. True if ``hold`` leads
        now; False (nothing changes) if ``leader`` does not lead the call.
        """
        with self._guard:
            state = leader._state
            holds = self._holds
            is_entry = key in holds and holds[key] is leader
            if state != GRANTED and not (state == IDLE and is_entry):
                return False
            queue = leader._waiters
            if wake is not None and queue is None:
                queue = new_queue()
            while wake is not None and queue and queue[0] is leader:
                queue.popleft()  # (a copy an interrupted hand-off left there: it waits again)
            # The new leader first: an interrupt anywhere leaves ``hold`` leading or not,
            # never the key without a leader (``hold`` concluding gives it up either way).
            hold._waiters = queue
            if is_entry:
                holds[key] = hold
            hold._state = GRANTED
            leader._waiters = None
            if wake is None:
                leader._state = RELEASED
            else:  # (as enqueue() queues a hold, at the front)
                assert queue is not None
                leader._wake = wake
                leader._queue = queue
                leader._state = WAITING
                queue.live += 1
                queue.appendleft(leader)
        return True

    def cached(self, key: Hashable, now: float) -> object:
        """A value kept for ``key`` that is still fresh at ``now``, else MISS.

        Every look drops the values expired by ``now`` (for any key): a key's
        value lives until the first call after it expired, however the calls
        end (a hit, an error, another key).
        """
        results = self.results
        entry = results.get(key)
        try:
            expired = results[next(iter(results))][0] <= now  # the oldest (insertion order)
        except (StopIteration, KeyError, RuntimeError):  # none, or changing meanwhile
            expired = False
        if expired:
            with self._guard:
                self._expire(now)
        if entry is None or entry[0] <= now:
            return MISS
        return entry[1]

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
        with self._guard:
            if key in self.results:
                del self.results[key]
            if key in self._holds:
                del self._holds[key]
