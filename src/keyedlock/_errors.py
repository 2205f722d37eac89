"""The exceptions keyedlock raises.

Every exception specific to keyedlock derives from :class:`KeyedLockError`.
Misuse of the API raises the standard exception a Python programmer expects
(``TypeError`` for an unhashable key, ``ValueError`` for a negative timeout,
``RuntimeError`` for releasing a key nobody holds or for a blocking acquire
inside a running event loop).
"""

from __future__ import annotations

__all__ = ["Aborted", "KeyedLockError", "LockTimeout", "QueueFull"]


class KeyedLockError(Exception):
    """Base class of the exceptions specific to keyedlock."""


class LockTimeout(KeyedLockError, TimeoutError):
    """The key could not be acquired before ``timeout`` elapsed.

    Raised by the context manager, ``run``, ``run_sync`` and ``guard``; the
    plain ``acquire`` methods return ``False`` instead. It is a
    :class:`TimeoutError`, so ``except TimeoutError`` catches it too.
    """


class Aborted(KeyedLockError):
    """The wait was aborted because the holder's work failed.

    Raised in every caller that was queued on a key when a function run with
    ``on_error="stop"`` raised an exception. ``__cause__`` is that exception.
    Callers arriving afterwards start fresh.
    """


class QueueFull(KeyedLockError):
    """The key already has ``max_waiters`` callers queued; nothing was queued."""
