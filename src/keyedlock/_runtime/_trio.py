"""trio adapter: a waiting task parks with ``wait_task_rescheduled``.

The waker reschedules the task directly when it runs inside the same trio run,
and through the run's token (``run_sync_soon``) from anywhere else. The abort
function asks the core, atomically, whether the waiter can still withdraw; if
the key was handed over in the same instant the abort fails and the task
resumes owning the key (trio then delivers the cancellation at its next
checkpoint, and the context manager releases the key on the way out).

This module imports trio; only callers running under trio import it.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial
from typing import TYPE_CHECKING

import trio
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    TrioToken,
    current_task,
    current_trio_token,
    reschedule,
    wait_task_rescheduled,
)

from .._core import GRANTED, WAITING, Hold, KeyTable, complete, decided
from .._ki import internal, protect_with

__all__ = [
    "TrioWaker",
    "cancel_shielded_checkpoint",
    "checkpoint",
    "checkpoint_if_cancelled",
    "trio_waker",
    "try_trio",
    "wait_trio",
]

# Under trio from here on: trio defers a Ctrl-C that lands in keyedlock's internals to the
# task's next checkpoint (see keyedlock._ki).
protect_with(trio.lowlevel.enable_ki_protection)

checkpoint = trio.lowlevel.checkpoint
checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled
cancel_shielded_checkpoint = trio.lowlevel.cancel_shielded_checkpoint


@internal
class TrioWaker:
    """Reschedules one trio task, once: directly inside its own run, else through the run's
    token; False if its run is over. Calling it again answers as the first call did."""

    __slots__ = ("answer", "rescheduled", "task", "token")

    token: TrioToken
    task: Task
    answer: bool | None
    rescheduled: bool

    if not TYPE_CHECKING:
        # Made by calling the class, then filled in (see wait_trio): object's own
        # __init__ runs no Python frame, and this is on every wait's path.
        __init__ = object.__init__

    def __call__(self) -> bool:
        answer = self.answer
        if answer is not None:
            return answer
        try:
            here = current_trio_token() is self.token
        except RuntimeError:  # not in a trio run
            here = False
        if here:
            self.answer = True  # (no signal can land between this and _once: trio defers it)
            self._once()
            return True
        # Answered once the wake-up is queued: an interrupt before that makes the core call
        # again, and queue another, which finds the task rescheduled already (see _once).
        try:
            self.token.run_sync_soon(self._once)
        except trio.RunFinishedError:  # its run is over: the task will never resume
            self.answer = False
            return False
        self.answer = True
        return True

    def _once(self) -> None:
        """In the task's run: reschedule it, unless an earlier wake-up did (twice would
        break trio)."""
        if not self.rescheduled:
            self.rescheduled = True
            reschedule(self.task)


def trio_waker() -> TrioWaker:
    """A waker of the current trio task."""
    waker = TrioWaker()
    waker.token = current_trio_token()
    waker.task = current_task()
    waker.answer = None
    waker.rescheduled = False
    return waker


@internal
def _abort(table: KeyTable, key: Hashable, hold: Hold, _: RaiseCancelT) -> Abort:
    """trio's abort function of a waiting task: withdraw it, unless it was just decided."""
    if table.withdraw(key, hold) == WAITING:
        return Abort.SUCCEEDED
    return Abort.FAILED  # granted or aborted: the wake is on its way


@internal
async def wait_trio(
    table: KeyTable, key: Hashable, hold: Hold, timeout: float | None, checkpoints: bool = False
) -> int:
    """Queue ``hold`` for ``key`` and wait; returns GRANTED, CANCELLED or ABORTED.

    ``checkpoints``: as :class:`trio.Lock` does, first raise Cancelled if the
    task's scope is cancelled, and yield once after taking a free key (a wait
    is a checkpoint already).
    """
    try:
        if checkpoints:
            await checkpoint_if_cancelled()
        take = table.take  # (a slot's callable: a generic lookup if called as a method)
        if take(key, hold) is not hold:
            waker = TrioWaker()  # trio_waker(), written out: this is every wait's path
            waker.token = current_trio_token()
            waker.task = current_task()
            waker.answer = None
            waker.rescheduled = False
            if not table.enqueue(key, hold, waker):
                abort = partial(_abort, table, key, hold)
                if timeout is None:
                    await wait_task_rescheduled(abort)
                else:
                    with trio.move_on_after(timeout):
                        await wait_task_rescheduled(abort)
                # GRANTED or ABORTED after a wake (the wait was a checkpoint); CANCELLED if
                # the timeout withdrew it.
                return GRANTED if hold._state == GRANTED else decided(hold)
        if checkpoints:  # a free key: the yield trio.Lock makes after taking it
            await cancel_shielded_checkpoint()
        return GRANTED
    except BaseException:
        complete(table.cancel, key, hold)
        raise


@internal
async def try_trio(table: KeyTable, key: Hashable, hold: Hold, fast: bool = False) -> bool:
    """Try once to take ``key`` for ``hold`` (``timeout=0``), checkpointing as every trio
    acquire does: Cancelled first if the task's scope is cancelled, and a yield after the
    try, taken or not (so a loop of tries lets the holder run). ``fast``
    (``fast_acquire``): a free key is taken without them; a busy one still checkpoints."""
    if fast:
        if table.take(key, hold) is hold:
            return True
        await checkpoint()
        return False
    await checkpoint_if_cancelled()
    try:
        taken = table.take(key, hold) is hold
        await cancel_shielded_checkpoint()
    except BaseException:
        complete(table.cancel, key, hold)
        raise
    return taken
