"""Which runtime is the caller in, and who is the caller (the owner).

Detection is lazy and cheap: asyncio through the running-loop slot, trio
through the thread-local name it sets in ``sniffio`` while a run is active.
trio is imported only when the caller is inside a trio run (so it is already
imported).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from asyncio import AbstractEventLoop
from asyncio.events import _get_running_loop
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import sniffio

__all__ = [
    "ASYNCIO",
    "FLIGHT_INSTEAD",
    "LOCK_INSTEAD",
    "TRIO",
    "ThreadToken",
    "async_owner",
    "async_runtime",
    "asyncio_task",
    "blocking_call_error",
    "blocking_owner",
    "check_can_block",
    "describe_owner",
    "get_ident",
    "in_event_loop",
    "last_loop",
    "on_loop_thread",
    "owner_text",
    "running_loop",
    "sniffio_local",
    "sync_owner",
    "task_of",
    "thread_owners",
    "trio_lowlevel",
]

ASYNCIO: Final = 1
TRIO: Final = 2

get_ident = threading.get_ident


class ThreadToken:
    """A thread as the owner of a hold: compared by identity, named for diagnostics.

    ``ended`` becomes True when the thread ends, and ``on_end(token)`` is
    called then if set (see :mod:`._ends`).
    """

    __slots__ = ("__weakref__", "_alive", "_thread", "ended", "ident", "on_end")

    def __init__(self, thread: threading.Thread) -> None:
        # Kept (not a weak reference): a thread that ended holding a key is still named by
        # its last name. An ended Thread is small (run() drops its target and arguments),
        # and the token lives only while holds refer to it.
        self._thread = thread
        self.ident = thread.ident
        self.ended = False
        self.on_end: Callable[[ThreadToken], object] | None = None
        self._alive: weakref.ref[_Alive] | None = None

    @property
    def name(self) -> str:
        """The thread's name now (its last name, once it ended)."""
        return self._thread.name

    def __repr__(self) -> str:
        return f"<thread {self.name!r}>"


class _Alive:
    """Kept in a thread's own thread-local data only: freed when the thread ends."""

    __slots__ = ("__weakref__",)


def _thread_ended(token: ThreadToken, _: object) -> None:
    token.ended = True
    on_end = token.on_end
    if on_end is not None:
        try:  # noqa: SIM105 - at interpreter exit, even contextlib may be gone
            on_end(token)
        except Exception:  # a watch that failed only loses the watch
            pass


class _ThreadOwner(threading.local):
    """Each thread's owner token: a fresh object per thread, never reused.

    Thread idents are reused once a thread ends, so a key left held by a
    finished thread would look like the new thread's own (a false
    "re-acquire" error). The token lives as long as some hold refers to it.
    """

    def __init__(self) -> None:
        token = ThreadToken(threading.current_thread())
        self.token = token
        self.alive = _Alive()
        token._alive = weakref.ref(self.alive, partial(_thread_ended, token))


#: ``thread_owners.token``: the owner token of the calling thread.
thread_owners: Final = _ThreadOwner()


running_loop = _get_running_loop
sniffio_local = sniffio.thread_local


def on_loop_thread(loop: AbstractEventLoop) -> bool:
    """True if ``loop`` is running in this very thread (so it may be called directly).

    Reads the loop's own record of the thread running it when it has one
    (every loop built on asyncio's ``BaseEventLoop``), which costs no system
    call; other loops are compared with the running loop.
    """
    if getattr(loop, "_thread_id", None) == get_ident():
        return True
    return _get_running_loop() is loop


#: ``(loop, done)``: the asyncio loop that last answered :func:`asyncio_task`, with a
#: finished future of that loop (what an uncontended ``async with`` may return: awaiting
#: it never yields), or None. One cell shared by all threads, read in one step. Hot paths
#: inline ``seen is not None and seen[0]._thread_id == get_ident()`` (the loop runs in
#: this very thread) and then call ``task_of(seen[0])``; anything else calls
#: :func:`asyncio_task`, which refreshes the cell.
last_loop: Final[list[tuple[Any, Any] | None]] = [None]

#: The current task of a loop running in this thread (C-level on every version).
task_of: Callable[[Any], asyncio.Task[Any] | None] = asyncio.current_task

if sys.version_info < (3, 12):  # pragma: no cover - version-specific
    # On 3.11 asyncio.current_task is pure Python; its registry is a dict.
    from asyncio import tasks as _tasks

    _registry = getattr(_tasks, "_current_tasks", None)
    if isinstance(_registry, dict):
        task_of = _registry.get


def asyncio_task() -> asyncio.Task[Any] | None:
    """The asyncio task running in this thread, or None (no running loop, or no task).

    Finding the running loop is a ``getpid()`` system call on 3.11, and was most of an
    uncontended ``async with``; so the loop that last answered is remembered, and trusted
    while it says it runs in this thread: ``run_forever()`` records its thread on entry
    and clears it on exit, and one thread runs one loop at a time, so that check is
    exact. Loops that keep no such record take the public path every time. (Not
    ``asyncio.current_task()`` itself: without a running loop, under trio say, it
    raises on 3.12+.)
    """
    seen = last_loop[0]
    if seen is not None and seen[0]._thread_id == get_ident():
        return task_of(seen[0])
    loop = _get_running_loop()
    if loop is None:
        return None
    if hasattr(loop, "_thread_id"):
        done = loop.create_future()
        done.set_result(None)
        last_loop[0] = (loop, done)
    return task_of(loop)


def _forget_loop_in_child() -> None:
    # A fork child inherits the cell, and the parent's loop still says it runs in this
    # thread (fork keeps the thread's ident): trusting it would make every task of the
    # child look like the parent's task at the time of the fork.
    last_loop[0] = None


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forget_loop_in_child)


def _trio_task() -> object | None:
    """The current trio task, or None if this thread is not in a trio task."""
    if sniffio_local.name != "trio":
        return None
    lowlevel = trio_lowlevel[0]
    if lowlevel is None:  # the first time under trio (imported already: it is running)
        from trio import lowlevel

        trio_lowlevel[0] = lowlevel
    try:
        task: object = lowlevel.current_task()
    except RuntimeError:  # in the run's thread, but not in a task (a run_sync_soon callback)
        return None
    return task


#: ``trio.lowlevel`` once a caller was seen under trio (never imported before); its
#: ``current_task()`` raises RuntimeError outside a trio task.
trio_lowlevel: list[Any] = [None]


def sync_owner() -> object:
    """Owner of a synchronous call: the current task inside one, else the thread."""
    loop = _get_running_loop()
    if loop is not None:
        asyncio_task = task_of(loop)
        if asyncio_task is not None:
            return asyncio_task
    trio_task = _trio_task()
    return trio_task if trio_task is not None else thread_owners.token


def async_runtime(loop: AbstractEventLoop | None) -> tuple[int, object]:
    """(runtime, owner task) of an ``async`` caller; RuntimeError outside both.

    ``loop`` is the running asyncio loop the caller already looked up.
    """
    if loop is not None:
        asyncio_task = task_of(loop)
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


def describe_owner(owner: object) -> tuple[str, str | None]:
    """(runtime, name) of an owner: ("thread", its name), ("asyncio", the task's name),
    ("trio", the task's name), or ("unknown", None)."""
    if isinstance(owner, ThreadToken):
        return "thread", owner.name
    if isinstance(owner, asyncio.Task):
        return "asyncio", owner.get_name()
    if type(owner).__module__.startswith("trio"):
        name = getattr(owner, "name", None)
        return "trio", name if isinstance(name, str) else None
    stands_for = getattr(type(owner), "stands_for", None)  # (a group of callers: a herd)
    if isinstance(stands_for, str):
        return stands_for, None
    return "unknown", None


def owner_text(owner: object) -> str:
    """An owner for messages: ``thread 'worker-1'``, ``asyncio task 'Task-7'``."""
    runtime, name = describe_owner(owner)
    kind = runtime if runtime == "thread" else f"{runtime} task"
    return f"{kind} {name!r}" if name is not None else kind


#: What a blocking call of a keyed lock should be replaced with inside an event loop.
LOCK_INSTEAD: Final = "`async with klock(key)`, `await acquire_async(...)` or `await run(...)`"
#: The same for single-flight.
FLIGHT_INSTEAD: Final = "`await flight.do(...)`"


def blocking_call_error(what: str, instead: str = LOCK_INSTEAD) -> RuntimeError:
    return RuntimeError(
        f"{what} would block this thread, which is running an event loop "
        f"(it freezes the loop and can deadlock); use {instead} there instead"
    )


def in_event_loop() -> bool:
    """True if this thread runs an asyncio loop or a trio run (blocking it would freeze the
    loop). The hot paths that write this test out say so."""
    return _get_running_loop() is not None or sniffio_local.name is not None


def check_can_block(what: str, instead: str = LOCK_INSTEAD) -> None:
    """Raise RuntimeError if this thread runs an asyncio loop or a trio run."""
    if in_event_loop():
        raise blocking_call_error(what, instead)


def blocking_owner(what: str, instead: str = LOCK_INSTEAD) -> object:
    """The owner of a call that blocks this thread: the thread itself.

    RuntimeError if this thread runs an asyncio loop or a trio run (blocking
    there freezes the loop): ``what`` names the call, ``instead`` what to use.
    """
    if in_event_loop():
        raise blocking_call_error(what, instead)
    return thread_owners.token
