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
  :class:`~keyedlock._runtime.Offload`) on the *waits' descriptor*
  (``waits_fd``: the file opened once more, on the first such wait), so
  that a lock the kernel grants after its waiter gave up can be dropped
  without touching the shared descriptor's locks. ``held`` records, for each
  local holder (keyed by its hold), the descriptor that holds its byte;
  release unlocks through that one.
- Helper threads are capped per scope (``threads``, an
  :class:`~keyedlock._runtime.OffloadPool` of ``max_threads``): a blocked
  ``F_OFD_SETLKW`` needs a thread of its own, so beyond the cap a wait is
  queued (first in, first out) and starts in the first thread that finishes
  its wait. A queued wait whose waiter gives up is withdrawn at once: it
  never reaches the kernel. All waits share the one waits' descriptor, so
  a process needs two descriptors per scope however many keys it waits for
  or holds.
- A waiter that gives up leaves its kernel wait running (``F_OFD_SETLKW``
  cannot be interrupted): the next local holder of that offset adopts it
  instead of starting another thread, so there is at most one kernel wait
  (and one helper thread) per offset. A grant nobody adopted is unlocked at
  once by the helper thread (the waiter's event loop may be gone).
- One wait per offset is also what makes the waits' descriptor safe to
  share: its locks on one byte all come from that byte's wait. A new wait
  for an offset starts only once the previous one ended and gave back what
  it was granted (:meth:`FileScope.end_wait`, exactly once per wait), and a
  lock granted to a claimant is released by that claimant only.
- A forked child shares its parent's descriptions: it closes every inherited
  descriptor (never unlocks: that would drop the parent's locks), opens its
  own and starts with nothing held (see :mod:`._files`).

Interrupts: a hold's record is written *before* its byte is locked through
the shared descriptor, marked as in progress (``~fd``, negative), and
completed once the kernel said yes (a helper thread's grant is recorded
complete, at once); it is taken for release in one step with no signal check
in between (``fd = held[hold]; del held[hold]``, no call). So a signal at any
point leaves either a record the cleanup (:meth:`FileScope.abandon`) acts on
(an unlock through the shared descriptor of a byte one does not hold is
harmless: only the key's local holder locks it there), or nothing to act on.
The cleanup also lets go of the hold's claim on a kernel wait, so that an
interrupted claimant never keeps one. ``release(key)`` from another thread
releases only complete records: a caller still locking in the kernel does
not hold the key yet.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Hashable, Mapping
from typing import Any, cast

from ..._core import Hold, claim
from ..._errors import shown_key
from ..._ki import internal
from ..._runtime import Finished, OffloadPool
from ._files import LockFile, fds_lock
from ._kernelwait import WAIT_THREAD, KernelWait
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

__all__ = ["DEFAULT_MAX_THREADS", "FileScope", "not_held_error"]

#: How many helper threads (each with a descriptor) one scope waits in at most, by default.
DEFAULT_MAX_THREADS = 64


def not_held_error(local_key: object) -> RuntimeError:
    """The error of a release by a caller that does not hold ``local_key`` in the lock file."""
    return RuntimeError(
        f"release of key {shown_key(local_key)}, which this caller does not hold in the lock file "
        "(not acquired yet, released already, or acquired before a fork by the parent process)"
    )


# -- the scope --------------------------------------------------------------


@internal
class FileScope(LockFile):
    """The :class:`~keyedlock._scopes.WideScope` of a lock file shared by the host.

    ``path``: the lock file (created if missing, mode 0600, symbolic links
    followed); None: :func:`~._paths.default_path`, with its safety checks.

    The attributes the fast path of :mod:`._filebackend` uses: ``fd`` (the shared
    descriptor; -1 until a fork child reopens it), ``held`` (hold -> the
    descriptor holding its byte, or ``~fd`` while it is being locked through
    ``fd``) and ``pending`` (offset -> the kernel wait of the offset's local
    holder, running or queued for a thread, or left running by a waiter that
    gave up).

    ``max_threads``: how many helper threads the scope waits in at most; the
    waits beyond are queued for a thread.
    """

    __slots__ = ("held", "lost", "pending", "threads", "unlocking", "waits_fd")

    held: dict[Hold, int]
    unlocking: dict[Hold, int]  # (see abandon)
    lost: Callable[[Hashable, Hold], None] | None  # (see WideScope.lost)
    pending: dict[Hashable, KernelWait]
    threads: OffloadPool

    def __init__(
        self,
        path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        self.threads = OffloadPool(max_threads, WAIT_THREAD)
        self.waits_fd = -1
        self.lost = None
        super().__init__(path)
        self.held, self.unlocking, self.pending = {}, {}, {}

    @property
    def max_threads(self) -> int:
        """The cap on helper threads (see the class docstring)."""
        return self.threads.limit

    def forked(self) -> None:
        """In a fork child: close every inherited descriptor (never unlock), hold nothing."""
        super().forked()
        self.waits_fd = -1  # (closed with the other inherited descriptors)
        self.held, self.unlocking, self.pending = {}, {}, {}
        self.threads.forked()

    def remedy(self) -> str:
        """What to do when the descriptors run out (see :meth:`LockFile.remedy`)."""
        return (
            "raise the limit (each FileKeyedLock needs two descriptors once it waits for a key "
            "held by another process, however many keys it waits for)"
        )

    def waits_descriptor(self) -> int:
        """Under FDS_LOCK: the waits' descriptor, opened on first use."""
        fd = self.waits_fd
        if fd < 0:
            fd = self.waits_fd = self._open_again(self.fd)
        return fd

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
            fcntl_call(fd, SETLK, local_key)  # type: ignore[arg-type]  # a KeyOffset (no cast(): a call)
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
        offset: KeyOffset = local_key  # type: ignore[assignment]  # (no cast(): a call)
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
        fd = self.held.get(hold)  # (one step: a release in another thread may take it)
        return fd is not None and fd >= 0

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
        fcntl_call(fd, SETLK, local_key.unlock)  # type: ignore[attr-defined]  # _unlock, written out
        return True

    def abandon(self, local_key: Hashable, hold: Hold) -> bool:
        """After an interrupt: unlock what ``hold`` holds or was locking (run again, it ends the
        unlock it claimed, kept in ``unlocking``), let go of its claim on a kernel wait; False
        if it held nothing."""
        pending = self.pending
        wait = pending.get(local_key) if pending else None
        if wait is not None and wait.claimant is hold:
            wait.job.let_go()  # (a grant that arrives now goes to the helper thread, or is held)
            wait.claimant = None
        fd = claim(self.held, self.unlocking, hold)
        if fd is not None:
            self._unlock(cast(KeyOffset, local_key), fd if fd >= 0 else ~fd)
            del self.unlocking[hold]
        if wait is not None:  # ended (failed, or granted to this hold, unlocked above): gone
            with fds_lock():  # (never unlocks: another hold's grant is its own to unlock)
                done = wait.job.done  # (first: ``granted`` is final once the job is done)
                mine = wait.claimant is None and (wait.holder is hold or not wait.granted)
                if done and mine and not wait.ended and pending.get(local_key) is wait:
                    wait.ended = True
                    del pending[local_key]
        return fd is not None

    def _unlock(self, offset: KeyOffset, fd: int) -> None:
        fcntl_call(fd, SETLK, offset.unlock)  # the shared descriptor, or the waits' one

    def locked(self, local_key: Hashable) -> bool:
        """True if another open file description holds the key's byte (``F_OFD_GETLK``).
        (The shared descriptor's own locks do not show: the caller asks the local table
        first, and only a local holder locks through that descriptor.)"""
        reply = fcntl_call(self.shared(), GETLK, cast(KeyOffset, local_key))
        locked: bool = FLOCK.unpack(reply)[0] != UNLCK
        return locked

    not_held = staticmethod(not_held_error)

    # -- kernel waits in helper threads ------------------------------------

    def _start_wait(self, offset: KeyOffset, hold: Hold) -> KernelWait:
        """Adopt the offset's pending kernel wait, or start one (queued if every helper thread
        is busy)."""
        with fds_lock():
            wait = self.pending.get(offset)
            if wait is not None:
                if wait.claim(hold):
                    return wait  # adopted
                if not wait.job.done:
                    # Claimed by a caller that is no longer the key's local holder
                    # (interrupted before it let go): its claim is void.
                    wait.job.let_go()
                    if wait.claim(hold):
                        return wait
                if not wait.owned:
                    self.end_wait(wait)  # finished unclaimed, failed or withdrawn: ended here
            # None pending (or it just ended): a new one.
            wait = KernelWait(self, offset, self.waits_descriptor())
            wait.claim(hold)
            self.pending[offset] = wait
        try:
            wait.job.start()
        except RuntimeError:  # no thread could start: it never runs
            with fds_lock():
                if self.pending.get(offset) is wait:
                    del self.pending[offset]
            raise
        return wait

    def _settle(self, wait: KernelWait, finished: Finished[bytes] | None, hold: Hold) -> bool:
        """The claimant stopped waiting: True if granted (its record is there), False if it
        timed out (the wait keeps running, to be adopted, unless queued: withdrawn); or raises."""
        if hold in self.held:
            with fds_lock():
                if self.pending.get(wait.offset) is wait:
                    del self.pending[wait.offset]
            return True
        if finished is not None and finished.error is not None:
            self.end_wait(wait)
            raise finished.error
        return False

    def end_wait(self, wait: KernelWait) -> None:
        """Forget a finished (or withdrawn) kernel wait, and unlock a grant nobody holds
        through: once per wait, whoever calls first (the helper thread, the next waiter).
        The key of a claimant that can never take the outcome, a grant or a failure (its
        event loop is gone), is passed on in this process too (:attr:`lost`)."""
        with fds_lock():
            if not wait.job.done or wait.ended:
                return  # still in the kernel (its thread ends it), or ended already
            wait.ended = True
            if self.pending.get(wait.offset) is wait:
                del self.pending[wait.offset]
            # Failed or withdrawn: nothing to give back here (a claimant that could never
            # take the failure still holds the key in this process); granted: unlocked.
            gone = self._unheld(wait) if wait.granted else wait.gone
        lost = self.lost
        if gone is not None and lost is not None:
            lost(wait.offset, gone)  # (outside FDS_LOCK: it wakes this process's next caller)

    def _unheld(self, wait: KernelWait) -> Hold | None:
        """Under FDS_LOCK: unlock the lock granted to ``wait`` that nobody holds through;
        the claimant it was granted to if that one's event loop is gone."""
        hold = wait.holder
        if hold is not None:
            # Granted to a claimant whose loop is gone: its record goes with the lock.
            held = self.held
            if held.get(hold) != wait.fd:
                return None  # released by its holder already (that unlocked it)
            try:
                del held[hold]  # the claim, as in release()
            except KeyError:
                return None  # released in the same instant
        fcntl_call(wait.fd, SETLK, wait.offset.unlock)
        return hold
