"""Runtime adapters: how a waiter of each runtime parks and is woken.

Each adapter only parks the calling thread or task until the core calls the
``wake`` callable it registered, and withdraws the waiter from the core when
the wait ends otherwise (timeout, cancellation). The trio adapter is imported
only by callers that run under trio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Hashable
from typing import Any

from .._core._keytable import Hold, KeyTable
from ._asyncio import wait_asyncio
from ._detect import ASYNCIO

__all__ = ["park_async"]


def park_async(
    table: KeyTable, key: Hashable, hold: Hold, timeout: float | None, runtime: int, task: Any
) -> Awaitable[int]:
    """Queue ``hold`` and park the current asyncio or trio ``task`` (see the adapters).

    A plain function returning the adapter's coroutine: no coroutine of its own.
    """
    if runtime == ASYNCIO:
        return wait_asyncio(table, key, hold, timeout, task.get_loop())
    from ._trio import wait_trio

    return wait_trio(table, key, hold, timeout)
