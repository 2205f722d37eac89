"""asyncio adapter: a waiting task awaits a future on its own loop.

The waker resolves the future directly when it runs on the waiter's loop, and
through ``call_soon_threadsafe`` from any other thread or loop. If the
waiter's loop is closed the wake fails and the core passes the key on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from functools import partial

from .._core._keytable import CANCELLED, GRANTED, WAITING, Hold, KeyTable, decided
from ._detect import running_loop

__all__ = ["wait_asyncio"]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> bool:
    if running_loop() is loop:
        _resolve(fut)
        return True
    try:
        loop.call_soon_threadsafe(_resolve, fut)
    except RuntimeError:  # the loop is closed: its task will never run again
        return False
    return True


async def wait_asyncio(
    table: KeyTable,
    key: Hashable,
    hold: Hold,
    timeout: float | None,
    loop: asyncio.AbstractEventLoop,
) -> int:
    """Queue ``hold`` for ``key`` and wait; returns GRANTED, CANCELLED or ABORTED.

    Cancellation withdraws the waiter and leaves no trace; if the key was
    handed over in the same instant it is passed on to the next waiter.
    """
    fut: asyncio.Future[None] = loop.create_future()
    if table.enqueue(key, hold, partial(_wake, loop, fut)):
        return GRANTED
    timer = None if timeout is None else loop.call_later(timeout, _resolve, fut)
    try:
        await fut
    except BaseException:
        table.cancel(key, hold)  # a key handed over in the same instant passes on
        raise
    finally:
        if timer is not None:
            timer.cancel()
    state = decided(hold)
    if state == WAITING:  # the timer fired first
        state = table.withdraw(key, hold)
        if state == WAITING:
            return CANCELLED
        state = decided(hold)
    return state
