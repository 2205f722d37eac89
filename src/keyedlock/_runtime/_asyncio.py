"""asyncio adapter: a waiting task awaits a future on its own loop.

The waker resolves the future directly when it runs on the waiter's loop, and
through ``call_soon_threadsafe`` from any other thread or loop (a C-level
callback: see :data:`WAKE_UP`). If the
waiter's loop is closed the wake fails and the core passes the key on; if the
loop is closed later, with the wake-up still queued in it, the wake-up is
dropped unrun and reports the loss to the core (see :class:`_WakeUp`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Generator, Hashable
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from .._core import ABORTED, CANCELLED, GRANTED, WAITING, Hold, KeyTable, complete, decided
from .._ki import internal
from ._detect import get_ident, on_loop_thread, running_loop

__all__ = [
    "WAKE_UP",
    "AsyncioWaker",
    "YieldThen",
    "lost_wake",
    "park_asyncio",
    "raise_own",
    "wait_asyncio",
    "wake_future",
    "woken",
]

#: The message of the cancellation that wakes a waiting task without running any Python code
#: of ours: a waiter's timer, and a wake from another thread, are ``fut.cancel(WAKE_UP)``
#: itself, a C-level call (no signal can land between it being run and the task being woken),
#: and cancelling a future that is already done does nothing. The waiter takes a
#: CancelledError carrying this message for what it is; its own state says why it woke.
WAKE_UP: Final = "keyedlock: wake up"


def woken(
    exc: BaseException, fut: asyncio.Future[None], task: asyncio.Task[Any], before: int
) -> bool:
    """True if ``exc``, raised in ``task`` by awaiting ``fut``, is a wake-up, not a cancellation.

    ``before`` is ``task.cancelling()`` from before the await: a cancellation of
    the task that arrived with the wake-up (asyncio then throws the wake-up's
    CancelledError in its place) counts as a cancellation.
    """
    return exc.args == (WAKE_UP,) and fut.cancelled() and task.cancelling() == before


def raise_own(exc: BaseException, task: object) -> None:
    """Raise ``task``'s own CancelledError in place of ``exc`` if ``exc`` is a wake-up's.

    A task cancelled just after keyedlock woke it (the timer's or another thread's
    ``fut.cancel(WAKE_UP)``, already done) gets the wake-up's CancelledError from asyncio:
    the message the task was cancelled with (``task.cancel(msg)``) was then kept, only
    there, in its ``_cancel_message`` (set by that very call: it found its future done).
    Returns otherwise: the caller re-raises ``exc``.
    """
    if isinstance(exc, asyncio.CancelledError) and exc.args == (WAKE_UP,):
        message = getattr(task, "_cancel_message", None)
        raise asyncio.CancelledError(*(() if message is None else (message,))) from None


class _WakeUp(partial[bool]):
    """The callback a wake from another thread queues on the waiter's loop.

    It is ``partial(fut.cancel, WAKE_UP)``: called, it runs no Python frame.
    A loop that is closed before running it drops it unrun; it is then
    finalized with its future not done, and calls ``on_lost`` (which must not
    block: it may run in a finalizer, in any thread).
    """

    #: (None until set: an interrupt may land between the wake-up's creation and the set.)
    on_lost: Callable[[], object] | None = None

    def __del__(self) -> None:
        on_lost = self.on_lost
        if on_lost is not None and not self.func.__self__.done():  # type: ignore[attr-defined]
            on_lost()


@internal
def wake_future(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None], on_lost: Callable[[], object]
) -> bool:
    """Wake the task awaiting ``fut`` on ``loop``, directly or from another thread; False if
    the loop is closed.

    ``on_lost`` is called if the loop is closed later with the wake-up still
    queued (it never runs).
    """
    if on_loop_thread(loop):
        fut.cancel(WAKE_UP)
        return True
    wake_up = _WakeUp(fut.cancel, WAKE_UP)
    wake_up.on_lost = on_lost
    try:
        loop.call_soon_threadsafe(wake_up)
    except RuntimeError:  # the loop is closed: its task will never run again
        wake_up.on_lost = None  # not lost: the caller learns it from the False
        return False
    if loop.is_closed():
        # close() raced the call: the wake-up may sit in the closed loop's queue, which
        # nothing runs or clears any more. Report the wake as failed (if close() dropped
        # it first and it was reported lost already, the second report changes nothing).
        wake_up.on_lost = None
        return False
    return True


@internal
class AsyncioWaker:
    """Wakes one task waiting on ``fut`` (a future of ``loop``), once.

    Directly when called on the loop's own thread, else through
    ``call_soon_threadsafe`` (a wake-up dropped unrun by a loop closed later
    reports the loss to ``table``). Calling it again answers as the first
    call did and wakes nobody twice.
    """

    __slots__ = ("answer", "fut", "hold", "key", "loop", "table")

    loop: asyncio.AbstractEventLoop
    fut: asyncio.Future[None]
    table: KeyTable
    key: Hashable
    hold: Hold
    answer: bool | None

    if not TYPE_CHECKING:
        # Made by calling the class, then filled in (see wait_asyncio): object's own
        # __init__ runs no Python frame, and this is on every wait's path.
        __init__ = object.__init__

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
            # Only a wake from another thread can be lost (see lost_wake): let go of the hold,
            # which refers to this waker, so that no cycle is left for the collector.
            self.hold = None  # type: ignore[assignment]
            return True
        # From another thread: a second wake-up would only cancel a future that is done.
        answer = wake_future(loop, self.fut, partial(lost_wake, self.table, self.key, self.hold))
        self.answer = answer
        return answer


def lost_wake(table: KeyTable, key: Hashable, hold: Hold) -> None:
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


#: asyncio's own ``create_future``, which only makes a ``Future(loop=loop)``.
_BASE_CREATE_FUTURE: Final = asyncio.BaseEventLoop.create_future


def new_future(loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    """``loop.create_future()``, made directly for asyncio's own loops (their method is a
    Python frame that only calls the class: this is on every wait's path)."""
    if type(loop).create_future is _BASE_CREATE_FUTURE:
        return asyncio.Future(loop=loop)
    return loop.create_future()


@internal
def park_asyncio(
    table: KeyTable, key: Hashable, hold: Hold, task: asyncio.Task[Any]
) -> asyncio.Future[None] | None:
    """Queue ``hold`` for ``key``, for a wait with no deadline: None if it took the key at
    once, else the future the waiting ``task`` awaits (what :func:`wait_asyncio` does,
    as a plain function: its caller awaits the future itself, one coroutine less).

    The caller records ``task.cancelling()`` before awaiting, takes what the
    await raises for a wake-up if :func:`woken` says so, then acts on
    :func:`~keyedlock._core.decided`; whatever else escapes, it cancels the hold.
    """
    loop = task.get_loop()
    fut = new_future(loop)
    waker = AsyncioWaker()
    waker.loop = loop
    waker.fut = fut
    waker.table = table
    waker.key = key
    waker.hold = hold
    waker.answer = None
    return None if table.enqueue(key, hold, waker) else fut


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
    fut = new_future(loop)
    timer = None
    try:
        waker = AsyncioWaker()
        waker.loop = loop
        waker.fut = fut
        waker.table = table
        waker.key = key
        waker.hold = hold
        waker.answer = None
        if table.enqueue(key, hold, waker):
            return GRANTED
        if timeout is not None:
            timer = loop.call_later(timeout, fut.cancel, WAKE_UP)
        task: asyncio.Task[object] = hold._owner  # type: ignore[assignment]  # the waiting task
        before = task.cancelling()
        try:
            await fut
        except asyncio.CancelledError as exc:
            if not woken(exc, fut, task, before):  # the task itself was cancelled
                raise_own(exc, task)
                raise
        state = hold._state
        if state == GRANTED or (state == WAITING and hold._queue.outcome is not None):
            return ABORTED if state == WAITING else GRANTED  # decided(hold), without the call
        state = decided(hold)
        if state == WAITING:  # the timer fired first
            state = table.withdraw(key, hold)
            if state == WAITING:
                return CANCELLED
            state = decided(hold)
        return state
    except BaseException:
        # However far it got: a key handed over meanwhile passes on.
        complete(table.cancel, key, hold)
        raise
    finally:
        if timer is not None:
            timer.cancel()


class YieldThen:
    """Awaited: one yield to the loop, then what ``fut`` resolves to (None without one).

    The yield lets a cancellation on its way come first: an anyio cancel scope's, held
    back while the future the task awaited was done. (An awaitable, not a coroutine:
    one made and never awaited, as an interrupt can leave it, is simply dropped.)
    """

    __slots__ = ("fut",)

    def __init__(self, fut: asyncio.Future[Any] | None) -> None:
        self.fut = fut

    def __await__(self) -> Generator[Any, None, Any]:
        yield None  # a bare yield: the task runs again on the loop's next round
        fut = self.fut
        if fut is None:
            return None
        return (yield from fut.__await__())
