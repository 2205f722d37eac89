"""Keyed locks written by hand, the way an application usually writes them.

These are baselines, not recommendations: a dict of per-key locks with a
reference count, the entry deleted when the count drops to zero (so idle keys
do not pile up). Each comes in the two usual shapes: a small class whose
instances are the context managers, and a generator turned into one with
``contextlib``. They are written plainly, as a user would, without
micro-optimizations.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType

__all__ = [
    "AsyncKeyedLockCM",
    "AsyncKeyedLockClass",
    "ThreadKeyedLockCM",
    "ThreadKeyedLockClass",
]


class _AsyncEntry:
    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class _AsyncHold:
    """``async with locks(key):`` of :class:`AsyncKeyedLockClass`."""

    def __init__(self, entries: dict[Hashable, _AsyncEntry], key: Hashable) -> None:
        self.entries = entries
        self.key = key

    async def __aenter__(self) -> None:
        entry = self.entries.get(self.key)
        if entry is None:
            entry = self.entries[self.key] = _AsyncEntry()
        entry.users += 1
        try:
            await entry.lock.acquire()
        except BaseException:
            self._leave(entry)
            raise
        self.entry = entry

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.entry.lock.release()
        self._leave(self.entry)

    def _leave(self, entry: _AsyncEntry) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self.entries[self.key]


class AsyncKeyedLockClass:
    """asyncio: dict of ``asyncio.Lock`` + users count; a class per ``async with``."""

    def __init__(self) -> None:
        self.entries: dict[Hashable, _AsyncEntry] = {}

    def __call__(self, key: Hashable) -> _AsyncHold:
        return _AsyncHold(self.entries, key)

    def __len__(self) -> int:
        return len(self.entries)


class AsyncKeyedLockCM:
    """asyncio: the same dict of locks, as an ``@asynccontextmanager``."""

    def __init__(self) -> None:
        self.locks: dict[Hashable, asyncio.Lock] = {}
        self.users: dict[Hashable, int] = {}

    @asynccontextmanager
    async def __call__(self, key: Hashable) -> AsyncIterator[None]:
        lock = self.locks.get(key)
        if lock is None:
            lock = self.locks[key] = asyncio.Lock()
            self.users[key] = 0
        self.users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self.users[key] -= 1
            if self.users[key] == 0:
                del self.locks[key]
                del self.users[key]

    def __len__(self) -> int:
        return len(self.locks)


class _ThreadEntry:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class _ThreadHold:
    """``with locks(key):`` of :class:`ThreadKeyedLockClass`."""

    def __init__(self, owner: ThreadKeyedLockClass, key: Hashable) -> None:
        self.owner = owner
        self.key = key

    def __enter__(self) -> None:
        owner = self.owner
        with owner.guard:
            entry = owner.entries.get(self.key)
            if entry is None:
                entry = owner.entries[self.key] = _ThreadEntry()
            entry.users += 1
        try:
            entry.lock.acquire()
        except BaseException:
            self._leave(entry)
            raise
        self.entry = entry

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.entry.lock.release()
        self._leave(self.entry)

    def _leave(self, entry: _ThreadEntry) -> None:
        owner = self.owner
        with owner.guard:
            entry.users -= 1
            if entry.users == 0:
                del owner.entries[self.key]


class ThreadKeyedLockClass:
    """Threads: dict of ``threading.Lock`` + users count under a guard lock; a class."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.entries: dict[Hashable, _ThreadEntry] = {}

    def __call__(self, key: Hashable) -> _ThreadHold:
        return _ThreadHold(self, key)

    def __len__(self) -> int:
        return len(self.entries)


class ThreadKeyedLockCM:
    """Threads: the same dict of locks under a guard, as a ``@contextmanager``."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.locks: dict[Hashable, threading.Lock] = {}
        self.users: dict[Hashable, int] = {}

    @contextmanager
    def __call__(self, key: Hashable) -> Iterator[None]:
        with self.guard:
            lock = self.locks.get(key)
            if lock is None:
                lock = self.locks[key] = threading.Lock()
                self.users[key] = 0
            self.users[key] += 1
        try:
            with lock:
                yield
        finally:
            with self.guard:
                self.users[key] -= 1
                if self.users[key] == 0:
                    del self.locks[key]
                    del self.users[key]

    def __len__(self) -> int:
        return len(self.locks)
