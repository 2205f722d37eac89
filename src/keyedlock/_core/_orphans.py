"""Holds whose caller is gone: a granted waiter that can no longer run, an owner that ended.

Two ways a hold can outlive the code that would release it, both ending in
an ordinary transition of :class:`~._keytable.KeyTable`:

- a *lost wake*: a waiter was granted the key, but its event loop is gone,
  so it will never run to release it: the key is passed on (:meth:`Orphans.lost`);
- an *abandoned* hold: its owner (a task) ended while holding the key; its
  waiters end with an error (:meth:`Orphans.abandon`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable

from ._complete import complete
from ._hold import CANCELLED, GRANTED, Hold, Record, new_queue

__all__ = ["Orphans"]


class Orphans:
    """Lost wakes and abandoned holds, for :class:`~._keytable.KeyTable` (a mixin)."""

    __slots__ = ()

    _holds: dict[Hashable, Hold]
    _guard: threading.RLock
    _lost: deque[tuple[Hashable, Hold]]
    _queue_changed: Callable[[Hashable], None]

    def _give_up(self, key: Hashable, holder: Hold, out: Record) -> None:
        raise NotImplementedError

    def _deliver(self, key: Hashable, out: Record) -> None:
        raise NotImplementedError

    def lost(self, key: Hashable, hold: Hold) -> None:
        """The wake sent to a granted ``hold`` will never be delivered (its loop is gone).

        Never blocks and takes no lock (a finalizer may call it, in any
        thread, at any moment): the key is passed on by the next operation
        on this table (:meth:`give_back_lost`).
        """
        self._lost.append((key, hold))

    def give_back_lost(self) -> None:
        """Pass on the keys of holds whose wake was lost (see :meth:`lost`)."""
        lost = self._lost
        out: Record = []
        key: Hashable = None
        try:
            while lost:
                with self._guard:
                    if not lost:
                        break
                    key, hold = lost[0]
                    if hold._state == GRANTED:
                        self._give_up(key, hold, out)
                        hold._state = CANCELLED  # it never ran
                    lost.popleft()  # only now: an interrupt before it leaves the entry to redo
                self._deliver(key, out)
                out.clear()
        except BaseException:
            complete(self._deliver, key, out)  # (again if another interrupt lands in it)
            raise

    def abandon(self, key: Hashable, hold: Hold, outcome: BaseException) -> bool:
        """``hold``'s owner ended while holding ``key``: nobody is bound to release it.

        Every waiter queued at this moment ends with ``outcome`` (ABORTED),
        and a caller that would queue for the key later raises a copy of it
        at once. The key stays held by ``hold``: ``release(key)`` still
        releases it, and then the key is free as usual. False (and no
        change) if ``hold`` does not hold ``key``, or was abandoned already.
        """
        out: Record = []
        try:
            with self._guard:
                if self._holds.get(key) is not hold:
                    return False
                queue = hold._waiters
                if queue is None:
                    queue = new_queue()
                    hold._waiters = queue
                elif queue.outcome is not None:
                    return False
                # One straight run, recorded by the append: no signal can split it.
                queue.outcome = outcome
                queue.live = 0
                out.append(queue)
            self._deliver(key, out)
        except BaseException:
            complete(self._deliver, key, out)  # (again if another interrupt lands in it)
            raise
        self._queue_changed(key)  # (nobody waits behind it any more)
        return True
