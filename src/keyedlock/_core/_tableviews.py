"""What a key table looks like now: the questions the scopes ask of a :class:`KeyTable`.

Read-only views, each taken in one step (the holder and its waiters under
the table's guard); a table first passes on the keys of lost wakes, so that
a view never shows a key held by a waiter that can no longer run.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable

from ._hold import WAITING, Hold

__all__ = ["TableViews"]


class TableViews:
    """The introspection of :class:`~._keytable.KeyTable` (a mixin over its fields)."""

    __slots__ = ()

    _holds: dict[Hashable, Hold]
    _guard: threading.RLock
    _lost: deque[tuple[Hashable, Hold]]

    def give_back_lost(self) -> None:
        raise NotImplementedError

    def locked(self, key: Hashable) -> bool:
        if self._lost:
            self.give_back_lost()
        return key in self._holds

    def waiters(self, key: Hashable) -> int:
        if self._lost:
            self.give_back_lost()
        holder = self._holds.get(key)
        if holder is None:
            return 0
        queue = holder._waiters
        return queue.live if queue is not None else 0

    def __len__(self) -> int:
        if self._lost:
            self.give_back_lost()
        return len(self._holds)

    def snapshot(
        self, key: Hashable, callers: Callable[[Hold], list[Hold]] | None = None
    ) -> tuple[Hold | None, list[Hold]]:
        """``key``'s holder (None if free) and its waiters still waiting, in arrival order:
        one consistent view, taken under the guard.

        ``callers(hold)``, if given, names the callers a hold stands for, in order
        (a hold of several callers; ``[hold]`` for one, ``[]`` for none): the
        holder is then the first caller of the holder's hold, and the others
        wait, ahead of the waiters, each replaced by its callers.
        """
        if self._lost:
            self.give_back_lost()
        with self._guard:
            holder = self._holds.get(key)
            if holder is None:
                return None, []
            queue = holder._waiters
            waiting = (
                []
                if queue is None or queue.outcome is not None
                else [hold for hold in queue if hold._state == WAITING]
            )
            if callers is None:
                return holder, waiting
            first, *rest = callers(holder) or [holder]
            for hold in waiting:
                rest.extend(callers(hold))
            return first, rest

    def busy_keys(self) -> list[Hashable]:
        """The keys with a holder (or a waiter) at this moment."""
        if self._lost:
            self.give_back_lost()
        return list(self._holds)
