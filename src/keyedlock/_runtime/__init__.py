"""Runtime adapters: how a waiter of each runtime parks and is woken.

Each adapter only parks the calling thread or task until the core calls the
``wake`` callable it registered, and withdraws the waiter from the core when
the wait ends otherwise (timeout, cancellation). The trio adapter is imported
only by callers that run under trio.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .._core._keytable import Hold, KeyTable
from ._asyncio import wait_asyncio
from ._detect import ASYNCIO

__all__ = ["park_async"]


async def park_async(
    table: KeyTable, key: Hashable, hold: Hold, timeout: float | None, runtime: int, loop: Any
) -> int:
    """Queue ``hold`` and park the current asyncio or trio task (see the adapters)."""
    if runtime == ASYNCIO:
        return await wait_asyncio(table, key, hold, timeout, loop)
    from ._trio import wait_trio

    return await wait_trio(table, key, hold, timeout)
