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

An interrupt (KeyboardInterrupt) anywhere in there can never leave the guard,
and with it every key of the table, locked, nor release it for another thread.
The other paths use ``with guard:``, safe by construction.

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
    "RELEASED",
    "WAITING",
    "Hold",
    "KeyTable",
    "WaitQueue",
    "decided",
    "guard_is_owned",
]

#: Queued, neither granted nor withdrawn yet.
WAITING: Final = 1
#: The key was handed to this waiter; it now owns it.
GRANTED: Final = 2
#: The waiter withdrew (timeout, cancellation) or its runtime could not be woken.
CANCELLED: Final = 3
#: The wait ended with the holder's outcome instead of the key: an
#: ``on_error="stop"`` abort, or a single-flight result; ``cause`` holds it.
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
    its holder. ``state``, ``wake``, ``queue`` (the queue it waits in) and
    ``cause`` are set only for a hold that had to wait.
    """

    __slots__ = ("cause", "owner", "queue", "state", "waiters", "wake")

    owner: object
    waiters: WaitQueue | None
    state: int
    wake: Callable[[], bool]
    queue: WaitQueue
    cause: object

    def __init__(self, owner: object = None) -> None:
        self.owner = owner
        self.waiters = None


class WaitQueue(deque[Hold]):
    """The waiters of one key, in arrival order.

    Withdrawn waiters are removed lazily (their state says so); ``live``
    counts the ones still waiting, so a withdrawal is O(1) amortized.
    """

    __slots__ = ("live",)

    live: int


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
        while lost:
            try:
                key, hold = lost.popleft()
            except IndexError:  # another thread took the last one
                return
            with self.guard:
                if hold.state != GRANTED:
                    continue  # released meanwhile by someone else
                nxt = self._pass_on(key, hold)
                hold.state = CANCELLED  # it never ran
            self._wake_next(key, nxt)

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
        ``hold`` was queued: ``wake()`` will be called, once, when it is
        granted or aborted. ``wake`` returns False if its waiter can no
        longer run (its event loop is gone); the key then passes on.

        Raises RuntimeError if ``hold.owner`` already holds the key, and
        QueueFull if the key has ``max_waiters`` waiters already.
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
                queue = holder.waiters = WaitQueue()
                queue.live = 0
            limit = self.max_waiters
            if limit is not None and queue.live >= limit:
                raise QueueFull(f"key {key!r} already has {limit} waiter(s) (max_waiters={limit})")
            hold.state = WAITING
            hold.wake = wake
            hold.queue = queue
            queue.append(hold)
            queue.live += 1
            return False
        finally:
            try:  # noqa: SIM105 - one call, no window: see the module docstring
                guard.release()
            except RuntimeError:  # an interrupt stopped acquire() before it took it
                pass

    def withdraw(self, key: Hashable, hold: Hold) -> int:
        """Withdraw a queued ``hold`` (timeout, cancellation, interrupt).

        Returns the state the hold had: WAITING means it was removed and
        leaves no trace; GRANTED means the key was handed to it in the same
        instant, so the caller owns the key and must release it (or keep it);
        RELEASED means it was granted and already released by someone else;
        ABORTED means the wait was aborted (``hold.cause``); CANCELLED means
        it was already withdrawn.
        """
        with self.guard:
            state = hold.state
            if state == WAITING:
                self._remove(hold)
            return state

    def cancel(self, key: Hashable, hold: Hold) -> int:
        """Withdraw ``hold`` for good: its waiter stops (cancelled, interrupted).

        As :meth:`withdraw`, in one step with giving the key back: if the key
        was handed to ``hold`` in the same instant (and nobody released it
        since), it passes on to the next waiter at once. Returns the state
        the hold had.
        """
        with self.guard:
            state = hold.state
            if state == WAITING:
                self._remove(hold)
                return state
            if state != GRANTED:
                return state
            nxt = self._pass_on(key, hold)
        self._wake_next(key, nxt)
        return state

    def _remove(self, hold: Hold) -> None:
        """Under the guard: take a WAITING hold out of its queue (lazily)."""
        hold.state = CANCELLED
        queue = hold.queue
        queue.live -= 1
        if not queue.live:
            queue.clear()
        elif len(queue) > 2 * queue.live + _COMPACT_SLACK:
            live = [h for h in queue if h.state == WAITING]
            queue.clear()
            queue.extend(live)

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
        queued at this moment with ``abort`` as their ``cause`` (state
        ABORTED) and leave the key free.
        """
        guard = self.guard
        try:
            guard.acquire()
            holder = self.holds.get(key)
            if holder is None:
                raise RuntimeError(f"release of key {key!r}, which is not held")
            if expected is not None and holder is not expected:
                raise RuntimeError(
                    f"this hold of key {key!r} was already released by another caller; "
                    "the key is now held by someone else and stays held"
                )
            queue = holder.waiters
            if queue is None or not queue.live:
                holder.state = RELEASED
                del self.holds[key]
                return
            if abort is None:
                holder.state = RELEASED
                # _hand_off(key, holder, queue, True), inlined: every contended release.
                nxt = None
                while queue:
                    h = queue.popleft()
                    if h.state == WAITING:
                        nxt = h
                        break
                if nxt is None:
                    del self.holds[key]
                    return
                nxt.state = GRANTED
                queue.live -= 1
                nxt.waiters = queue if queue.live else None
                self.holds[key] = nxt
            else:
                aborted = self._abort(key, holder, queue, abort)
        finally:
            try:  # noqa: SIM105 - one call, no window: see the module docstring
                guard.release()
            except RuntimeError:  # an interrupt stopped acquire() before it took it
                pass
        if abort is None:
            if nxt is not None and not nxt.wake():
                self._skip(key, nxt)
        else:
            for h in aborted:
                h.wake()

    def _pass_on(self, key: Hashable, holder: Hold) -> Hold | None:
        """Under the guard: ``holder`` gives the key up; returns the waiter to wake, if any."""
        holder.state = RELEASED
        queue = holder.waiters
        if queue is None or not queue.live:
            if self.holds.get(key) is holder:
                del self.holds[key]
            return None
        return self._hand_off(key, holder, queue, self.holds.get(key) is holder)

    def _hand_off(
        self, key: Hashable, holder: Hold, queue: WaitQueue, is_entry: bool
    ) -> Hold | None:
        """Under the guard: make the first live waiter the holder.

        The table entry moves to it only if ``holder`` is the key's entry
        (``is_entry``; a detached single-flight call hands off within its group).
        """
        nxt = None
        while queue:
            h = queue.popleft()
            if h.state == WAITING:
                nxt = h
                break
        if nxt is None:
            if is_entry:
                del self.holds[key]
            return None
        nxt.state = GRANTED
        queue.live -= 1
        nxt.waiters = queue if queue.live else None
        if is_entry:
            self.holds[key] = nxt
        return nxt

    def _abort(self, key: Hashable, holder: Hold, queue: WaitQueue, cause: object) -> list[Hold]:
        """Under the guard: end every live waiter's wait with ``cause``; free the key."""
        holder.state = RELEASED
        aborted = [h for h in queue if h.state == WAITING]
        for h in aborted:
            h.state = ABORTED
            h.cause = cause
        queue.clear()
        queue.live = 0
        if self.holds.get(key) is holder:
            del self.holds[key]
        return aborted

    def _wake_next(self, key: Hashable, nxt: Hold | None) -> None:
        """Wake a granted waiter; if it cannot run any more, pass the key on."""
        if nxt is not None and not nxt.wake():
            self._skip(key, nxt)

    def _skip(self, key: Hashable, dead: Hold | None) -> None:
        """``dead`` was granted the key but cannot be woken: pass the key on, and so on."""
        while dead is not None:
            with self.guard:
                if dead.state != GRANTED:
                    return  # released by someone else meanwhile: handed on already
                nxt = self._pass_on(key, dead)
                dead.state = CANCELLED  # it never ran
            dead = None if nxt is None or nxt.wake() else nxt
        if self._lost:
            self.give_back_lost()

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


def decided(hold: Hold) -> int:
    """The answer a woken waiter acts on: GRANTED (also when already released by
    someone else since: it did get the key), ABORTED, CANCELLED or WAITING."""
    state = hold.state
    return GRANTED if state == RELEASED else state


def reacquire_error(key: Hashable) -> RuntimeError:
    return RuntimeError(
        f"key {key!r} is already held by this owner (the current task, or the current "
        "thread outside tasks); acquiring it again would deadlock. keyedlock locks are "
        "not reentrant: release it first, or restructure so the key is taken once"
    )
