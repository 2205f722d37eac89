"""When an owner ends: a thread that finishes, an asyncio or trio task that returns or raises.

A key is released by its holder's exit; a hold taken with ``acquire()``
waits for a ``release(key)`` that may come from anyone. If its owner ends
first, the scope hears of it here and decides (see ``abandoned`` in
:mod:`keyedlock._scopes._local`). Nothing is registered on the uncontended
path: a caller that is about to wait for a key asks :func:`when_ended` to
watch the holder's owner, once per holder.

- a thread: each thread's owner token keeps a weak reference to an object
  stored in the thread's own thread-local data, which the interpreter drops
  when the thread ends; the reference's callback reports the end;
- an asyncio task: a done callback, added on the task's own loop;
- a trio task: an instrument of its run (``task_exited``), added from inside
  that run: directly by a waiter of the same run, and through the run's
  token by a waiter in another thread (the token is noted when a trio task
  takes a key with ``acquire()``: :func:`note_trio_run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from .._ki import internal
from ._detect import ThreadToken, describe_owner, sniffio_local

__all__ = ["has_ended", "note_trio_run", "when_ended"]

#: A subscriber's method, called with the owner that ended.
Callback = Callable[[Any], object]

#: The subscribers waiting for each watched owner's end, held weakly: a lock dropped while
#: a long-lived thread that it watched goes on is freed, and its entry pruned.
_waiting: weakref.WeakKeyDictionary[Any, list[weakref.WeakMethod[Callback]]] = (
    weakref.WeakKeyDictionary()
)
_guard = threading.Lock()


#: The process whose owners are watched. In a fork child the interpreter drops the parent's
#: other threads (their thread-local data with them) before the at-fork handlers run: those
#: are not ends, and are ignored until the child's handler (below) takes over.
_pid: list[int] = [os.getpid()]


def _forget_in_child() -> None:
    """In a fork child: the parent's threads and tasks do not end here (nor exist), and the
    guard may have been held by one of them."""
    global _guard
    _guard = threading.Lock()
    _pid[0] = os.getpid()
    _waiting.clear()
    _trio_runs.clear()
    _noted[0] = None


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_forget_in_child)


def has_ended(owner: object) -> bool:
    """True if ``owner`` (a thread's token, an asyncio or trio task) has ended."""
    if isinstance(owner, ThreadToken):
        return owner.ended
    if isinstance(owner, asyncio.Task):
        return owner.done()
    coro = getattr(owner, "coro", None)
    if inspect.iscoroutine(coro):  # a trio task
        return inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED
    return False


def never_runs_again(owner: object) -> bool:
    """True if ``owner`` can never run again, though it has not ended: an asyncio task whose
    event loop was closed while the task was pending (a wake-up could never be run)."""
    get_loop = getattr(owner, "get_loop", None)  # (an asyncio task's; trio's, threads' lack it)
    if get_loop is None:
        return False
    try:
        closed: bool = get_loop().is_closed()
    except Exception:  # (a task-like owner of another kind)
        return False
    return closed


@internal
def when_ended(owner: object, method: Callback) -> bool:
    """Call ``method(owner)`` once ``owner`` ends (at once if it has). False if this
    owner's end cannot be watched from here (a trio task of another run).

    ``method`` is a bound method, held weakly: if its object is garbage-collected
    first, it is not called (a dropped lock does not live as long as the threads it
    watched).
    """
    if has_ended(owner):
        method(owner)
        return True
    subscriber = weakref.WeakMethod(method)
    with _guard:
        subscribers = _waiting.get(owner)
        if subscribers is not None:
            if len(subscribers) >= 8 and len(subscribers) & (len(subscribers) - 1) == 0:
                # At each power of two: drop those whose object is gone (amortized).
                subscribers[:] = [each for each in subscribers if each() is not None]
            subscribers.append(subscriber)
            return True
        if not _watch(owner):
            return False
        _waiting[owner] = [subscriber]
    if has_ended(owner):  # ended while it was being watched: the watch may have missed it
        _ended(owner)
    return True


def _ended(owner: object) -> None:
    """``owner`` ended: call (and forget) the subscribers that wait for it."""
    if os.getpid() != _pid[0]:
        return  # a parent's thread, dropped by fork (see _pid)
    with _guard:
        subscribers = _waiting.pop(owner, [])
    for subscriber in subscribers:
        method = subscriber()
        if method is not None:
            method(owner)


def _watch(owner: object) -> bool:
    """Start watching ``owner`` (under ``_guard``); False if it cannot be watched."""
    if isinstance(owner, ThreadToken):
        owner.on_end = _ended
        return True
    if isinstance(owner, asyncio.Task):
        loop = owner.get_loop()
        done = _on_task_done
        try:
            loop.call_soon_threadsafe(owner.add_done_callback, done)
        except RuntimeError:  # its loop is closed: the task will never end otherwise
            return False
        return True
    if describe_owner(owner)[0] == "trio":
        return _watch_trio(owner)
    return False


def _on_task_done(task: asyncio.Task[Any]) -> None:
    _ended(task)


#: The runs (their ``TrioToken``) whose tasks took keys with ``acquire()``, by the run's
#: root task: a waiter outside a run watches its tasks' ends through it. (Only such holds
#: can outlive their owner: a context releases its key on exit.)
_trio_runs: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
#: The token noted last, so that noting the same run again costs one comparison.
_noted: list[Any] = [None]


def note_trio_run(lowlevel: Any) -> None:
    """A task of the calling trio run (``trio.lowlevel``) took a key with ``acquire()``: note
    the run, so that a waiter in another thread can watch the task's end (see _watch_trio)."""
    try:
        token = lowlevel.current_trio_token()
        if token is _noted[0]:
            return
        root = lowlevel.current_root_task()
    except RuntimeError:  # not in a run after all
        return
    with _guard:
        _trio_runs[root] = token
        _noted[0] = token


def _watch_trio(task: Any) -> bool:
    """Watch a trio task: from inside its own run directly, from elsewhere through the run's
    token (noted when the task acquired); False if neither is possible."""
    root = _root_of(task)
    if sniffio_local.name == "trio":
        from trio import lowlevel

        try:
            here = root is lowlevel.current_root_task()
        except RuntimeError:  # not inside a trio task after all
            here = False
        if here:
            _add_to_instrument(task)  # (under _guard: its end is checked by when_ended)
            return True
    token = _trio_runs.get(root)
    if token is None:
        return False
    # (trio.RunFinishedError, a RuntimeError: the run is over, and the task with it, which
    # when_ended sees.)
    with contextlib.suppress(RuntimeError):
        token.run_sync_soon(_watch_in_run, task)
    return True


def _watch_in_run(task: Any) -> None:
    """Called in the task's own run, by its token: report the task's end, at once if it
    has ended since it was asked for."""
    if has_ended(task):
        _ended(task)
    else:
        _add_to_instrument(task)


def _add_to_instrument(task: Any) -> None:
    """From inside the task's own run: its run's instrument reports the task's end."""
    from trio import lowlevel

    root = lowlevel.current_root_task()
    instrument = _trio_instruments.get(root)
    if instrument is None:
        instrument = _TaskEnds()
        lowlevel.add_instrument(instrument)  # type: ignore[arg-type]
        _trio_instruments[root] = instrument
    instrument.watched.add(task)


def _root_of(task: Any) -> Any:
    while True:
        nursery = task.parent_nursery
        if nursery is None:
            return task
        task = nursery.parent_task


class _TaskEnds:
    """A trio instrument that reports the end of the watched tasks of its run."""

    def __init__(self) -> None:
        self.watched: weakref.WeakSet[Any] = weakref.WeakSet()

    def task_exited(self, task: Any) -> None:
        if task in self.watched:
            self.watched.discard(task)
            _ended(task)


_trio_instruments: weakref.WeakKeyDictionary[Any, _TaskEnds] = weakref.WeakKeyDictionary()
