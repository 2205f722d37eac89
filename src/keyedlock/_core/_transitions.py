"""The transitions every :class:`~._keytable.KeyTable` operation ends in, and its wakes.

A transition runs under the table's guard and only *records* what it decided
(a granted hold, or a concluded queue) in ``out``, the call that records it
being its last step; :meth:`Transitions._deliver` then wakes what ``out``
holds, outside the guard, and is safe to run again after an interrupt (see
the interrupt rules in :mod:`._keytable`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

from ._hold import CANCELLED, GRANTED, RELEASED, WAITING, Hold, Record, WaitQueue

__all__ = ["Transitions"]


class Transitions:
    """Hand-off, conclusion and delivery, for :class:`~._keytable.KeyTable` (a mixin)."""

    __slots__ = ()

    _holds: dict[Hashable, Hold]
    _guard: threading.RLock
    _waiting: Callable[[Hashable, Hold], None]

    # -- under the guard; each records what to wake in ``out`` ------------------

    def _give_up(self, key: Hashable, holder: Hold, out: Record) -> None:
        """``holder`` gives the key up: to its first live waiter, else the key is free.

        If ``holder`` is not the key's entry (a detached single-flight call),
        the hand-off stays within its own waiters.
        """
        holds = self._holds
        is_entry = key in holds and holds[key] is holder
        queue = holder._waiters
        if queue is not None and queue.live:
            self._hand_off(key, holder, queue, is_entry, out)
            return
        holder._state = RELEASED
        if is_entry:
            del holds[key]

    def _hand_off(
        self, key: Hashable, holder: Hold, queue: WaitQueue, is_entry: bool, out: Record
    ) -> None:
        """Make the first live waiter of ``queue`` (which has one) the holder.

        The table entry moves to it only if ``holder`` is the key's entry.
        """
        nxt = queue[0]
        while nxt._state != WAITING:  # drop the withdrawn ahead of it
            queue.popleft()
            nxt = queue[0]
        # One straight run, recorded by the append: no signal can split it.
        holder._state = RELEASED
        nxt._state = GRANTED
        queue.live -= 1
        nxt._waiters = queue if queue.live else None
        if is_entry:
            self._holds[key] = nxt
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
        holder._state = RELEASED
        queue.outcome = outcome  # one store: every WAITING hold in it is now aborted
        if is_entry:
            del self._holds[key]
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
                for hold in item:  # a concluded queue never changes again, but here:
                    if hold._state == WAITING:
                        hold._wake()
                # Every waiter is woken (and its state says why). Emptied, the queue no longer
                # refers to holds that refer to it: no cycle is left for the collector.
                item.clear()
            elif not item._wake():
                self._skip(key, item, out)
            elif item._waiters is not None and item._watched:
                self._waiting(key, item)  # handed the key with waiters behind it

    def _skip(self, key: Hashable, dead: Hold, out: Record) -> None:
        """``dead`` was granted the key but cannot be woken: pass the key on."""
        with self._guard:
            if dead._state != GRANTED:
                return  # released by someone else meanwhile: handed on already
            self._give_up(key, dead, out)
            dead._state = CANCELLED  # it never ran
