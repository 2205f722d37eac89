"""The contract between a lock object and a scope backend that keeps state outside the process.

A keyed lock always serializes its own process's callers through the core
(:class:`~keyedlock._core._keytable.KeyTable`, FIFO, any runtime). A scope
that spans more than this process adds a second step: once a caller holds the
key locally, the scope acquires it for the wider scope (for example a kernel
file lock), and releases it there before the local release hands the key to
the next local waiter. The process scope is simply "no wider scope".

The scope records what it holds per *hold* (the local holder's
:class:`~keyedlock._core._keytable.Hold`), not per key: a release takes that
record in one atomic step, so of two callers releasing the same hold (its
context exiting while another thread calls ``release(key)``) exactly one
releases it in the wide scope, and neither can release the next holder's.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from .._core._keytable import Hold

__all__ = ["WideScope"]


class WideScope(Protocol):
    """What a scope wider than the process implements."""

    def local_key(self, key: object) -> Hashable:
        """Validate ``key`` for this scope and map it to the key the local core serializes on.

        Two keys mapping to one local key are serialized together (never less
        exclusion than asked for). Raises TypeError for keys the scope cannot take.
        """
        ...

    def try_acquire(self, local_key: Hashable, hold: Hold) -> bool:
        """Acquire ``local_key`` in the wide scope for ``hold`` if it is free there, at once.

        Called only by the local holder ``hold`` of ``local_key``: the uncontended path.
        """
        ...

    def acquire_sync(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """Acquire ``local_key`` in the wide scope for ``hold``, blocking this thread.

        Called only by the local holder ``hold`` of ``local_key``. Returns False if
        ``timeout`` (None: forever, 0: try once) elapses; leaves nothing held
        then, and nothing held if it raises.
        """
        ...

    async def acquire_async(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """As :meth:`acquire_sync`, from an asyncio or trio task, without blocking its loop.

        Cancellation leaves nothing held in the wide scope.
        """
        ...

    def holds(self, hold: Hold) -> bool:
        """True if ``hold`` holds its key in the wide scope."""
        ...

    def release(self, local_key: Hashable, hold: Hold) -> None:
        """Release ``local_key``, held by ``hold``, in the wide scope.

        RuntimeError if ``hold`` does not hold it there (never acquired there,
        already released, or acquired by the parent before a ``fork``).
        """
        ...

    def locked(self, local_key: Hashable) -> bool:
        """True if anyone in the wide scope holds ``local_key``."""
        ...
