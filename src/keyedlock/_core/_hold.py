"""One acquisition (a :class:`Hold`), the queue it may wait in, and what a wait ended with.

A hold is IDLE until it queues; then WAITING, and decided exactly once:
GRANTED (it owns the key; RELEASED once it gave it up), CANCELLED (it
withdrew, or its runtime could not be woken) or ABORTED (its queue got an
outcome: an ``on_error="stop"`` abort, a single-flight result).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

from .._errors import QueueFull, shown_key

__all__ = [
    "ABORTED",
    "CANCELLED",
    "GRANTED",
    "IDLE",
    "RELEASED",
    "WAITING",
    "Hold",
    "Record",
    "WaitQueue",
    "decided",
    "fresh_copy",
    "new_queue",
    "outcome_of",
    "queue_full_error",
    "reacquire_error",
    "released_error",
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


class Hold:
    """One acquisition: a holder of a key, or a waiter for it.

    Its fields belong to the core (subclasses, the contexts, set ``_owner``
    before acquiring and read ``_waiters`` on their uncontended exit):

    - ``_owner``: who acquires (used to refuse a self-deadlocking re-acquire,
      and to name the holder);
    - ``_waiters``: the key's FIFO queue while this hold is its holder;
    - ``_state``: IDLE until the hold queues (see the states above);
    - ``_wake`` and ``_queue`` (the queue it waits in): set only for a hold
      that had to wait;
    - ``_since``: when it took the key (``time.monotonic()``), if the scope
      records it (for statistics); the core never reads it;
    - ``_watched``: True for a hold whose waiters the table reports to its
      ``on_wait`` (a hold that may outlive its owner); always set.
    """

    __slots__ = ("_owner", "_queue", "_since", "_state", "_waiters", "_wake", "_watched")

    _owner: object
    _waiters: WaitQueue | None
    _state: int
    _wake: Callable[[], bool]
    _queue: WaitQueue
    _since: float
    _watched: bool

    def __init__(self, owner: object = None) -> None:
        self._owner = owner
        self._waiters = None
        self._state = IDLE
        self._watched = False


class WaitQueue(deque[Hold]):
    """The waiters of one key, in arrival order.

    Withdrawn waiters are removed lazily (their state says so); ``live``
    counts the ones still waiting, so a withdrawal is O(1) amortized.
    ``outcome`` is None while the queue waits for the key; once set (an
    abort, or a single-flight call's result) it is the outcome of every hold
    still WAITING in it, and the queue never changes again: one store ends
    every wait at once. (Only the thread that concluded it empties it, once
    it has woken every waiter: a hold's state, not the queue, says it was
    aborted, through ``outcome``.)
    """

    __slots__ = ("live", "outcome")

    live: int
    outcome: object


#: What a transition decided, for the wakes after its guard section: a granted
#: :class:`Hold`, or a concluded :class:`WaitQueue` whose waiters all get its outcome.
Record = list[Hold | WaitQueue]


def new_queue() -> WaitQueue:
    queue = WaitQueue()
    queue.live = 0
    queue.outcome = None
    return queue


def state_of(hold: Hold) -> int:
    """``hold``'s state, a WAITING hold of a concluded queue reported as ABORTED."""
    state = hold._state
    if state == WAITING and hold._queue.outcome is not None:
        return ABORTED
    return state


def decided(hold: Hold) -> int:
    """The answer a woken waiter acts on: GRANTED (also when already released by
    someone else since: it did get the key), ABORTED, CANCELLED or WAITING."""
    state = hold._state
    if state == RELEASED:
        return GRANTED
    if state == WAITING and hold._queue.outcome is not None:
        return ABORTED
    return state


def outcome_of(hold: Hold) -> object:
    """The outcome an ABORTED hold's wait ended with (see :meth:`KeyTable.release`)."""
    return hold._queue.outcome


def queue_full_error(key: Hashable, limit: int) -> QueueFull:
    """The error of a caller that would queue on ``key`` past ``max_waiters=limit``."""
    if limit == 0:
        return QueueFull(f"key {shown_key(key)} is held and max_waiters=0: nobody may wait for it")
    return QueueFull(f"key {shown_key(key)} already has {limit} waiter(s) (max_waiters={limit})")


def released_error(key: Hashable, held: bool) -> RuntimeError:
    """The error of releasing a hold of ``key`` that was released already: nobody holds the
    key now, or (``held``) another caller does, and keeps it."""
    if not held:
        return RuntimeError(f"release of key {shown_key(key)}, which is not held")
    return RuntimeError(
        f"this hold of key {shown_key(key)} was already released by another caller; "
        "the key is now held by someone else and stays held"
    )


def reacquire_error(key: Hashable) -> RuntimeError:
    return RuntimeError(
        f"key {shown_key(key)} is already held by this owner (the current task, or the current "
        "thread outside tasks); acquiring it again would deadlock. keyedlock locks are "
        "not reentrant: release it first, or restructure so the key is taken once"
    )


def fresh_copy(outcome: object) -> BaseException:
    """A new exception like ``outcome`` (same type and args), for one more caller to raise:
    raising one object in many callers would mix their tracebacks."""
    if isinstance(outcome, BaseException):
        try:
            return type(outcome)(*outcome.args)
        except Exception:
            return outcome
    return RuntimeError(repr(outcome))
