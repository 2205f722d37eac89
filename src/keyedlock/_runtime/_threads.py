"""Thread adapter: a waiting thread parks on a pre-acquired lock; the waker releases it."""

from __future__ import annotations

import threading
from collections.abc import Hashable
from functools import partial

from .._core._keytable import CANCELLED, GRANTED, WAITING, Hold, KeyTable, decided

__all__ = ["wait_thread"]

# threading.Lock.acquire rejects timeouts above this; longer ones wait forever.
_TIMEOUT_MAX = threading.TIMEOUT_MAX


def _wake(parked: threading.Lock) -> bool:
    parked.release()
    return True


def wait_thread(table: KeyTable, key: Hashable, hold: Hold, timeout: float | None) -> int:
    """Queue ``hold`` for ``key`` and park this thread until it is decided.

    Returns GRANTED (the hold owns the key), CANCELLED (timed out) or ABORTED.
    An exception while parked (KeyboardInterrupt in the main thread) withdraws
    the waiter, releasing the key if it was granted in the same instant.
    """
    parked = threading.Lock()
    parked.acquire()
    if table.enqueue(key, hold, partial(_wake, parked)):
        return GRANTED
    wait = -1.0 if timeout is None or timeout > _TIMEOUT_MAX else timeout
    try:
        woken = parked.acquire(timeout=wait)
    except BaseException:
        table.cancel(key, hold)
        raise
    # Once decided, only a release by someone else changes a hold's state (to RELEASED).
    state = decided(hold)
    if not woken and state == WAITING:
        state = table.withdraw(key, hold)
        if state == WAITING:
            return CANCELLED
        state = decided(hold)
    return state
