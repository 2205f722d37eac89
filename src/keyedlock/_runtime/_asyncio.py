"""asyncio adapter: a waiting task awaits a future on its own loop.

The waker resolves the future directly when it runs on the waiter's loop, and
through ``call_soon_threadsafe`` from any other thread or loop. If the
waiter's loop is closed the wake fails and the core passes the key on; if the
loop is closed later, with the wake-up still queued in it, the wake-up is
dropped unrun and reports the loss to the core (see :class:`_WakeUp`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Hashable
from functools import partial

from .._core._keytable import CANCELLED, GRANTED, WAITING, Hold, KeyTable, decided
from ._detect import get_ident, on_loop_thread, running_loop

__all__ = ["AsyncioWaker", "wait_asyncio", "wake_future"]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _WakeUp:
    """The callback a wake from another thread queues on the waiter's loop.

    A loop that is closed before running it drops it: then, and only then,
    it is finalized without having run, and calls ``on_lost`` (which must
    not block: it may run in a finalizer, in any thread).
    """

    __slots__ = ("fut", "on_lost", "ran")

    def __init__(self, fut: asyncio.Future[None], on_lost: Callable[[], object]) -> None:
        self.fut = fut
        self.on_lost = on_lost
        self.ran = False

    def __call__(self) -> None:
        self.ran = True
        _resolve(self.fut)

    def __del__(self) -> None:
        if not self.ran:
            self.on_lost()


def wake_future(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], on_lost: Callable[[], object]
) -> bool:
    """Resolve ``fut`` on ``loop``, directly or from another thread; False if the loop is closed.

    ``on_lost`` is called if the loop is closed later with the wake-up still
    queued (it never runs).
    """
    if on_loop_thread(loop):
        _resolve(fut)
        return True
    wake_up = _WakeUp(fut, on_lost)
    try:
        loop.call_soon_threadsafe(wake_up)
    except RuntimeError:  # the loop is closed: its task will never run again
        wake_up.ran = True  # not lost: the caller learns it from the False
        return False
    if loop.is_closed():
        # close() raced the call: the wake-up may sit in the closed loop's queue, which
        # nothing runs or clears any more. Report the wake as failed (if close() dropped
        # it first and it was reported lost already, the second report changes nothing).
        wake_up.ran = True
        return False
    return True


class AsyncioWaker:
    """Wakes one task waiting on ``fut`` (a future of ``loop``), once.

    Directly when called on the loop's own thread, else through
    ``call_soon_threadsafe`` (a wake-up dropped unrun by a loop closed later
    reports the loss to ``table``). Calling it again answers as the first
    call did and wakes nobody twice.
    """

    __slots__ = ("answer", "fut", "hold", "key", "loop", "table")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        fut: asyncio.Future[None],
        table: KeyTable,
        key: Hashable,
        hold: Hold,
    ) -> None:
        self.loop = loop
        self.fut = fut
        self.table = table
        self.key = key
        self.hold = hold
        self.answer: bool | None = None

    def __call__(self) -> bool:
        answer = self.answer
        if answer is not None:
            return answer
        loop = self.loop
        try:  # on_loop_thread(loop), inlined: this is every hand-off's path
            here = loop._thread_id == get_ident()  # type: ignore[attr-defined]
        except AttributeError:  # a loop that does not record its thread
            here = running_loop() is loop
        if here:
            fut = self.fut
            if fut.done():  # cancelled: its task is withdrawing it
                self.answer = True
                return True
            self.answer = True  # (no signal can land between this and set_result)
            fut.set_result(None)
            return True
        # From another thread: a second wake-up would only resolve a resolved future.
        answer = wake_future(loop, self.fut, partial(_lost, self.table, self.key, self.hold))
        self.answer = answer
        return answer


def _lost(table: KeyTable, key: Hashable, hold: Hold) -> None:
    """A wake-up to ``hold`` was dropped unrun: pass its key on, from a helper thread.

    Runs in a finalizer (any thread, any moment, maybe inside keyedlock's own
    guarded code), so it only records the loss and starts a thread that
    takes the table's guard and wakes the next waiter.
    """
    table.lost(key, hold)
    try:  # noqa: SIM105 - not contextlib: at interpreter shutdown its module may be gone
        threading.Thread(
            target=table.give_back_lost, name="keyedlock-lost-wake-up", daemon=True
        ).start()
    except Exception:  # at interpreter shutdown (modules torn down) nobody waits any more
        pass


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
    timer = None
    try:
        if table.enqueue(key, hold, AsyncioWaker(loop, fut, table, key, hold)):
            return GRANTED
        if timeout is not None:
            timer = loop.call_later(timeout, _resolve, fut)
        await fut
        state = decided(hold)
        if state == WAITING:  # the timer fired first
            state = table.withdraw(key, hold)
            if state == WAITING:
                return CANCELLED
            state = decided(hold)
        return state
    except BaseException:
        table.cancel(key, hold)  # however far it got: a key handed over meanwhile passes on
        raise
    finally:
        if timer is not None:
            timer.cancel()
