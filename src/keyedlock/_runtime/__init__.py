"""Runtime adapters: how a caller of each runtime waits and is woken, and who the caller is.

Each adapter only parks the calling thread or task until the core calls the
``wake`` callable it registered, and withdraws the waiter from the core when
the wait ends otherwise (timeout, cancellation, an interrupt). Who the caller
is (its *owner*: a thread, an asyncio task, a trio task) and which runtime it
runs in is decided here, in :mod:`._detect`, and nowhere else. The trio
adapter is imported only by callers that run under trio.

This module is the package-internal API of the runtime layer: the rest of
keyedlock imports these names from here, never from the modules below.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Hashable
from typing import Any

from .._core import Hold, KeyTable
from .._ki import internal
from ._asyncio import (
    WAKE_UP,
    AsyncioWaker,
    park_asyncio,
    raise_own,
    wait_asyncio,
    wake_future,
    woken,
)
from ._detect import (
    ASYNCIO,
    FLIGHT_INSTEAD,
    LOCK_INSTEAD,
    TRIO,
    ThreadToken,
    async_owner,
    async_runtime,
    asyncio_task,
    blocking_call_error,
    blocking_owner,
    check_can_block,
    describe_owner,
    get_ident,
    in_event_loop,
    last_loop,
    on_loop_thread,
    owner_text,
    running_loop,
    sniffio_local,
    sync_owner,
    task_of,
    thread_owners,
    trio_lowlevel,
)
from ._ends import has_ended, never_runs_again, note_trio_run, when_ended
from ._finished import Finished
from ._herd import AsyncioHerd, Herds, HerdTicket
from ._offload import Offload
from ._pool import OffloadPool
from ._ready import READY
from ._threads import ThreadWaker, wait_thread

__all__ = [
    "ASYNCIO",
    "FLIGHT_INSTEAD",
    "LOCK_INSTEAD",
    "READY",
    "TRIO",
    "WAKE_UP",
    "AsyncioHerd",
    "AsyncioWaker",
    "Finished",
    "HerdTicket",
    "Herds",
    "Offload",
    "OffloadPool",
    "ThreadToken",
    "ThreadWaker",
    "async_owner",
    "async_runtime",
    "asyncio_task",
    "blocking_call_error",
    "blocking_owner",
    "check_can_block",
    "describe_owner",
    "get_ident",
    "has_ended",
    "in_event_loop",
    "last_loop",
    "load_trio_adapter",
    "never_runs_again",
    "note_trio_run",
    "on_loop_thread",
    "owner_text",
    "park_async",
    "park_asyncio",
    "raise_own",
    "running_loop",
    "sniffio_local",
    "sync_owner",
    "task_of",
    "thread_owners",
    "trio_adapter",
    "trio_checkpoint",
    "trio_checkpoint_if_cancelled",
    "trio_lowlevel",
    "trio_shielded_checkpoint",
    "wait_asyncio",
    "wait_thread",
    "wake_future",
    "when_ended",
    "woken",
]


@internal
def park_async(
    table: KeyTable,
    key: Hashable,
    hold: Hold,
    timeout: float | None,
    runtime: int,
    task: Any,
    checkpoints: bool = False,
) -> Awaitable[int]:
    """Queue ``hold`` and park the current asyncio or trio ``task`` (see the adapters).

    ``checkpoints``: under trio, checkpoint as :class:`trio.Lock` does (see
    the trio adapter); asyncio never yields for a free key, as
    :class:`asyncio.Lock`. A plain function returning the adapter's
    coroutine: no coroutine of its own.
    """
    if runtime == ASYNCIO:
        return wait_asyncio(table, key, hold, timeout, task.get_loop())
    adapter = trio_adapter[0] or load_trio_adapter()
    wait: Awaitable[int] = adapter.wait_trio(table, key, hold, timeout, checkpoints)
    return wait


def trio_checkpoint() -> Awaitable[None]:
    """Under trio: raise Cancelled if the task's scope is cancelled, else yield once."""
    return load_trio_adapter().checkpoint()  # type: ignore[no-any-return]


def trio_checkpoint_if_cancelled() -> Awaitable[None]:
    """Under trio: raise Cancelled if the task's scope is cancelled (no yield otherwise)."""
    return load_trio_adapter().checkpoint_if_cancelled()  # type: ignore[no-any-return]


def trio_shielded_checkpoint() -> Awaitable[None]:
    """Under trio: yield to the scheduler once, without raising Cancelled."""
    return load_trio_adapter().cancel_shielded_checkpoint()  # type: ignore[no-any-return]


def load_trio_adapter() -> Any:
    """The trio adapter, imported by the first caller under trio (an import statement on
    every call would cost more than an uncontended acquire)."""
    adapter = trio_adapter[0]
    if adapter is None:
        adapter = trio_adapter[0] = importlib.import_module("._trio", __name__)
    return adapter


#: The trio adapter module, once imported.
trio_adapter: list[Any] = [None]
