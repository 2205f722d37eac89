"""KeyedLock: one lock per key, for threads, asyncio and trio at once, over any scope.

:class:`KeyedLock` is written once, over a scope backend (see
:mod:`keyedlock._scopes`): the process scope by default; the host and
cluster scopes (:class:`~keyedlock.FileKeyedLock`, the manager's locks, ...)
are subclasses that only build another backend.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Hashable
from time import monotonic
from typing import Any, Final

from ._core import IDLE, complete
from ._errors import LockTimeout
from ._ki import internal
from ._recording import Watch, timed_context, watched_context
from ._running import RunMixin
from ._runtime import (
    READY,
    TRIO,
    async_owner,
    blocking_owner,
    describe_owner,
    note_trio_run,
    running_loop,
    sniffio_local,
    sync_owner,
    thread_owners,
    trio_lowlevel,
)
from ._scopes import ENTERED, NEW, LocalBackend, LockBackend, LockContext
from ._statistics import LockStatistics
from ._validate import check_flag, check_key, check_max_waiters, check_timeout, check_warn_after

__all__ = ["KeyedLock", "LockContext", "klock"]


@internal
class KeyedLock(RunMixin):
    """A lock per key: work for one key runs one at a time, in arrival order.

    Different keys never wait for each other, and a key that nobody holds or
    waits for takes no memory. One object serves every runtime at once::

        klock = KeyedLock()

        with klock("user:42"):            # in a thread
            ...

        async with klock("user:42"):      # in an asyncio or trio task
            ...

    They exclude each other: a thread, an asyncio task (on any loop, in any
    thread) and a trio task asking for the same key queue behind one another,
    first come, first served, and the key is handed directly to the next
    waiter on release. The lock covers this process; see
    :class:`~keyedlock.FileKeyedLock` for every process on the host.

    Compared with :class:`threading.Lock`: ``release(key)`` may be called by
    any thread or task (not only the holder); but a blocking re-acquire of a
    key the same owner already holds raises RuntimeError instead of
    deadlocking. The owner is the current asyncio or trio task when called in
    one, otherwise the current thread.

    Args:
        max_waiters: how many callers may queue on one key (None: unbounded;
            0: never queue). A blocking acquire that would exceed it raises
            :class:`~keyedlock.QueueFull` at once.
        fast_acquire: under trio, take a free key without the two checkpoints
            :class:`trio.Lock` makes (raise Cancelled first if the scope is
            cancelled; yield once after acquiring). False (the default) keeps
            them: a loop of acquires lets other tasks run, and a cancelled
            scope's body never starts. A try of a busy key (``timeout=0``)
            checkpoints either way. asyncio never yields for a free key, as
            :class:`asyncio.Lock`, whatever this says.
        warn_after: seconds (a finite number > 0; None, the default: off) after
            which a hold still held is logged once, at WARNING on the
            ``keyedlock`` logger, with the key, the holder and the file and
            line where it was acquired. Each acquisition then records its
            time and place (about a microsecond). See "Seeing what is
            happening" in docs/semantics.md.
    """

    __slots__ = (
        "__weakref__",
        "_backend",
        "_context",
        "_map_key",
        "_mapped",
        "_timed",
        "_watch",
    )

    _backend: LockBackend

    def __init__(
        self,
        *,
        max_waiters: int | None = None,
        fast_acquire: bool = False,
        warn_after: float | None = None,
    ) -> None:
        self._bind(
            LocalBackend(check_max_waiters(max_waiters), check_flag(fast_acquire)), warn_after
        )

    def _bind(self, backend: LockBackend, warn_after: float | None = None) -> None:
        """Serve this lock from ``backend`` (what the scopes' constructors call)."""
        warn_after = check_warn_after(warn_after)
        self._backend = backend
        self._map_key = backend.map_key
        self._mapped = backend.mapped_keys
        if warn_after is None:
            self._watch: Watch | None = None
            self._context = backend.context
            self._timed = False
        else:
            self._watch = Watch(warn_after, backend)
            self._context = watched_context(backend.context, self._watch)
            self._timed = True

    def _local(self, key: object) -> Hashable:
        """Validate ``key`` and map it to the backend's key."""
        map_key = self._map_key
        if map_key is not None:
            try:
                mapped: Hashable = self._mapped[type(key)][key]  # a key mapped lately
            except (KeyError, TypeError):
                mapped = map_key(key)
            return mapped
        try:
            hash(key)
        except TypeError:
            check_key(key)
        return key

    @property
    def max_waiters(self) -> int | None:
        """The per-key bound on queued callers (None: unbounded)."""
        return self._backend.max_waiters

    @property
    def fast_acquire(self) -> bool:
        """True if, under trio, a free key is taken without checkpoints."""
        return self._backend.fast_acquire

    @property
    def warn_after(self) -> float | None:
        """Seconds after which a hold still held is logged (None: never)."""
        return None if self._watch is None else self._watch.warn_after

    def __repr__(self) -> str:
        return f"<{type(self).__name__} keys={len(self)} max_waiters={self.max_waiters}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # (The wider scopes' classes define their own: a copy there reaches the same keys.)
        raise TypeError(
            f"a {type(self).__name__} cannot be pickled or copied: its keys live in this "
            "process (share the object itself); "
            "across processes use FileKeyedLock(path), KeyedLockManager().KeyedLock() or a "
            "RedisKeyedLock"
        )

    # -- the context manager -----------------------------------------------

    def __call__(self, key: Hashable, *, timeout: float | None = None) -> LockContext:
        """A context manager holding ``key`` for the body of a ``with`` / ``async with``.

        ``timeout`` (seconds; None waits forever, 0 tries once) bounds the
        wait; when it elapses, :class:`~keyedlock.LockTimeout` is raised and
        nothing is left queued or held. A blocking ``with`` inside a running
        event loop raises RuntimeError (use ``async with`` there). The object
        is for one use: call ``klock(key)`` again for the next.
        """
        map_key = self._map_key
        if map_key is None:
            try:
                hash(key)
            except TypeError:
                check_key(key)
        else:
            try:
                key = self._mapped[type(key)][key]  # a key mapped lately: no call
            except (KeyError, TypeError):
                key = map_key(key)
        if timeout is not None:
            timeout = check_timeout(timeout)
        # Built by calling the backend's context class (no __init__ frame) and filling in
        # every slot: this is on every acquire's path.
        backend = self._backend
        context = self._context  # (a slot's class: a generic lookup if called as a method)
        ctx = context()
        ctx._waiters = None
        ctx._state = IDLE
        ctx._watched = False  # (set, not left unset: reading an unset slot raises inside)
        ctx._backend = backend
        ctx._table = backend.table  # (a fork child's backend has a new one)
        ctx._key = key
        ctx._timeout = timeout
        ctx._phase = NEW
        ctx._ready = READY
        return ctx

    # -- explicit acquire / release ----------------------------------------

    def acquire(
        self, key: Hashable, *, blocking: bool = True, timeout: float | None = None
    ) -> bool:
        """Acquire ``key``, blocking this thread; True if acquired.

        Returns False on timeout, or at once if ``blocking=False`` (or
        ``timeout=0``) and the key is busy. As with :class:`threading.Lock`,
        ``blocking=False`` with a timeout is a ValueError. A blocking call in
        a thread running an event loop raises RuntimeError; a non-blocking one
        is allowed there. Release with :meth:`release`.
        """
        if blocking is not True:  # (the default: no check)
            if not isinstance(blocking, int):  # (bool included; as threading.Lock)
                raise TypeError(f"blocking must be a bool, got {blocking!r}")
            if not blocking:
                if timeout is not None:
                    raise ValueError("can't specify a timeout for a non-blocking acquire")
                timeout = 0
        ctx = self.__call__(key, timeout=timeout)  # (not self(...): a type slot more)
        timeout = ctx._timeout  # (checked)
        ctx._phase = ENTERED
        ctx._watched = True  # taken by acquire(): it may outlive its owner
        if timeout == 0:
            ctx._owner = owner = sync_owner()
            if describe_owner(owner)[0] == "trio":
                note_trio_run(trio_lowlevel[0])  # (as in acquire_async)
        elif running_loop() is None and sniffio_local.name is None:
            ctx._owner = thread_owners.token  # blocking_owner(), written out: every acquire()
        else:
            ctx._owner = blocking_owner("a blocking acquire(key)")  # raises
        try:
            acquired = self._backend.acquire(ctx, timeout)
            if acquired and self._timed:
                self._recorded(ctx)
            return acquired
        except LockTimeout:  # a scope that says why (a manager that did not answer, say)
            ctx._undo()
            return False
        except BaseException:
            complete(ctx._undo)  # interrupted, even right after it acquired: nothing stays held
            raise

    async def acquire_async(self, key: Hashable, *, timeout: float | None = None) -> bool:
        """Acquire ``key`` from an asyncio or trio task; True if acquired.

        Returns False if ``timeout`` elapses (0 tries once). Cancellation while
        waiting leaves no trace. Release with :meth:`release`.
        """
        ctx = self.__call__(key, timeout=timeout)  # (not self(...): a type slot more)
        ctx._phase = ENTERED
        ctx._watched = True  # taken by acquire(): it may outlive its owner
        runtime, ctx._owner = async_owner()
        if runtime == TRIO:
            # Before it may hold the key (a waiter may watch it as soon as it is handed
            # the key): its end can then be watched from any thread.
            note_trio_run(trio_lowlevel[0])
        try:
            acquired = bool(await ctx._acquire_async(runtime, False))
            if acquired and self._timed:
                self._recorded(ctx)
            return acquired
        except LockTimeout:  # a scope that says why (a manager that did not answer, say)
            ctx._undo()
            return False
        except BaseException:
            complete(ctx._undo)
            raise

    def release(self, key: Hashable) -> None:
        """Release ``key``, whoever holds it; RuntimeError if it is not held.

        The key passes directly to its first waiter, if any. Like
        :meth:`threading.Lock.release`, any thread or task may release.
        """
        done: list[Any] = []
        watch = self._watch
        taken: LockContext | None = None  # the watched hold acquire() took, if any
        try:
            # _local(key), written out (as in __call__): every release(key) maps its key.
            map_key = self._map_key
            local: Hashable = key
            if map_key is None:
                try:
                    hash(key)
                except TypeError:
                    check_key(key)
            else:
                try:
                    local = self._mapped[type(key)][key]  # a key mapped lately: no call
                except (KeyError, TypeError):
                    local = map_key(key)
            if watch is not None:
                # Found before the release: the key's next holder may be watched before
                # this call forgets the one it released.
                taken = watch.taken(local)
            self._backend.release_key(local, done)
        except Exception:
            raise
        except BaseException:
            # Interrupted: finish the release it started (never another hold's).
            complete(self._release_again, key, done)
            raise
        finally:
            if taken is not None and watch is not None:
                watch.left(taken)

    def _release_again(self, key: Hashable, done: list[Any]) -> None:
        """``release(key)`` again, after an interrupt: it finishes what the first try began."""
        with contextlib.suppress(Exception):  # (the first try's error: the interrupt is raised)
            self._backend.release_key(self._local(key), done)

    # -- introspection -----------------------------------------------------

    def locked(self, key: Hashable) -> bool:
        """True if someone holds ``key`` (or it was just handed to a waiter)."""
        return self._backend.locked(self._local(key))

    def waiters(self, key: Hashable) -> int:
        """How many callers are queued on ``key`` (not the holder)."""
        return self._backend.waiters(self._local(key))

    def __len__(self) -> int:
        """Number of keys with a holder or a waiter."""
        return self._backend.busy()

    def statistics(self, key: Hashable) -> LockStatistics:
        """A snapshot of ``key``: held or not, by whom, for how long, who waits.

        Nothing is recorded for it until asked: the first call turns on
        recording the acquisition time of this lock's holds (one clock read
        per acquisition), so ``held_for`` is None for a hold taken before it
        (and always known with ``warn_after``). The holder is named by its
        runtime, thread or task name and process id; a holder in another
        process is known by its process id only in the file scope, and by
        its process id and host in the Redis scope.
        """
        if not self._timed:
            self._timed = True
            self._context = timed_context(self._context)
        return self._backend.statistics(self._local(key), key)

    def keys(self) -> list[Hashable]:
        """The keys that have a holder or a waiter at this moment (a snapshot).

        In the host and cluster scopes, the keys of this process's callers (a
        lock file keeps no names, and Redis is not scanned); the manager's
        lists every process's.
        """
        return self._backend.keys()

    def _recorded(self, ctx: LockContext) -> None:
        """After ``acquire()``: record the hold as its context would have."""
        ctx._since = monotonic()
        if self._watch is not None:
            self._watch.held(ctx, sys._getframe(2), explicit=True)


klock: Final = KeyedLock()
"""A ready :class:`KeyedLock` shared by the whole process.

Two parts of a program that use one key through ``klock`` exclude each
other. Create a :class:`KeyedLock` of your own for a separate key space or a
``max_waiters`` bound.
"""
