"""The contract between a lock object and a scope backend that keeps state outside the process.

A keyed lock always serializes its own process's callers through the core
(:class:`~keyedlock._core._keytable.KeyTable`, FIFO, any runtime). A scope
that spans more than this process adds a second step: once a caller holds the
key locally, the scope acquires it for the wider scope (for example a kernel
file lock), and releases it there before the local release hands the key to
the next local waiter. The process scope is simply "no wider scope".
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

__all__ = ["WideScope"]


class WideScope(Protocol):
    """What a scope wider than the process implements."""

    def local_key(self, key: object) -> Hashable:
        """Validate ``key`` for this scope and map it to the key the local core serializes on.

        Two keys mapping to one local key are serialized together (never less
        exclusion than asked for). Raises TypeError for keys the scope cannot take.
        """
        ...

    def try_acquire(self, local_key: Hashable) -> bool:
        """Acquire ``local_key`` in the wide scope if it is free there, without waiting.

        Called only by the local holder of ``local_key``: the uncontended path.
        """
        ...

    def acquire_sync(self, local_key: Hashable, timeout: float | None) -> bool:
        """Acquire ``local_key`` in the wide scope, blocking this thread.

        Called only by the local holder of ``local_key``. Returns False if
        ``timeout`` (None: forever, 0: try once) elapses; leaves nothing held
        then, and nothing held if it raises.
        """
        ...

    async def acquire_async(self, local_key: Hashable, timeout: float | None) -> bool:
        """As :meth:`acquire_sync`, from an asyncio or trio task, without blocking its loop.

        Cancellation leaves nothing held in the wide scope.
        """
        ...

    def holds(self, local_key: Hashable) -> bool:
        """True if this process holds ``local_key`` in the wide scope."""
        ...

    def release(self, local_key: Hashable) -> None:
        """Release ``local_key`` in the wide scope (called by its local holder)."""
        ...

    def locked(self, local_key: Hashable) -> bool:
        """True if anyone in the wide scope holds ``local_key``."""
        ...
