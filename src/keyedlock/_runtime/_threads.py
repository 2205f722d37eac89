"""Thread adapter: a waiting thread parks on a pre-acquired lock; the waker releases it."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import TYPE_CHECKING

from .._core import CANCELLED, GRANTED, WAITING, Hold, KeyTable, complete, decided
from .._ki import internal

__all__ = ["ThreadWaker", "wait_thread"]

# threading.Lock.acquire rejects timeouts above this; longer ones wait forever.
_TIMEOUT_MAX = threading.TIMEOUT_MAX


@internal
class ThreadWaker:
    """Wakes one parked thread, once: calling it again does nothing (and answers True).

    ``parked`` is acquired before it is queued (see wait_thread); the thread waits by
    acquiring it again.
    """

    __slots__ = ("parked", "woken")

    parked: threading.Lock
    woken: bool

    if not TYPE_CHECKING:
        # Made by calling the class, then filled in (see wait_thread): object's own
        # __init__ runs no Python frame, and this is on every wait's path.
        __init__ = object.__init__

    def __call__(self) -> bool:
        if not self.woken:
            self.woken = True  # (no signal can land between this and the release)
            self.parked.release()
        return True


def wait_thread(table: KeyTable, key: Hashable, hold: Hold, timeout: float | None) -> int:
    """Queue ``hold`` for ``key`` and park this thread until it is decided.

    Returns GRANTED (the hold owns the key), CANCELLED (timed out) or ABORTED.
    An exception anywhere in here (KeyboardInterrupt in the main thread)
    withdraws the waiter, passing the key on if it was granted meanwhile.
    """
    waker = ThreadWaker()
    parked = waker.parked = threading.Lock()
    parked.acquire()
    waker.woken = False
    try:
        if table.enqueue(key, hold, waker):
            return GRANTED
        if timeout is None:
            woken = parked.acquire()
        else:
            woken = parked.acquire(timeout=-1.0 if timeout > _TIMEOUT_MAX else timeout)
        if hold._state == GRANTED:  # (decided()'s first answer, without the call)
            return GRANTED
        # Once decided, only a release by someone else changes a hold's state (to RELEASED).
        state = decided(hold)
        if not woken and state == WAITING:
            state = table.withdraw(key, hold)
            if state == WAITING:
                return CANCELLED
            state = decided(hold)
        return state
    except BaseException:
        complete(table.cancel, key, hold)
        raise
