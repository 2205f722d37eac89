"""The per-key lock state machine, written once for every runtime and scope.

A :class:`KeyTable` maps each busy key to its current :class:`Hold` (the
owner). A key with no holder and no waiter has no entry at all, so an idle key
costs no memory. Waiters queue on the holder (``Hold.waiters``); on release
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

import threading
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

from .._errors import QueueFull

__all__ = [
    "ABORTED",
    "CANCELLED",
    "GRANTED",
    "IDLE",
    "RELEASED",
    "WAITING",
    "Hold",
    "KeyTable",
    "WaitQueue",
    "decided",
    "guard_is_owned",
    "outcome_of",
    "reacquire_error",
    "state_of",
]

#: Not queued: a new hold, or one that took a free key without waiting.
IDLE: Final = 0
#: Queued, neither granted nor withdrawn yet (but see :func:`decided`: a waiting hold whose
#: queue has an outcome was aborted).
WAITING: Final = 1
#: The key was handed to this waiter; it now owns it.
GRANTED: Final = 2
#: The waiter withdrew (timeout, cancellation) or its runtime could not be woken.
CANCELLED: Final = 3
#: The wait ended with the holder's outcome instead of the key (:func:`decided` reports it
#: for the waiting holds of a queue that has an outcome).
ABORTED: Final = 4
#: A hold that owned the key and gave it up (released by its owner, or by
#: anyone through ``release(key)``). Set on every release that can have
#: waiters, so a late decision about an old hold (a failed wake, a
#: cancellation after the hand-off) never releases or hands on twice.
RELEASED: Final = 5

#: ``RLock._is_owned(guard)``: True if the calling thread holds ``guard`` (the method
#: :class:`threading.Condition` relies on too; see the module docstring for its use).
guard_is_owned: Final[Callable[[threading.RLock], bool]] = type(threading.RLock())._is_owned  # type: ignore[attr-defined]

#: A dead queue entry is dropped once the dead outnumber the live by this much.
_COMPACT_SLACK: Final = 8


class Hold:
    """One acquisition: a holder of a key, or a waiter for it.

    ``owner`` identifies who acquires (used only to refuse a self-deadlocking
    re-acquire). ``waiters`` is the FIFO queue of the key while this hold is
    its holder. ``state`` is IDLE until the hold queues; ``wake`` and
    ``queue`` (the queue it waits in) are set only for a hold that had to wait.
    """

    __slots__ = ("owner", "queue", "state", "waiters", "wake")

    owner: object
    waiters: WaitQueue | None
    state: int
    wake: Callable[[], bool]
    queue: WaitQueue

    def __init__(self, owner: object = None) -> None:
        self.owner = owner
        self.waiters = None
        self.state = IDLE


class WaitQueue(deque[Hold]):
    """The waiters of one key, in arrival order.

    Withdrawn waiters are removed lazily (their state says so); ``live``
    counts the ones still waiting, so a withdrawal is O(1) amortized.
    ``outcome`` is None while the queue waits for the key; once set (an
    abort, or a single-flight call's result) it is the outcome of every hold
    still WAITING in it, and the queue never changes again: one store ends
    every wait at once.
    """

    __slots__ = ("live", "outcome")

    live: int
    outcome: object


#: What a transition decided, for the wakes after its guard section: a granted
#: :class:`Hold`, or a concluded :class:`WaitQueue` whose waiters all get its outcome.
Record = list[Hold | WaitQueue]


def _new_queue() -> WaitQueue:
    queue = WaitQueue()
    queue.live = 0
    queue.outcome = None
    return queue


class KeyTable:
    """Lock state for every busy key of one lock object.

    ``max_waiters`` bounds each key's queue (``None``: unbounded).
    """

    __slots__ = ("_lost", "guard", "holds", "max_waiters")

    def __init__(self, max_waiters: int | None = None) -> None:
        self.holds: dict[Hashable, Hold] = {}
        self.guard = threading.RLock()
        self.max_waiters = max_waiters
        self._lost: deque[tuple[Hashable, Hold]] = deque()

    # -- lost wakes ----------------------------------------------------------

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
                with self.guard:
                    if not lost:
                        break
                    key, hold = lost[0]
                    if hold.state == GRANTED:
                        self._give_up(key, hold, out)
                        hold.state = CANCELLED  # it never ran
                    lost.popleft()  # only now: an interrupt before it leaves the entry to redo
                self._deliver(key, out)
                out.clear()
        except BaseException:
            self._deliver(key, out)
            raise

    # -- acquiring ---------------------------------------------------------

    def try_acquire(self, key: Hashable, hold: Hold) -> Hold:
        """Take ``key`` for ``hold`` if nobody holds it or waits for it.

        Returns the key's holder: ``hold`` itself on success. Never blocks
        and never touches the guard.
        """
        return self.holds.setdefault(key, hold)

    def enqueue(self, key: Hashable, hold: Hold, wake: Callable[[], bool]) -> bool:
        """Take ``key`` for ``hold``, or queue ``hold`` behind the holder.

        Returns True if the key was free (``hold`` now owns it), False if
        ``hold`` was queued: ``wake()`` will be called when it is granted or
        aborted (maybe more than once: it must be idempotent). ``wake``
        returns False if its waiter can no longer run (its event loop is
        gone); the key then passes on.

        Raises RuntimeError if ``hold.owner`` already holds the key, and
        QueueFull if the key has ``max_waiters`` waiters already. If this
        call raises anything else (an interrupt), ``hold`` may be queued or
        may hold the key: :meth:`cancel` it.
        """
        if self._lost:
            self.give_back_lost()
        guard = self.guard
        try:
            guard.acquire()
            holder = self.holds.setdefault(key, hold)
            if holder is hold:
                return True
            if holder.owner == hold.owner:
                raise reacquire_error(key)
            queue = holder.waiters
            if queue is None:
                queue = _new_queue()
                holder.waiters = queue
            limit = self.max_waiters
            if limit is not None and queue.live >= limit:
                raise QueueFull(f"key {key!r} already has {limit} waiter(s) (max_waiters={limit})")
            # One straight run, recorded by the append: no signal can split it.
            hold.wake = wake
            hold.queue = queue
            hold.state = WAITING
            queue.live += 1
            queue.append(hold)
            return False
        finally:
            try:  # noqa: SIM105 - one call, no window: see the module docstring
                guard.release()
            except RuntimeError:  # an interrupt stopped acquire() before it took it
                pass

    def withdraw(self, key: Hashable, hold: Hold) -> int:
        """Withdraw a queued ``hold`` (timeout, cancellation).

        Returns the state the hold had (see :func:`decided`): WAITING means
        it was removed and leaves no trace; GRANTED means the key was handed
        to it in the same instant, so the caller owns the key and must
        release it (or keep it); RELEASED means it was granted and already
        released by someone else; ABORTED means the wait ended with an
        outcome (:func:`outcome_of`); CANCELLED means it was already withdrawn.
        """
        with self.guard:
            state = hold.state
            if state == WAITING:
                if hold.queue.outcome is not None:
                    return ABORTED
                self._remove(hold)
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
            with self.guard:
                state = hold.state
                if state == WAITING:
                    if hold.queue.outcome is not None:
                        return ABORTED
                    self._remove(hold)
                    return state
                holds = self.holds
                if state == GRANTED or (key in holds and holds[key] is hold):
                    self._give_up(key, hold, out)  # (GRANTED and not the entry: a detached call)
            self._deliver(key, out)
        except BaseException:
            self._deliver(key, out)
            raise
        return state

    def _remove(self, hold: Hold) -> None:
        """Under the guard: take a WAITING hold out of its queue (lazily)."""
        hold.state = CANCELLED
        queue = hold.queue
        queue.live -= 1
        if not queue.live:
            queue.clear()
        elif len(queue) > 2 * queue.live + _COMPACT_SLACK:
            _compact(queue)

    # -- releasing ---------------------------------------------------------

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
        guard = self.guard
        try:
            try:
                guard.acquire()
                holds = self.holds
                if key not in holds:
                    raise RuntimeError(f"release of key {key!r}, which is not held")
                holder = holds[key]
                if expected is not None and holder is not expected:
                    raise RuntimeError(
                        f"this hold of key {key!r} was already released by another caller; "
                        "the key is now held by someone else and stays held"
                    )
                queue = holder.waiters
                if queue is None or not queue.live:
                    holder.state = RELEASED
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
            self._deliver(key, out)
            raise

    # -- transitions (under the guard; each records what to wake in ``out``) --

    def _give_up(self, key: Hashable, holder: Hold, out: Record) -> None:
        """``holder`` gives the key up: to its first live waiter, else the key is free.

        If ``holder`` is not the key's entry (a detached single-flight call),
        the hand-off stays within its own waiters.
        """
        holds = self.holds
        is_entry = key in holds and holds[key] is holder
        queue = holder.waiters
        if queue is not None and queue.live:
            self._hand_off(key, holder, queue, is_entry, out)
            return
        holder.state = RELEASED
        if is_entry:
            del holds[key]

    def _hand_off(
        self, key: Hashable, holder: Hold, queue: WaitQueue, is_entry: bool, out: Record
    ) -> None:
        """Make the first live waiter of ``queue`` (which has one) the holder.

        The table entry moves to it only if ``holder`` is the key's entry.
        """
        nxt = queue[0]
        while nxt.state != WAITING:  # drop the withdrawn ahead of it
            queue.popleft()
            nxt = queue[0]
        # One straight run, recorded by the append: no signal can split it.
        holder.state = RELEASED
        nxt.state = GRANTED
        queue.live -= 1
        nxt.waiters = queue if queue.live else None
        if is_entry:
            self.holds[key] = nxt
        out.append(nxt)
        queue.popleft()  # nxt itself (left there, it would only be skipped as not WAITING)

    def _conclude(
        self,
        key: Hashable,
        holder: Hold,
        queue: WaitQueue,
        outcome: object,
        is_entry: bool,
        out: Record,
    ) -> None:
        """End every wait in ``queue`` with ``outcome``; the key is free."""
        holder.state = RELEASED
        queue.outcome = outcome  # one store: every WAITING hold in it is now aborted
        if is_entry:
            del self.holds[key]
        out.append(queue)

    # -- waking (outside the guard; safe to repeat) ---------------------------

    def _deliver(self, key: Hashable, out: Record) -> None:
        """Wake what ``out`` recorded: granted holds, and every waiter of a concluded queue.

        Idempotent, and so safe to call again after an interrupt: every wake
        answers a second call as the first. A granted hold that cannot be
        woken passes the key on (appending the next one to ``out``).
        """
        for item in out:  # (it grows while this runs: see _skip)
            if isinstance(item, WaitQueue):
                for hold in item:  # a concluded queue never changes again
                    if hold.state == WAITING:
                        hold.wake()
            elif not item.wake():
                self._skip(key, item, out)

    def _skip(self, key: Hashable, dead: Hold, out: Record) -> None:
        """``dead`` was granted the key but cannot be woken: pass the key on."""
        with self.guard:
            if dead.state != GRANTED:
                return  # released by someone else meanwhile: handed on already
            self._give_up(key, dead, out)
            dead.state = CANCELLED  # it never ran

    # -- introspection -----------------------------------------------------

    def locked(self, key: Hashable) -> bool:
        if self._lost:
            self.give_back_lost()
        return key in self.holds

    def waiters(self, key: Hashable) -> int:
        if self._lost:
            self.give_back_lost()
        holder = self.holds.get(key)
        if holder is None:
            return 0
        queue = holder.waiters
        return queue.live if queue is not None else 0

    def __len__(self) -> int:
        if self._lost:
            self.give_back_lost()
        return len(self.holds)


def _compact(queue: WaitQueue) -> None:
    """Drop the withdrawn entries of ``queue``, keeping the live ones in order.

    Each step leaves a queue whose *first* occurrences of live holds are in
    arrival order (the state of an entry decides, so duplicates are only
    skipped): ``[old..., live...]`` after the extend, ``[live..., old...]``
    after the rotation, then the old tail is popped.
    """
    live = [h for h in queue if h.state == WAITING]
    old = len(queue)
    queue.extend(live)
    queue.rotate(-old)
    for _ in range(old):
        queue.pop()


def state_of(hold: Hold) -> int:
    """``hold``'s state, a WAITING hold of a concluded queue reported as ABORTED."""
    state = hold.state
    if state == WAITING and hold.queue.outcome is not None:
        return ABORTED
    return state


def decided(hold: Hold) -> int:
    """The answer a woken waiter acts on: GRANTED (also when already released by
    someone else since: it did get the key), ABORTED, CANCELLED or WAITING."""
    state = hold.state
    if state == RELEASED:
        return GRANTED
    if state == WAITING and hold.queue.outcome is not None:
        return ABORTED
    return state


def outcome_of(hold: Hold) -> object:
    """The outcome an ABORTED hold's wait ended with (see :meth:`KeyTable.release`)."""
    return hold.queue.outcome


def reacquire_error(key: Hashable) -> RuntimeError:
    return RuntimeError(
        f"key {key!r} is already held by this owner (the current task, or the current "
        "thread outside tasks); acquiring it again would deadlock. keyedlock locks are "
        "not reentrant: release it first, or restructure so the key is taken once"
    )
