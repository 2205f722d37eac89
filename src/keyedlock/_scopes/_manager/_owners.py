"""Owners on the wire: the numbers by which the manager tells this process's callers apart.

The manager tells owners apart by (process id, number). The numbers are never
reused within a process, unlike thread idents and ``id(task)``: a key left
held by a thread or task that ended must not look like a new one's own (a
false re-acquire error). Threads have positive numbers, tasks negative ones.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from typing import Final

from ..._runtime import describe_owner, thread_owners
from ._protocol import NAME_LIMIT

__all__ = ["owner_id", "owner_name", "task_owner_id", "thread_owner_id"]


_owner_numbers: Final = weakref.WeakKeyDictionary[object, int]()
_owner_counter: Final = itertools.count(1)
#: Reentrant: a signal handler may need a number while its thread is taking one.
_owner_numbers_lock = threading.RLock()


def _new_owner_number() -> int:
    with _owner_numbers_lock:  # one step on free-threaded builds too
        return next(_owner_counter)


def _reset_owner_numbers_lock() -> None:
    """In a fork child: a fresh lock (another thread may have held it at the fork)."""
    global _owner_numbers_lock
    _owner_numbers_lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reset_owner_numbers_lock)


class _ThreadNumber(threading.local):
    def __init__(self) -> None:
        self.number = _new_owner_number()


_thread_number: Final = _ThreadNumber()


def thread_owner_id() -> int:
    """The wire form of the calling thread as an owner (positive)."""
    return _thread_number.number


def task_owner_id(task: object) -> int:
    """The wire form of an asyncio or trio task as an owner: negative, even for asyncio and
    odd for trio (the manager reports the runtime of holders and waiters)."""
    number = _owner_numbers.get(task)
    if number is None:
        trio = describe_owner(task)[0] == "trio"
        number = _owner_numbers.setdefault(task, -(2 * _new_owner_number() + trio))
    return number


def owner_id(owner: object) -> int:
    """The wire form of an owner (a context's ``_owner``): the calling thread, or its task."""
    if owner is thread_owners.token:
        return thread_owner_id()
    return task_owner_id(owner)


def owner_name(owner: object) -> str | None:
    """The name the manager reports for an owner: its thread's or task's name (None if it
    has none)."""
    name = describe_owner(owner)[1]
    return None if name is None else name[:NAME_LIMIT]  # (as the manager keeps it)
