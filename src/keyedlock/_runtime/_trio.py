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

import trio
from trio.lowlevel import (
    Abort,
    RaiseCancelT,
    Task,
    TrioToken,
    current_task,
    current_trio_token,
    in_trio_run,
    reschedule,
    wait_task_rescheduled,
)

from .._core._keytable import GRANTED, WAITING, Hold, KeyTable, decided

__all__ = ["checkpoint", "checkpoint_if_cancelled", "wait_trio"]

checkpoint = trio.lowlevel.checkpoint
checkpoint_if_cancelled = trio.lowlevel.checkpoint_if_cancelled


def _wake(token: TrioToken, task: Task) -> bool:
    if in_trio_run() and current_trio_token() is token:
        reschedule(task)
        return True
    try:
        token.run_sync_soon(reschedule, task)
    except trio.RunFinishedError:  # its run is over: the task will never resume
        return False
    return True


async def wait_trio(table: KeyTable, key: Hashable, hold: Hold, timeout: float | None) -> int:
    """Queue ``hold`` for ``key`` and wait; returns GRANTED, CANCELLED or ABORTED."""
    wake = partial(_wake, current_trio_token(), current_task())
    if table.enqueue(key, hold, wake):
        return GRANTED

    def abort(_: RaiseCancelT) -> Abort:
        if table.withdraw(key, hold) == WAITING:
            return Abort.SUCCEEDED
        return Abort.FAILED  # granted or aborted: the wake is on its way

    if timeout is None:
        await wait_task_rescheduled(abort)
    else:
        with trio.move_on_after(timeout):
            await wait_task_rescheduled(abort)
    # GRANTED or ABORTED after a wake; CANCELLED if the timeout withdrew it.
    return decided(hold)
