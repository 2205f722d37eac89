"""Which runtime is the caller in, and who is the caller (the owner).

Detection is lazy and cheap: asyncio through the running-loop slot, trio
through the thread-local name it sets in ``sniffio`` while a run is active.
trio is imported only when the caller is inside a trio run (so it is already
imported).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from asyncio import AbstractEventLoop
from asyncio.events import _get_running_loop
from collections.abc import Callable
from typing import Any, Final

import sniffio

__all__ = [
    "ASYNCIO",
    "FLIGHT_INSTEAD",
    "LOCK_INSTEAD",
    "TRIO",
    "async_owner",
    "async_runtime",
    "asyncio_task",
    "blocking_call_error",
    "check_can_block",
    "current_task",
    "get_ident",
    "last_loop",
    "on_loop_thread",
    "running_loop",
    "sniffio_local",
    "sync_owner",
    "task_of",
    "thread_owners",
]

ASYNCIO: Final = 1
TRIO: Final = 2

get_ident = threading.get_ident


class _ThreadOwner(threading.local):
    """Each thread's owner token: a fresh object per thread, never reused.

    Thread idents are reused once a thread ends, so a key left held by a
    finished thread would look like the new thread's own (a false
    "re-acquire" error). The token lives as long as some hold refers to it.
    """

    def __init__(self) -> None:
        self.token = object()


#: ``thread_owners.token``: the owner token of the calling thread.
thread_owners: Final = _ThreadOwner()


running_loop = _get_running_loop
sniffio_local = sniffio.thread_local

current_task: Callable[[AbstractEventLoop], asyncio.Task[Any] | None]
current_task = asyncio.current_task


def on_loop_thread(loop: AbstractEventLoop) -> bool:
    """True if ``loop`` is running in this very thread (so it may be called directly).

    Reads the loop's own record of the thread running it when it has one
    (every loop built on asyncio's ``BaseEventLoop``), which costs no system
    call; other loops are compared with the running loop.
    """
    if getattr(loop, "_thread_id", None) == get_ident():
        return True
    return _get_running_loop() is loop


#: The current asyncio task, or None (``asyncio.current_task`` without a running loop).
asyncio_task: Callable[[], asyncio.Task[Any] | None]

#: The loop that last answered :func:`asyncio_task` on 3.11 (always None elsewhere), and
#: the task registry to look its current task up in: hot paths inline the check
#: ``loop is not None and loop._thread_id == get_ident()`` and call ``task_of(loop)``.
last_loop: Final[list[Any]] = [None]
task_of: Callable[[Any], asyncio.Task[Any] | None] = lambda loop: None  # noqa: E731


def _public_asyncio_task() -> asyncio.Task[Any] | None:
    loop = _get_running_loop()
    return None if loop is None else current_task(loop)


asyncio_task = _public_asyncio_task

if sys.version_info >= (3, 12):  # pragma: no cover - version-specific
    # Finding the running loop costs no system call there, and current_task is C. (Not
    # asyncio.current_task() itself: without a running loop, under trio say, it raises.)
    pass
else:  # pragma: no cover - version-specific
    from asyncio import tasks as _tasks

    _registry = getattr(_tasks, "_current_tasks", None)
    if isinstance(_registry, dict):
        # On 3.11, asyncio.current_task is pure Python, and _get_running_loop()
        # makes a getpid() system call on every call from inside a running loop
        # (a fork check, gone in 3.12): together they were most of an uncontended
        # `async with`. So remember the loop that last answered (one cell shared
        # by all threads: no thread-local lookup) and trust it while it says it
        # runs in this thread. run_forever() records its thread on entry and
        # clears it on exit, and one thread runs one loop at a time, so that
        # check is exact. Loops without that record take the public path.
        _task_registry: dict[AbstractEventLoop, asyncio.Task[Any]] = _registry
        current_task = task_of = _task_registry.get
        _seen = last_loop

        def _cached_asyncio_task() -> asyncio.Task[Any] | None:
            loop = _seen[0]
            if loop is not None and loop._thread_id == get_ident():
                return _task_registry.get(loop)
            loop = _get_running_loop()
            if loop is None:
                return None
            if hasattr(loop, "_thread_id"):
                _seen[0] = loop
            return _task_registry.get(loop)

        asyncio_task = _cached_asyncio_task


def _trio_task() -> object | None:
    """The current trio task, or None if this thread is not in a trio task."""
    if sniffio_local.name != "trio":
        return None
    from trio import lowlevel

    if not lowlevel.in_trio_task():
        return None
    return lowlevel.current_task()


def sync_owner() -> object:
    """Owner of a synchronous call: the current task inside one, else the thread."""
    loop = _get_running_loop()
    if loop is not None:
        asyncio_task = current_task(loop)
        if asyncio_task is not None:
            return asyncio_task
    trio_task = _trio_task()
    return trio_task if trio_task is not None else thread_owners.token


def async_runtime(loop: AbstractEventLoop | None) -> tuple[int, object]:
    """(runtime, owner task) of an ``async`` caller; RuntimeError outside both.

    ``loop`` is the running asyncio loop the caller already looked up.
    """
    if loop is not None:
        asyncio_task = current_task(loop)
        if asyncio_task is not None:
            return ASYNCIO, asyncio_task
    trio_task = _trio_task()
    if trio_task is not None:
        return TRIO, trio_task
    name = sniffio_local.name
    raise RuntimeError(
        "keyedlock's async API needs a running asyncio task or trio task"
        + (f" (found {name!r}, which is not supported)" if name else "")
        + "; in a thread without an event loop use `with` / acquire() instead"
    )


def async_owner() -> tuple[int, object]:
    """(runtime, owner task) of the calling ``async`` code; RuntimeError outside a task."""
    task = asyncio_task()
    if task is not None:
        return ASYNCIO, task
    return async_runtime(None)


#: What a blocking call of a keyed lock should be replaced with inside an event loop.
LOCK_INSTEAD: Final = "`async with klock(key)`, `await acquire_async(...)` or `await run(...)`"
#: The same for single-flight.
FLIGHT_INSTEAD: Final = "`await flight.do(...)`"


def blocking_call_error(what: str, instead: str = LOCK_INSTEAD) -> RuntimeError:
    return RuntimeError(
        f"{what} would block this thread, which is running an event loop "
        f"(it freezes the loop and can deadlock); use {instead} there instead"
    )


def check_can_block(what: str, instead: str = LOCK_INSTEAD) -> None:
    """Raise RuntimeError if this thread runs an asyncio loop or a trio run."""
    if _get_running_loop() is not None or sniffio_local.name is not None:
        raise blocking_call_error(what, instead)
