"""A kernel wait of the lock-file scope: one blocking ``F_OFD_SETLKW`` in a helper thread.

:class:`KernelWait` runs the wait for one key's byte in a thread of its scope's pool (an
:class:`~keyedlock._runtime.Offload`), for one claimant at a time; the scope
(:class:`~._scope.FileScope`) starts, adopts and ends the waits (see its module
docstring).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from ..._core import Hold
from ..._ki import internal
from ..._runtime import Finished, Offload
from ._keys import SETLKW, KeyOffset, fcntl_call

if TYPE_CHECKING:
    from ._scope import FileScope

__all__ = ["WAIT_THREAD", "KernelWait"]

#: The name of the helper threads that wait in the kernel.
WAIT_THREAD = "keyedlock-file-wait"


@internal
class KernelWait:
    """A blocking ``F_OFD_SETLKW`` on the waits' descriptor, in a thread of the scope's pool."""

    __slots__ = (
        "claimant",
        "ended",
        "fd",
        "gone",
        "granted",
        "holder",
        "job",
        "offset",
        "owned",
        "scope",
    )

    def __init__(self, scope: FileScope, offset: KeyOffset, fd: int) -> None:
        self.scope = scope
        self.offset = offset
        self.fd = fd
        #: The hold whose claim is on the wait (None once it let go).
        self.claimant: Hold | None = None
        #: Set (in the helper thread) once the kernel granted the lock.
        self.granted = False
        #: Set once a claimant (``holder``) was granted the lock through this wait.
        self.owned = False
        self.holder: Hold | None = None
        #: The claimant that could never take the outcome (its event loop is gone), if any.
        self.gone: Hold | None = None
        #: Set by :meth:`FileScope.end_wait`, which deals with a wait's grant once.
        self.ended = False
        self.job: Offload[bytes] = Offload(
            self._wait,
            self._drop,
            name=WAIT_THREAD,
            pool=scope.threads,
            withdrawn=self._withdrawn,
            gone=self._gone,
        )

    def _wait(self) -> bytes:
        """In the helper thread: the kernel wait."""
        reply = fcntl_call(self.fd, SETLKW, self.offset)
        self.granted = True  # (before the outcome is delivered: whoever ends the wait sees it)
        return reply

    def claim(self, hold: Hold) -> bool:
        """Under FDS_LOCK: make ``hold`` the wait's claimant; False if it cannot be claimed.
        (Named first: interrupted once the job is claimed, the hold's abandon lets it go.)"""
        previous, self.claimant = self.claimant, hold
        if self.job.claim(partial(self.accept, hold)):
            return True
        self.claimant = previous
        return False

    def accept(self, hold: Hold, finished: Finished[bytes]) -> None:
        """The kernel answered while ``hold`` waited: record a grant for it, at once."""
        if finished.error is None:
            self.owned = True
            self.holder = hold
            self.scope.held[hold] = self.fd

    def _drop(self, finished: Finished[bytes]) -> None:
        """Nobody wants the outcome: give the lock back, if granted."""
        self.scope.end_wait(self)

    def _gone(self, finished: Finished[bytes]) -> None:
        """The claimant can never take the outcome (its event loop is gone): as
        :meth:`_drop`, and its key is passed on in this process, granted or not."""
        self.gone = self.claimant
        self.scope.end_wait(self)

    def _withdrawn(self) -> None:
        """The waiter gave up before the wait got a thread: forget it (it holds nothing)."""
        self.scope.end_wait(self)
