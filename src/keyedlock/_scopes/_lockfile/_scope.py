"""The lock-file scope: keyed locks across every process of one Linux host.

:class:`FileScope` is the :class:`~keyedlock._scopes.WideScope` of a lock
file. Holding a key means holding a write lock on the key's byte (see
:mod:`._keys`) through an *open file description* (OFD) lock (``fcntl``
``F_OFD_SETLK`` / ``F_OFD_SETLKW`` / ``F_OFD_GETLK``, Linux 3.15+). The kernel
arbitrates between processes, wakes a waiter when the byte frees (no polling)
and drops every lock of a process that dies, SIGKILL included.

OFD locks belong to an open file description, not to a process or thread,
which shapes everything here:

- Locks taken through one description neither stack nor conflict, and one
  unlock drops them. The scope's *shared* descriptor (``fd``) serves the
  fast path (a non-blocking ``F_OFD_SETLK``) and the blocking waits of
  threads without a timeout (``F_OFD_SETLKW`` in the caller's thread; Ctrl-C
  interrupts it). A wait that may be abandoned (an async caller, or a
  timeout) runs in a daemon helper thread (an
  :class:`~keyedlock._runtime.Offload`) on a *private* descriptor (the file
  opened again), so that a lock the kernel grants after its waiter gave up
  can be dropped without touching anything else. ``held`` records, for each
  local holder (keyed by its hold), the descriptor that holds its byte;
  release unlocks through that one (a private one is closed, which drops its
  lock).
- A waiter that gives up leaves its kernel wait running (``F_OFD_SETLKW``
  cannot be interrupted): the next local holder of that offset adopts it
  instead of starting another thread, so there is at most one helper thread
  per offset. If the kernel grants it while nobody has adopted it, the helper
  thread unlocks and closes it at once (the waiter's event loop may be gone).
- A forked child shares its parent's descriptions. After ``fork`` the child
  closes (never unlocks: that would drop the parent's locks) every inherited
  descriptor, opens a description of its own and starts with nothing held.
  (See :mod:`._files`.)

Interrupts: a hold's record is written *before* its byte is locked, marked
as in progress (``~fd``, negative), and completed once the kernel said yes;
it is taken for release in one step with no signal check in between (``fd =
held[hold]; del held[hold]``, no call). So a signal at any point leaves either
a record the cleanup (:meth:`FileScope.abandon`) acts on (an unlock of a byte
one does not hold is harmless), or nothing to act on. ``release(key)`` from
another thread releases only complete records: a caller still locking in the
kernel does not hold the key yet.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Hashable, Mapping
from functools import partial
from typing import Any, cast

from ..._core import Hold
from ..._ki import internal
from ..._runtime import Finished, Offload
from ._files import LockFile, fds_lock
from ._keys import (
    BUSY,
    FLOCK,
    GETLK,
    SETLK,
    SETLKW,
    UNLCK,
    KeyOffset,
    fcntl_call,
    offset_of,
    offsets,
)

__all__ = ["FileScope", "not_held_error"]


def not_held_error(local_key: object) -> RuntimeError:
    """The error of a release by a caller that does not hold ``local_key`` in the lock file."""
    return RuntimeError(
        f"release of key {local_key!r}, which this caller does not hold in the lock file "
        "(not acquired yet, released already, or acquired before a fork by the parent process)"
    )


# -- the scope --------------------------------------------------------------


@internal
class _KernelWait:
    """A blocking ``F_OFD_SETLKW`` on a private descriptor, in a helper thread."""

    __slots__ = ("fd", "holder", "job", "offset", "owned", "scope")

    def __init__(self, scope: FileScope, offset: KeyOffset, fd: int) -> None:
        self.scope = scope
        self.offset = offset
        self.fd = fd
        #: Set once a claimant (``holder``) was granted the lock through this wait.
        self.owned = False
        self.holder: Hold | None = None
        self.job: Offload[bytes] = Offload(
            partial(fcntl_call, fd, SETLKW, offset), self._drop, name="keyedlock-file-wait"
        )

    def accept(self, hold: Hold, finished: Finished[bytes]) -> None:
        """The kernel answered while ``hold`` waited: record a grant for it, at once."""
        if finished.error is None:
            self.owned = True
            self.holder = hold
            self.scope.held[hold] = self.fd

    def _drop(self, finished: Finished[bytes]) -> None:
        """Nobody wants the outcome: give the lock back (if granted) and close the descriptor."""
        self.scope.end_wait(self)


@internal
class FileScope(LockFile):
    """The :class:`~keyedlock._scopes.WideScope` of a lock file shared by the host.

    ``path``: the lock file (created if missing, mode 0600, symbolic links
    followed); None: :func:`~._paths.default_path`, with its safety checks.

    The attributes the fast path of :mod:`._filebackend` uses: ``fd`` (the shared
    descriptor; -1 until a fork child reopens it), ``held`` (hold -> the
    descriptor holding its byte, or ``~fd`` while it is being locked through
    ``fd``) and ``pending`` (offset -> a kernel wait left running by a waiter
    that gave up).
    """

    __slots__ = ("held", "pending")

    held: dict[Hold, int]
    pending: dict[Hashable, _KernelWait]

    def __init__(
        self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None
    ) -> None:
        super().__init__(path)
        self.held = {}
        self.pending = {}

    def forked(self) -> None:
        """In a fork child: close every inherited descriptor (never unlock), hold nothing."""
        super().forked()
        self.held = {}
        self.pending = {}

    # -- WideScope ---------------------------------------------------------

    #: The key's :class:`KeyOffset`; TypeError unless a str, bytes or int (not bool).
    map_key = staticmethod(offset_of)
    #: The offsets of keys used lately, by type (see :data:`._keys.offsets`).
    mapped_keys: Mapping[type, Mapping[Any, Hashable]] = offsets

    @staticmethod
    def user_key(local_key: Hashable) -> Hashable:
        """The key a :class:`KeyOffset` was made for."""
        return cast(KeyOffset, local_key).key

    def try_acquire(self, local_key: Hashable, hold: Hold) -> bool:
        """Lock the key's byte if it is free, without waiting (the uncontended path)."""
        if self.pending and local_key in self.pending:
            return False  # our own abandoned wait is still queued in the kernel
        fd = self.fd
        if fd < 0:
            fd = self.shared()
        held = self.held
        held[hold] = ~fd  # recorded first (in progress): an interrupt after the lock finds it
        try:
            fcntl_call(fd, SETLK, cast(KeyOffset, local_key))
        except OSError as exc:
            with contextlib.suppress(KeyError):
                del held[hold]
            if exc.errno not in BUSY:
                raise
            return False
        held[hold] = fd
        return True

    def acquire_sync(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """Lock the key's byte, blocking this thread; False if ``timeout`` elapses."""
        offset = cast(KeyOffset, local_key)
        if self.try_acquire(offset, hold):
            return True
        if timeout == 0:
            return False  # busy (or our own abandoned wait is still queued in the kernel)
        if timeout is None and offset not in self.pending:
            # Waits in this thread, through the shared descriptor: the wait is never
            # abandoned (KeyboardInterrupt ends the system call, holding nothing).
            fd = self.shared()
            self.held[hold] = ~fd  # recorded first, as in try_acquire
            fcntl_call(fd, SETLKW, offset)
            self.held[hold] = fd
            return True
        wait = self._start_wait(offset, hold)
        return self._settle(wait, wait.job.wait(timeout), hold)

    async def acquire_async(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """As :meth:`acquire_sync`; a wait runs in a helper thread and stays cancellable."""
        offset = cast(KeyOffset, local_key)
        if self.try_acquire(offset, hold):
            return True
        if timeout == 0:
            return False
        wait = self._start_wait(offset, hold)
        return self._settle(wait, await wait.job.wait_async(timeout), hold)

    def holds(self, hold: Hold) -> bool:
        """True if ``hold`` holds its key's byte."""
        held = self.held
        return hold in held and held[hold] >= 0

    def release(self, local_key: Hashable, hold: Hold) -> bool:
        """Unlock the key's byte through the descriptor ``hold`` holds it by; False if none
        (or if ``hold`` is still locking it: it does not hold the key yet)."""
        held = self.held
        try:
            fd = held[hold]
            if fd < 0:
                return False
            del held[hold]  # the claim: of two releases of one hold, one gets here
        except KeyError:
            return False
        self._unlock(cast(KeyOffset, local_key), fd)
        return True

    def abandon(self, local_key: Hashable, hold: Hold) -> bool:
        """After an interrupt: unlock whatever ``hold`` holds or was locking; False if nothing."""
        held = self.held
        try:
            fd = held[hold]
            del held[hold]
        except KeyError:
            return False
        self._unlock(cast(KeyOffset, local_key), fd if fd >= 0 else ~fd)
        return True

    def _unlock(self, offset: KeyOffset, fd: int) -> None:
        if fd == self.fd:
            fcntl_call(fd, SETLK, offset.unlock)
        else:
            self.close(fd)  # a private descriptor, from a wait in a helper thread

    def locked(self, local_key: Hashable) -> bool:
        """True if another open file description holds the key's byte (``F_OFD_GETLK``).

        A lock taken through the shared descriptor does not show (it is the
        asking description's own): the caller asks the local table first,
        and only a local holder locks through that descriptor.
        """
        reply = fcntl_call(self.shared(), GETLK, cast(KeyOffset, local_key))
        locked: bool = FLOCK.unpack(reply)[0] != UNLCK
        return locked

    not_held = staticmethod(not_held_error)

    # -- kernel waits in helper threads ------------------------------------

    def _start_wait(self, offset: KeyOffset, hold: Hold) -> _KernelWait:
        """Adopt the offset's pending kernel wait, or start one on a private descriptor."""
        with fds_lock():
            wait = self.pending.get(offset)
            if wait is not None and wait.job.claim(partial(wait.accept, hold)):
                return wait
            if wait is not None and not wait.owned:
                self.end_wait(wait)  # finished unclaimed, or failed: it is being dropped
            # None pending (or it just finished): a new one.
            wait = _KernelWait(self, offset, self._open_again(self.fd))
            wait.job.claim(partial(wait.accept, hold))
            self.pending[offset] = wait
        wait.job.start()
        return wait

    def _settle(self, wait: _KernelWait, finished: Finished[bytes] | None, hold: Hold) -> bool:
        """The claimant stopped waiting: True if it was granted the lock (its record is
        there), False if it timed out (the wait keeps running, to be adopted); the error."""
        if hold in self.held:
            with fds_lock():
                if self.pending.get(wait.offset) is wait:
                    del self.pending[wait.offset]
            return True
        if finished is not None and finished.error is not None:
            self.end_wait(wait)
            raise finished.error
        return False

    def end_wait(self, wait: _KernelWait) -> None:
        """Forget a kernel wait nobody holds through: closing its descriptor drops its lock."""
        with fds_lock():
            if self.pending.get(wait.offset) is wait:
                del self.pending[wait.offset]
            hold = wait.holder
            held = self.held
            if hold is not None and hold in held and held[hold] == wait.fd:
                del held[hold]  # granted to a claimant whose loop is gone
            self.close(wait.fd)
