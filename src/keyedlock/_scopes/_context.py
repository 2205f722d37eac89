"""The context every keyed lock hands out: ``lock(key, timeout=...)``, in every scope.

:class:`LockContext` is a :class:`~keyedlock._core.KeyHold` (the core's hold
of a key, with its phases); its methods here are generic: they only call the
backend (:class:`~._contract.LockBackend`). A backend whose uncontended path
is worth writing out hands out a subclass, in its own module, that overrides
``__enter__``, ``__aenter__`` and the exit (see :mod:`._local`: its exit is
the core's :meth:`~keyedlock._core.KeyHold._exit`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Hashable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from .._core import BAD_EXIT, ENTERED, EXITED, NEW, REUSE, KeyHold, complete
from .._errors import LockTimeout, shown_key
from .._ki import internal
from .._log import logger
from .._runtime import READY, async_owner, blocking_owner

if TYPE_CHECKING:
    from ._contract import LockBackend

__all__ = ["BAD_EXIT", "ENTERED", "EXITED", "NEW", "REUSE", "LockContext", "timeout_error"]


def _log_abort(backend: LockBackend, key: Hashable, abort: BaseException) -> None:
    """Say that the callers waiting for ``key`` are about to be aborted (if any are)."""
    waiting = backend.waiters(key)
    if waiting:
        logger.warning(
            "the work under key %r failed with on_error='stop' (%s: %s); "
            "the %d caller(s) waiting for it are aborted",
            backend.user_key(key),
            type(abort).__name__,
            abort,
            waiting,
        )


def timeout_error(key: Hashable, timeout: float | None) -> LockTimeout:
    """The LockTimeout of a wait for ``key`` that ran out of ``timeout``."""
    if timeout == 0:
        return LockTimeout(f"key {shown_key(key)} is busy (timeout=0 tries once)")
    return LockTimeout(f"timed out after {timeout} s waiting for key {shown_key(key)}")


@internal
class LockContext(KeyHold):
    """The context manager returned by ``lock(key, timeout=...)``, for every scope.

    Use it once, with ``with`` in a thread or ``async with`` in an asyncio or
    trio task. Entering waits for the key (:class:`~keyedlock.LockTimeout`
    once ``timeout`` runs out); leaving releases it. It releases only its own
    hold: if that hold was released by someone else (``lock.release(key)``),
    exiting raises RuntimeError and leaves the key's current holder alone.
    """

    __slots__ = ("__weakref__", "_backend", "_timeout")  # (weakly watched: see _abandon)

    _backend: LockBackend
    _timeout: float | None
    #: What an exit returns when the body raised (falsy: see KeyHold).
    _raised = READY

    def __init__(self) -> None:
        raise TypeError("make a LockContext by calling a keyed lock: klock(key, timeout=...)")

    def __repr__(self) -> str:
        phase = ("new", "entered", "exited")[self._phase]
        return f"<LockContext key={shown_key(self._key)} {phase}>"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "a LockContext cannot be pickled or copied: it is one wait for, or hold of, a key "
            "in this process; pass the lock (of a scope that spans processes) and call it there"
        )

    # -- threads -----------------------------------------------------------

    def __enter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        self._owner = blocking_owner("`with klock(key)`")
        try:
            acquired = self._backend.acquire(self, self._timeout)
        except BaseException:
            complete(self._backend.undo, self)
            raise
        if not acquired:
            raise timeout_error(self._key, self._timeout)
        return self

    # -- asyncio and trio --------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._phase:
            raise RuntimeError(REUSE)
        self._phase = ENTERED
        runtime, self._owner = async_owner()
        await self._acquire_async(runtime, True)
        return self

    async def _acquire_async(self, runtime: int, raising: bool) -> bool | None:
        """Acquire from a task of ``runtime`` (its owner set).

        ``acquire_async``: True once acquired, False on timeout. ``async
        with`` (``raising``): None once acquired, LockTimeout on timeout.
        Whatever escapes (cancellation, an interrupt, Aborted) leaves nothing
        held.
        """
        try:
            acquired = await self._backend.acquire_async(self, runtime, self._timeout)
        except BaseException:
            complete(self._backend.undo, self)
            raise
        if not raising:
            return acquired
        if not acquired:
            raise timeout_error(self._key, self._timeout)
        return None

    # -- leaving -----------------------------------------------------------

    def _exit(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        """``__exit__`` and ``__aexit__`` alike: release is synchronous in every runtime.

        Returns READY, an awaitable that is already done (and falsy: a
        ``with`` never swallows the body's exception).
        """
        if self._phase != ENTERED:
            raise RuntimeError(BAD_EXIT)
        self._phase = EXITED
        try:
            self._backend.release(self, None)
        except BaseException:
            complete(self._backend.undo, self)
            raise
        return READY

    def _finish(self, abort: BaseException | None = None) -> None:
        """Exit for ``run``: release this hold, aborting the waiters if ``abort``."""
        if self._phase != ENTERED:
            raise RuntimeError(BAD_EXIT)
        self._phase = EXITED
        try:
            if abort is not None:
                _log_abort(self._backend, self._key, abort)
            self._backend.release(self, abort)
        except BaseException:
            complete(self._backend.undo, self)
            raise

    def _undo(self) -> None:
        """After an interrupt anywhere: release whatever this context holds or waits for."""
        self._backend.undo(self)

    if TYPE_CHECKING:
        # What type checkers see: a standard (async) context manager.

        def __exit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None: ...

        async def __aexit__(
            self,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None: ...

    else:
        # At run time no coroutine of its own: _exit returns an awaitable directly, and
        # __aexit__ is the very same function as __exit__. A subclass that overrides _exit
        # binds these names again.
        __exit__ = __aexit__ = _exit
