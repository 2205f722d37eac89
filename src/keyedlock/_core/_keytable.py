"""The per-key lock state machine, written once for every runtime and scope.

A :class:`KeyTable` maps each busy key to its current :class:`Hold` (the
owner). A key with no holder and no waiter has no entry at all, so an idle key
costs no memory. Waiters queue on the holder (``Hold._waiters``); on release
the first live waiter is handed the key directly (its entry replaces the old
holder's without the key ever looking free), so a late arrival can never
barge past a queued waiter.

The table knows nothing about threads, asyncio or trio. A waiter brings a
``wake`` callable from its runtime adapter; the table decides, atomically
under its guard, whether a waiter was *granted*, *aborted* or *cancelled*, and
exactly one of those wins. Wakes run outside the guard.

Concurrency: the uncontended acquire is a single ``dict.setdefault`` (atomic
with or without the GIL) and never touches the guard; everything that changes
an existing entry (queueing, hand-off, release, withdrawal) holds the guard,
once per operation.

Interrupts. A signal handler (KeyboardInterrupt) can raise at three kinds of
points only: a function's entry, right after a call returns, and a backward
jump; never inside a run of attribute and subscript loads and stores,
comparisons and arithmetic. Every transition here is written so that a signal
at any of those points leaves the table consistent:

- the decision of a transition is one such straight run, with the call that
  records it (``out.append``) as its last step; before that, nothing changed;
- wakes happen after the guard section, from that record, and the function
  that made the decision wakes again from its ``except`` clause; every
  ``wake`` is idempotent (a second call answers as the first and wakes
  nobody twice), so waking again after an interrupt is always right;
- a decision is never carried in a function's return value (an interrupt
  right after the call would drop it), only in the table or in ``out``.

The guard is a :class:`threading.RLock` although nothing re-enters it, because
an RLock refuses a release by a thread that does not hold it. The paths that
run on every acquisition or release (queueing, releasing, the contexts'
uncontended release) take it by hand, about half the cost of ``with guard:``::

    try:
        guard.acquire()
        ...
    finally:
        try:
            guard.release()
        except RuntimeError:  # an interrupt stopped acquire() before it took the guard
            pass

An interrupt anywhere in there can never leave the guard, and with it every
key of the table, locked, nor release it for another thread. The other paths
use ``with guard:``, safe by construction.

A wake that can be *lost* after it was sent (an asyncio loop that is closed
with the wake-up still in its queue) reports it through :meth:`KeyTable.lost`,
from any thread and even from a finalizer: the hold goes on a queue that the
next operation on the table works off, passing the key on.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

from .._ki import internal
from ._complete import complete
from ._hold import (
    ABORTED,
    CANCELLED,
    GRANTED,
    RELEASED,
    WAITING,
    Hold,
    Record,
    WaitQueue,
    fresh_copy,
    new_queue,
    queue_full_error,
    reacquire_error,
    released_error,
)
from ._orphans import Orphans
from ._tableviews import TableViews
from ._transitions import Transitions

__all__ = ["KeyTable", "guard_is_owned"]

#: ``RLock._is_owned(guard)``: True if the calling thread holds ``guard`` (the method
#: :class:`threading.Condition` relies on too; see the module docstring for its use).
guard_is_owned: Final[Callable[[threading.RLock], bool]] = type(threading.RLock())._is_owned  # type: ignore[attr-defined]

#: A dead queue entry is dropped once the dead outnumber the live by this much.
_COMPACT_SLACK: Final = 8


def _nowhere(holder: Hold) -> bool:
    return False  # (this process's table is the whole scope)


@internal
class KeyTable(Transitions, Orphans, TableViews):
    """Lock state for every busy key of one lock object.

    ``max_waiters`` bounds each key's queue (``None``: unbounded).
    """

    __slots__ = (
        "_guard",
        "_holds",
        "_lost",
        "holder",
        "max_waiters",
        "on_queue",
        "on_wait",
        "take",
        "waits_elsewhere",
    )

    #: ``take(key, hold)``: take ``key`` for ``hold`` if nobody holds it or waits for it;
    #: returns the key's holder, ``hold`` itself on success. The uncontended acquire: one
    #: C-level step (``holds.setdefault``), no guard, never blocks.
    take: Callable[[Hashable, Hold], Hold]
    #: ``holder(key)``: the key's holder, or None (``holds.get``).
    holder: Callable[[Hashable], Hold | None]

    def __init__(self, max_waiters: int | None = None) -> None:
        self._holds: dict[Hashable, Hold] = {}
        self._guard = threading.RLock()
        self.max_waiters = max_waiters
        self._lost: deque[tuple[Hashable, Hold]] = deque()
        self.take = self._holds.setdefault
        self.holder = self._holds.get
        #: ``on_wait(key, holder)``, if set: called (outside the guard, best effort) when the
        #: first caller starts waiting behind a ``_watched`` holder, and when a watched hold
        #: is handed the key with waiters behind it: the scope watches those holders.
        self.on_wait: Callable[[Hashable, Hold], object] | None = None
        #: ``on_queue(key)``, if set: called (outside the guard, best effort) when a caller
        #: joins ``key``'s queue or leaves it waiting: for a scope that tells others of it.
        self.on_queue: Callable[[Hashable], object] | None = None
        #: ``waits_elsewhere(holder)``: True while a holder here still waits for its key in
        #: a wider scope; it then counts as a waiter against ``max_waiters``.
        self.waits_elsewhere: Callable[[Hold], bool] = _nowhere

    def forked(self) -> None:
        """In a fork child: a guard of its own. The parent's may have been held by one of
        its threads, which the child does not have (what the table holds stays as it was:
        the scope gives the child a new table)."""
        self._guard = threading.RLock()

    # -- acquiring ---------------------------------------------------------

    def enqueue(self, key: Hashable, hold: Hold, wake: Callable[[], bool]) -> bool:
        """Take ``key`` for ``hold``, or queue ``hold`` behind the holder.

        Returns True if the key was free (``hold`` now owns it), False if
        ``hold`` was queued: ``wake()`` will be called when it is granted or
        aborted (maybe more than once: it must be idempotent). ``wake``
        returns False if its waiter can no longer run (its event loop is
        gone); the key then passes on.

        Raises RuntimeError if ``hold._owner`` already holds the key, and
        QueueFull if the key has ``max_waiters`` waiters already. If this
        call raises anything else (an interrupt), ``hold`` may be queued or
        may hold the key: :meth:`cancel` it.
        """
        if self._lost:
            self.give_back_lost()
        guard = self._guard
        waits_for: Hold | None = None
        first: Hold | None = None
        queued = False
        try:
            guard.acquire()
            holder = self._holds.setdefault(key, hold)
            if holder is hold:
                return True
            if holder._owner == hold._owner:
                raise reacquire_error(key)
            queue = holder._waiters
            if queue is None:
                queue = new_queue()
                holder._waiters = queue
                first = holder  # the first caller to wait behind it (see on_wait)
            elif queue.outcome is not None:  # abandoned (see abandon): nobody to wait for
                raise fresh_copy(queue.outcome)
            limit = self.max_waiters
            if limit is not None and queue.live + self.waits_elsewhere(holder) >= limit:
                raise queue_full_error(key, limit)
            # One straight run, recorded by the append: no signal can split it.
            hold._wake = wake
            hold._queue = queue
            hold._state = WAITING
            queue.live += 1
            queue.append(hold)
            waits_for = first
            queued = True
            return False
        finally:
            try:  # noqa: SIM105 - one call, no window: see the module docstring
                guard.release()
            except RuntimeError:  # an interrupt stopped acquire() before it took it
                pass
            if waits_for is not None and waits_for._watched:
                self._waiting(key, waits_for)
            if queued and self.on_queue is not None:
                self._queue_changed(key)

    def _waiting(self, key: Hashable, holder: Hold) -> None:
        """Tell ``on_wait`` that callers wait behind ``holder`` (its failures are its own)."""
        on_wait = self.on_wait
        if on_wait is not None:
            with contextlib.suppress(Exception):  # a watch that failed only loses the watch
                on_wait(key, holder)

    def _queue_changed(self, key: Hashable) -> None:
        """Tell ``on_queue`` that ``key``'s queue changed (its failures are its own)."""
        on_queue = self.on_queue
        if on_queue is not None:
            with contextlib.suppress(Exception):  # (only a count is late)
                on_queue(key)

    def withdraw(self, key: Hashable, hold: Hold) -> int:
        """Withdraw a queued ``hold`` (timeout, cancellation).

        Returns the state the hold had (see :func:`decided`): WAITING means
        it was removed and leaves no trace; GRANTED means the key was handed
        to it in the same instant, so the caller owns the key and must
        release it (or keep it); RELEASED means it was granted and already
        released by someone else; ABORTED means the wait ended with an
        outcome (:func:`outcome_of`); CANCELLED means it was already withdrawn.
        """
        with self._guard:
            state = hold._state
            if state == WAITING:
                if hold._queue.outcome is not None:
                    return ABORTED
                self._remove(hold)
        if state == WAITING and self.on_queue is not None:
            self._queue_changed(key)
        return state

    def cancel(self, key: Hashable, hold: Hold) -> int:
        """Withdraw ``hold`` for good, however far it got: its waiter stops.

        For a waiter that was cancelled or interrupted, at any point of
        queueing or waiting: a queued hold leaves the queue; a hold that owns
        the key (granted in the same instant, or it took the key free) passes
        it on at once. Returns the state the hold had.
        """
        out: Record = []
        try:
            with self._guard:
                state = hold._state
                if state == WAITING:
                    if hold._queue.outcome is not None:
                        return ABORTED
                    self._remove(hold)
                else:
                    holds = self._holds
                    if state == GRANTED or (key in holds and holds[key] is hold):
                        self._give_up(key, hold, out)  # (GRANTED, not the entry: detached)
            self._deliver(key, out)
        except BaseException:
            complete(self._deliver, key, out)  # (again if another interrupt lands in it)
            raise
        if state == WAITING and self.on_queue is not None:
            self._queue_changed(key)
        return state

    def _remove(self, hold: Hold) -> None:
        """Under the guard: take a WAITING hold out of its queue (lazily)."""
        hold._state = CANCELLED
        queue = hold._queue
        queue.live -= 1
        if not queue.live:
            queue.clear()
        elif len(queue) > 2 * queue.live + _COMPACT_SLACK:
            _compact(queue)

    # -- releasing ---------------------------------------------------------

    def leave(self, key: Hashable, hold: Hold) -> None:
        """``hold`` releases its own key (a context's exit): to its first waiter, or free.

        RuntimeError if someone else released ``hold`` already (the key may
        be someone else's by now: it stays as it is). The uncontended case is
        one pass under the guard.
        """
        if hold._waiters is None:
            guard = self._guard
            try:
                guard.acquire()
                holds = self._holds
                if hold._waiters is None and holds.get(key) is hold:
                    del holds[key]
                    return
            finally:
                try:  # noqa: SIM105 - one call, no window: see the module docstring
                    guard.release()
                except RuntimeError:  # an interrupt stopped acquire() before it took it
                    pass
        self.release(key, hold)

    def release(
        self,
        key: Hashable,
        expected: Hold | None = None,
        abort: object = None,
    ) -> None:
        """Release ``key``: hand it to the first live waiter, or drop it.

        ``expected``: release only if this hold is the holder (a context
        manager releasing its own hold); otherwise RuntimeError.
        ``abort``: instead of handing the key on, end the wait of every waiter
        queued at this moment with ``abort`` as their outcome (state
        ABORTED) and leave the key free.
        """
        out: Record = []
        guard = self._guard
        try:
            try:
                guard.acquire()
                holds = self._holds
                if key not in holds:
                    raise released_error(key, False)
                holder = holds[key]
                if expected is not None and holder is not expected:
                    raise released_error(key, True)
                queue = holder._waiters
                if queue is None or not queue.live:
                    holder._state = RELEASED
                    del holds[key]
                    return
                if abort is None:
                    self._hand_off(key, holder, queue, True, out)
                else:
                    self._conclude(key, holder, queue, abort, True, out)
            finally:
                try:  # noqa: SIM105 - one call, no window: see the module docstring
                    guard.release()
                except RuntimeError:  # an interrupt stopped acquire() before it took it
                    pass
            self._deliver(key, out)
        except BaseException:
            complete(self._deliver, key, out)  # (again if another interrupt lands in it)
            raise


@internal
def _compact(queue: WaitQueue) -> None:
    """Drop the withdrawn entries of ``queue``, keeping the live ones in order.

    Each step leaves a queue whose *first* occurrences of live holds are in
    arrival order (the state of an entry decides, so duplicates are only
    skipped): ``[old..., live...]`` after the extend, ``[live..., old...]``
    after the rotation, then the old tail is popped.
    """
    live = [h for h in queue if h._state == WAITING]
    old = len(queue)
    queue.extend(live)
    queue.rotate(-old)
    for _ in range(old):
        queue.pop()
