"""A hold used as a context manager: it knows its key and table, and leaves them itself.

Every keyed lock hands out a context (``lock(key)``) that is a :class:`KeyHold`:
the hold of one caller, entered once and exited once (its *phase*). The scopes
add how to acquire (:mod:`keyedlock._scopes`); leaving a key of a local table
is the core's, and :meth:`KeyHold._exit` is written out here, next to the
table's guard, because it is every release's path: the uncontended exit (the
hold has no waiter) is one pass under the guard with no call of its own, as
:meth:`KeyTable.leave <keyedlock._core.KeyTable.leave>`'s is; anything else
is :meth:`KeyTable.release <keyedlock._core.KeyTable.release>`; the hand-off to the
first waiter is written out too (one guard pass, one wake).
"""

from __future__ import annotations

from collections.abc import Hashable
from types import TracebackType
from typing import Any, ClassVar, Final

from .._ki import internal
from ._complete import complete
from ._hold import GRANTED, RELEASED, WAITING, Hold, Record
from ._keytable import KeyTable

__all__ = ["BAD_EXIT", "ENTERED", "EXITED", "NEW", "REUSE", "KeyHold"]

#: A context's phases: made, entered (acquiring or holding), exited.
NEW: Final = 0
ENTERED: Final = 1
EXITED: Final = 2

REUSE: Final = "this klock(key) context was already used; call klock(key) again for a new one"
BAD_EXIT: Final = (
    "exit of a klock(key) context that is not entered (exited twice, or never entered)"
)


@internal
class KeyHold(Hold):
    """A hold of ``_key`` in ``_table``, used once as a context manager (see the module).

    ``_phase`` is NEW, ENTERED or EXITED; ``_ready`` is what a clean exit
    returns and :attr:`_raised` what an exit returns when the body raised:
    both awaitable (for ``async with``), the second falsy (a ``with`` never
    swallows the body's exception). The core knows no runtime: the subclass
    sets them.
    """

    __slots__ = ("_key", "_phase", "_ready", "_table")

    _key: Hashable
    _phase: int
    _ready: Any
    #: The local table the hold acquired in (None for a scope without one).
    _table: KeyTable | None
    _raised: ClassVar[Any] = None

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        """Leave the key of a local table: ``__exit__`` and ``__aexit__`` of such contexts.

        RuntimeError if the hold was not entered, or if someone else released
        it already (the key's new holder keeps it). An interrupt anywhere
        leaves the key released.
        """
        if self._phase != ENTERED:
            raise RuntimeError(BAD_EXIT)
        self._phase = EXITED
        table: Any = self._table
        key = self._key
        granted: Hold | None = None  # the waiter handed the key (the record: see KeyTable)
        out: Record | None = None  # (what the wake-ups act on, shared with a recovery)
        try:
            # KeyTable.release's pass, written out for the exit of a local table's own hold:
            # a call is a tenth of an uncontended release, a third of a hand-off's.
            guard = table._guard
            try:
                guard.acquire()
                holds = table._holds
                if holds.get(key) is self:
                    queue = self._waiters
                    if queue is None:  # never waited for: nothing can act on this hold
                        del holds[key]
                        return self._ready if exc_type is None else self._raised
                    if not queue.live:
                        self._state = RELEASED
                        del holds[key]
                        return self._ready if exc_type is None else self._raised
                    nxt = queue[0]
                    while nxt._state != WAITING:  # drop the withdrawn ahead of it
                        queue.popleft()
                        nxt = queue[0]
                    # One straight run, recorded by the store to ``granted`` (as _hand_off).
                    self._state = RELEASED
                    nxt._state = GRANTED
                    queue.live -= 1
                    nxt._waiters = queue if queue.live else None
                    holds[key] = nxt
                    granted = nxt
                    queue.popleft()
            finally:
                try:  # noqa: SIM105 - one call, no window: see KeyTable's module
                    guard.release()
                except RuntimeError:  # an interrupt stopped acquire() before it took it
                    pass
            if granted is None:
                table.release(key, self)  # not held by this hold: says so
            elif not granted._wake() or (granted._waiters is not None and granted._watched):
                out = [granted]
                table._deliver(key, out)  # pass it on, or watch it (wakes are idempotent)
        except BaseException:
            if out is None and granted is not None:
                out = [granted]  # (one list for every run of the recovery: see _skip)
            complete(_recover, table, key, self, out)  # (again if another interrupt lands)
            raise
        return self._ready if exc_type is None else self._raised


def _recover(table: KeyTable, key: Hashable, hold: KeyHold, out: Record | None) -> None:
    """After an interrupt in ``hold``'s exit: wake the waiter it handed the key to, and those
    a wake that failed passed it on to since (``out``: wakes are idempotent), or release the
    key if the exit had not got that far."""
    if out is not None:
        table._deliver(key, out)
    elif table.holder(key) is hold:  # never leave the key held
        table.release(key, hold)
