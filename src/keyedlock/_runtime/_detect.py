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
    "TRIO",
    "async_runtime",
    "asyncio_task",
    "blocking_call_error",
    "check_can_block",
    "current_task",
    "get_ident",
    "running_loop",
    "sniffio_local",
    "sync_owner",
]

ASYNCIO: Final = 1
TRIO: Final = 2

get_ident = threading.get_ident
running_loop = _get_running_loop
sniffio_local = sniffio.thread_local

current_task: Callable[[AbstractEventLoop], asyncio.Task[Any] | None]
current_task = asyncio.current_task


def asyncio_task() -> asyncio.Task[Any] | None:
    """The asyncio task running in this thread, or None (public-API version)."""
    loop = _get_running_loop()
    return None if loop is None else current_task(loop)


if sys.version_info < (3, 12):  # pragma: no branch - version-specific
    from asyncio import tasks as _tasks

    _registry = getattr(_tasks, "_current_tasks", None)
    if isinstance(_registry, dict):
        # On 3.11, asyncio.current_task is pure Python, and _get_running_loop()
        # makes a getpid() system call on every call from inside a running
        # loop (a fork check, gone in 3.12): together most of an uncontended
        # `async with`. So remember the loop this thread last ran, and trust
        # it while that loop says it runs in this thread; anything else takes
        # the public path.
        _task_registry: dict[AbstractEventLoop, asyncio.Task[Any]] = _registry
        current_task = _task_registry.get

        class _LastLoop(threading.local):
            loop: AbstractEventLoop | None = None

        _last_loop = _LastLoop()

        def asyncio_task() -> asyncio.Task[Any] | None:
            loop = _last_loop.loop
            if loop is not None and getattr(loop, "_thread_id", None) == get_ident():
                return _task_registry.get(loop)
            loop = _get_running_loop()
            if loop is None:
                return None
            _last_loop.loop = loop
            return _task_registry.get(loop)


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
    return trio_task if trio_task is not None else get_ident()


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


def blocking_call_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what} would block this thread, which is running an event loop "
        "(it freezes the loop and can deadlock); use `async with klock(key)`, "
        "`await acquire_async(...)` or `await run(...)` there instead"
    )


def check_can_block(what: str) -> None:
    """Raise RuntimeError if this thread runs an asyncio loop or a trio run."""
    if _get_running_loop() is not None or sniffio_local.name is not None:
        raise blocking_call_error(what)
