"""The contract between the public classes and the scope backends.

A *scope* is where a lock's keys live: this process, this host (a lock file,
a manager process), a cluster (Redis). :class:`~keyedlock.KeyedLock` and
:class:`~keyedlock.SingleFlight` are written once, over a *backend*: an
object that implements :class:`LockBackend` or :class:`FlightBackend` for its
scope. A new scope is a backend, plus one entry in the conformance suite's
list of lock factories.

Two models exist, and the contract covers both:

- **Local, then wide** (process, lock file; Redis and PostgreSQL next). Every
  caller of this process is first serialized by a local
  :class:`~keyedlock._core.KeyTable`: FIFO, any runtime, direct hand-off.
  Only the local holder of a key then takes it in the wider scope, through a
  :class:`WideScope`, and gives it back there before the local hand-off.
  ``waiters``, ``max_waiters`` and ``on_error="stop"`` are this process's.
  The process scope is this model with no wide scope at all.
- **The remote side owns the queue** (the manager). Every caller's request
  queues in the remote process, one FIFO per key for every process;
  ``waiters``, ``len``, ``max_waiters`` and aborts are counted there. There
  is no local table (``LockBackend.table`` is None).

**Contexts.** ``lock(key, timeout=...)`` returns a :class:`LockContext`;
entering it returns the context itself. Its generic methods, here, only call
the backend; a backend whose uncontended acquire and release are worth
writing out (the process and file scopes: a dictionary step, or a system
call) hands out a subclass that overrides ``__enter__``, ``__aenter__`` and
``_exit`` with that fast path, in the backend's own module, and falls back on
the backend's methods for the rest.

**Checkpoints.** Under trio, unless the lock was made with
``fast_acquire=True``, ``acquire_async`` checkpoints as :class:`trio.Lock`
does: it raises Cancelled first if the task's scope is cancelled, and yields
once after taking a key without waiting. asyncio never yields for a free key,
as :class:`asyncio.Lock`.

**Interrupts.** A KeyboardInterrupt can land at any function entry, after
any call, at any backward jump. Backends keep their state consistent at each
of those points: every public entry point that changes state catches
``BaseException`` from its first instruction on and repairs (the contexts
call :meth:`LockBackend.undo`; ``release(key)`` retries with the holder it
recorded). The only window left is the one every lock written in Python
has: a signal at the very first instruction of ``__exit__``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any, Protocol, final

from .._core import Hold, KeyTable
from .._errors import follower_copy
from .._statistics import FlightStatistics, LockStatistics
from ._context import LockContext

__all__ = ["FlightBackend", "LockBackend", "Outcome", "WideScope"]

# -- locks ----------------------------------------------------------------------------------


class LockBackend(Protocol):
    """What :class:`~keyedlock.KeyedLock` needs from the scope its keys live in.

    A context's ``_key`` is the backend's key (see :attr:`map_key`), and its
    ``_owner`` (the thread's token, or the asyncio or trio task) is set before
    any method below is called for it.
    """

    @property
    def context(self) -> type[LockContext]:
        """The class of the contexts this backend's locks hand out: a subclass of
        :class:`LockContext` made by calling it with no arguments (the lock fills in its
        slots), with the backend's fast path written out if it has one."""
        ...

    @property
    def table(self) -> KeyTable | None:
        """The table serializing this process's callers (local model), or None (remote)."""
        ...

    @property
    def map_key(self) -> Callable[[object], Hashable] | None:
        """Validates a user's key and maps it to the backend's key (TypeError for keys the
        scope cannot take); None: every hashable key is taken as it is."""
        ...

    @property
    def mapped_keys(self) -> Mapping[type, Mapping[Any, Hashable]]:
        """Keys :attr:`map_key` mapped lately, by the user key's type (only keys it
        accepted, each under its exact type): the lock looks a key up here before calling
        :attr:`map_key`, so that a hit costs no call. Empty if the backend keeps none."""
        ...

    @property
    def max_waiters(self) -> int | None:
        """The per-key bound on queued callers (None: unbounded), as the backend applies it."""
        ...

    @property
    def fast_acquire(self) -> bool:
        """True: under trio, a free key is taken without the checkpoints (see above)."""
        ...

    def acquire(self, ctx: LockContext, timeout: float | None) -> bool:
        """Acquire ``ctx._key`` for ``ctx``, blocking this thread.

        True once acquired; False when ``timeout`` (seconds; None: forever, 0:
        try once) runs out, leaving nothing queued or held (or LockTimeout, for a
        reason worth saying: a remote scope that did not answer in time; the
        lock's ``acquire`` returns False for it too). Raises
        :class:`~keyedlock.Aborted` (its ``__cause__`` the holder's error) if
        the wait is aborted, :class:`~keyedlock.QueueFull`, RuntimeError if
        the owner holds the key already (a self-deadlock), ConnectionError if
        a remote scope cannot be reached. Whatever it raises, ``undo(ctx)``
        then leaves nothing held.
        """
        ...

    def acquire_async(
        self, ctx: LockContext, runtime: int, timeout: float | None
    ) -> Awaitable[bool]:
        """As :meth:`acquire`, for an asyncio or trio task (``runtime``), never blocking its
        loop. Cancellation leaves nothing queued or held."""
        ...

    def release(self, ctx: LockContext, abort: BaseException | None) -> None:
        """Release ``ctx``'s own hold: its key goes to the next waiter, or is free.

        With ``abort``, every caller queued on the key at this moment raises
        :class:`~keyedlock.Aborted` caused by it instead. RuntimeError if
        someone else released this hold already (the key, maybe someone
        else's by now, is left alone).
        """
        ...

    def undo(self, ctx: LockContext) -> None:
        """After ``ctx`` was interrupted anywhere in acquiring or releasing: release whatever
        it still holds or waits for, re-checking the state; never raises for "not held"."""
        ...

    def release_key(self, key: Hashable, done: list[Any]) -> None:
        """Release ``key``, whoever holds it; RuntimeError if nobody does.

        Records what it releases in ``done`` (empty at the first call): called
        again with the same list after an interrupt, it finishes that release
        and never releases another hold.
        """
        ...

    def locked(self, key: Hashable) -> bool:
        """True if the key is held anywhere in the scope."""
        ...

    def waiters(self, key: Hashable) -> int:
        """How many callers are queued on the key (this process's in the local model)."""
        ...

    def busy(self) -> int:
        """How many keys have a holder or a waiter (this process's in the local model)."""
        ...

    def statistics(self, key: Hashable, shown: Hashable) -> LockStatistics:
        """A snapshot of ``key`` (``shown`` is the user's key, for the snapshot)."""
        ...

    def keys(self) -> list[Hashable]:
        """The user's keys that have a holder or a waiter (this process's in the local
        model; every process's for a remote queue)."""
        ...

    def user_key(self, key: Hashable) -> Hashable:
        """The user's key that the backend's ``key`` was mapped from (for messages)."""
        ...

    def holds(self, ctx: LockContext) -> bool:
        """True while ``ctx`` holds its key, as far as this process can tell."""
        ...

    def still_holds(self, ctx: LockContext) -> bool:
        """As :meth:`holds`, asking the scope where this process cannot tell alone (a key
        of a remote queue released by another process); True if the scope does not answer.
        Only the ``warn_after`` watchdog calls it, before it logs a long hold: it may block
        for a round trip."""
        ...


class WideScope(Protocol):
    """What a scope wider than the process implements in the local-then-wide model.

    Every method is called by the local holder of ``local_key`` only (one
    caller per key per process at a time), with its hold. The scope records
    what it holds per *hold*, not per key, and takes that record in one
    atomic step to release: of two callers releasing the same hold (its
    context exiting while another thread calls ``release(key)``), exactly one
    releases it, and neither can release the next holder's.
    """

    #: Set by the backend (None: nobody to tell): called as ``lost(local_key, hold)`` when
    #: the scope gave back, on its own, the key it granted ``hold`` while ``hold`` waited,
    #: because its caller can never take it (its event loop is gone); the backend then
    #: passes the key on among this process's callers too. Called from any thread, once.
    lost: Callable[[Hashable, Hold], None] | None

    def map_key(self, key: object) -> Hashable:
        """Validate ``key`` for this scope (TypeError) and map it to the local key.

        Two keys mapping to one local key are serialized together (never less
        exclusion than asked for).
        """
        ...

    @property
    def mapped_keys(self) -> Mapping[type, Mapping[Any, Hashable]]:
        """As :attr:`LockBackend.mapped_keys`, for :meth:`map_key`."""
        ...

    def user_key(self, local_key: Hashable) -> Hashable:
        """The user's key that ``local_key`` was mapped from (the first, if several were)."""
        ...

    def try_acquire(self, local_key: Hashable, hold: Hold) -> bool:
        """Acquire the key in the wide scope if it is free there, without waiting."""
        ...

    def acquire_sync(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """Acquire the key in the wide scope, blocking this thread; False if ``timeout``
        (None: forever, 0: try once) runs out. Leaves nothing held if it returns False
        or raises."""
        ...

    async def acquire_async(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """As :meth:`acquire_sync`, from an asyncio or trio task, without blocking its loop;
        cancellation leaves nothing held."""
        ...

    def holds(self, hold: Hold) -> bool:
        """True if ``hold`` holds its key in the wide scope."""
        ...

    def abandon(self, local_key: Hashable, hold: Hold) -> bool:
        """After an interrupt anywhere in acquiring or releasing: give back whatever ``hold``
        holds, or may be getting, in the wide scope; False if nothing."""
        ...

    def release(self, local_key: Hashable, hold: Hold) -> bool:
        """Release the key ``hold`` holds in the wide scope; False if it holds nothing there
        (released already, or never acquired: acquired before a ``fork``, say)."""
        ...

    def locked(self, local_key: Hashable) -> bool:
        """True if anyone in the wide scope (another process) holds the key."""
        ...

    def not_held(self, local_key: Hashable) -> RuntimeError:
        """The error of a release by a local holder that holds nothing in the wide scope."""
        ...


# -- single-flight ----------------------------------------------------------------------------


@final
class Outcome:
    """What the followers of a finished call receive: its value, or its exception (a copy
    made as the call failed; each follower raises a copy of it)."""

    __slots__ = ("error", "value")

    def __init__(self, value: object, error: BaseException | None) -> None:
        self.value = value
        self.error = error

    def share(self) -> object:
        """What one follower gets: the value, or raise a copy of the exception of its own."""
        if self.error is not None:
            raise follower_copy(self.error)
        return self.value


class FlightBackend(Protocol):
    """What :class:`~keyedlock.SingleFlight` needs from the scope its calls are shared in.

    A caller holds a *ticket* (made by :meth:`ticket`) for one call of
    :meth:`~keyedlock.SingleFlight.do`. It joins the key's call: either it
    leads (it arrived first, or the leader gave up and it took over) and runs
    its function, or it waits for the leader's outcome. Whatever happens, the
    caller concludes in ``finally``: :meth:`conclude` re-checks whether the
    ticket leads, so a caller interrupted anywhere (even right after it became
    the leader) never leaves a call in flight.
    """

    @property
    def ttl(self) -> float:
        """Seconds a successful result is reused after it completes (0: never)."""
        ...

    @property
    def map_key(self) -> Callable[[object], Hashable] | None:
        """As :attr:`LockBackend.map_key`."""
        ...

    def cached(self, key: Hashable) -> object:
        """A value kept by ``ttl`` that is still fresh, else :data:`~keyedlock._core.MISS`."""
        ...

    def ticket(self, owner: object) -> Any:
        """A new ticket for one caller (``owner``: its thread token or task)."""
        ...

    def join(self, key: Hashable, ticket: Any) -> None:
        """Join the call for ``key``, blocking this thread until the ticket leads or its call
        has an outcome. RuntimeError if the owner runs the call itself (it would wait for
        itself)."""
        ...

    def join_async(self, key: Hashable, ticket: Any, runtime: int) -> Awaitable[object]:
        """As :meth:`join`, from a task of ``runtime``, never blocking its loop.

        What it awaits to may be the call's :class:`Outcome`, for a ticket that followed
        it to the end: the caller then shares it without asking :meth:`leads` and
        :meth:`shared` (the process scope does so for asyncio followers, for whom each
        call is a frame more per follower of a herd). Anything else: the caller asks.
        It returns ``READY`` (of the runtime layer) only for a ticket that leads at once:
        the caller then neither awaits it nor asks (the process scope's uncontended call).
        """
        ...

    def again(self, ticket: Any, exc: BaseException) -> Awaitable[object] | None:
        """What the caller awaits instead, if ``exc`` (raised by awaiting what
        :meth:`join_async` gave, or what this gave before) only ended a wait that it
        shared with other callers, and not its own: a scope may park followers on one
        future, which any one follower's cancellation cancels (the process scope's
        asyncio herds do). None: ``exc`` is the caller's own, and it is raised (every scope
        that shares no wait answers None)."""
        ...

    def leads(self, ticket: Any) -> bool:
        """True if the joined ticket runs the call (first, or by taking over)."""
        ...

    def shared(self, ticket: Any) -> object:
        """The outcome a follower's ticket received: its value, or raise (a copy of) its error."""
        ...

    def conclude(
        self, key: Hashable, ticket: Any, done: bool, payload: object, keep: bool = True
    ) -> bool:
        """End the ticket's part in the call; a no-op unless it leads.

        ``done``: the call returned ``payload``, shared with every follower
        queued now, and kept for ``ttl`` seconds unless ``keep`` is False (a
        value that was kept already). Otherwise ``payload`` is the exception
        it raised (shared as a copy), or None: the leader gave up without an
        outcome (cancelled, interrupted) and the earliest follower takes
        over. Returns True if the outcome reached another caller. May raise
        if the outcome cannot be shared (a remote scope that cannot pickle it,
        or send it): having shared an error in its place, or with the ticket
        still leading, in which case :class:`~keyedlock.SingleFlight` concludes
        again with that error, then without an outcome.

        A backend for which this is a round trip may also define ``conclude_async``
        (same arguments, a coroutine): :meth:`~keyedlock.SingleFlight.do` awaits it, so
        that a task's event loop never blocks on it. It must conclude even if cancelled
        or interrupted while it waits (then raise).
        """
        ...

    def forget(self, key: Hashable) -> None:
        """Next callers of ``key`` start a new call; drops a kept value."""
        ...

    def in_flight(self, key: Hashable) -> bool:
        """True if a call for ``key`` is running."""
        ...

    def waiters(self, key: Hashable) -> int:
        """How many callers wait for the call in flight for ``key``."""
        ...

    def busy(self) -> int:
        """How many keys have a call in flight."""
        ...

    def statistics(self, key: Hashable, shown: Hashable) -> FlightStatistics:
        """A snapshot of ``key`` (``shown`` is the user's key, for the snapshot)."""
        ...

    def keys(self) -> list[Hashable]:
        """The user's keys that have a call in flight."""
        ...
