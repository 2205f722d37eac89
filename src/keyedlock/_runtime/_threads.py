"""Thread adapter: a waiting thread parks on a pre-acquired lock; the waker releases it."""

from __future__ import annotations

import threading
from collections.abc import Hashable

from .._core import CANCELLED, GRANTED, WAITING, Hold, KeyTable, decided
from .._ki import internal

__all__ = ["ThreadWaker", "wait_thread"]

# threading.Lock.acquire rejects timeouts above this; longer ones wait forever.
_TIMEOUT_MAX = threading.TIMEOUT_MAX


@internal
class ThreadWaker:
    """Wakes one parked thread, once: calling it again does nothing (and answers True).

    ``parked`` is acquired when made; the thread waits by acquiring it again.
    """

    __slots__ = ("parked", "woken")

    def __init__(self) -> None:
        self.parked = threading.Lock()
        self.parked.acquire()
        self.woken = False

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
    try:
        if table.enqueue(key, hold, waker):
            return GRANTED
        wait = -1.0 if timeout is None or timeout > _TIMEOUT_MAX else timeout
        woken = waker.parked.acquire(timeout=wait)
        # Once decided, only a release by someone else changes a hold's state (to RELEASED).
        state = decided(hold)
        if not woken and state == WAITING:
            state = table.withdraw(key, hold)
            if state == WAITING:
                return CANCELLED
            state = decided(hold)
        return state
    except BaseException:
        table.cancel(key, hold)
        raise
