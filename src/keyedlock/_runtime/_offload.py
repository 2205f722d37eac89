"""Await a blocking call that runs in a helper thread, cancellably, from asyncio or trio.

Some waits can only be done by blocking a thread (a kernel lock wait, a
blocking network call). :class:`Offload` runs such a call in a daemon helper
thread of its own and lets one *claimant* at a time wait for its outcome:
a thread (:meth:`Offload.wait`, with a timeout) or an asyncio or trio task
(:meth:`Offload.wait_async`, which never blocks its event loop).

A blocking call cannot be interrupted, so a claimant that stops waiting
(timeout, cancellation, KeyboardInterrupt) *detaches* and leaves the call
running. What the call produces after that is passed to the ``dispose``
callback, in the helper thread itself, at once: so a resource the call
acquires too late (a lock granted after its waiter gave up) is given back
even if the claimant's event loop is gone. Until the call finishes, another
claimant may :meth:`~Offload.claim` it and wait for the same outcome (a
later waiter adopts an abandoned wait instead of starting another thread).

Exactly one party ends up with the outcome: the claimant attached when the
call finishes, or ``dispose``. Decisions are made under the offload's own
mutex; callbacks run outside it.

Helper threads are daemon threads: an interpreter (or a multiprocessing
child) that exits does not wait for a blocking call that may never return.

An offload given a *pool* (an :class:`~._pool.OffloadPool`) runs in one of
the pool's threads, which are capped: beyond the cap, the call waits its turn
in the pool's queue. A claimant may wait for a queued call as for a running
one (a timeout covers the time in the queue). If it stops waiting before the
call got a thread, the call is *withdrawn*: it never runs, no later claim can
adopt it, and the ``withdrawn`` callback is called (in the claimant's thread).

Example, a cancellable blocking call whose late result is closed::

    def close_late(done: Finished[socket.socket]) -> None:
        if done.error is None:
            done.unwrap().close()

    job = Offload(lambda: listener.accept()[0], close_late)
    job.claim()
    job.start()
    done = await job.wait_async(timeout=5)  # None: timed out (close_late gets it later)
    conn = None if done is None else done.unwrap()
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from .._core import complete
from .._ki import internal

if TYPE_CHECKING:
    from trio.lowlevel import Abort, RaiseCancelT

from ._asyncio import WAKE_UP, raise_own, wake_future, woken
from ._detect import asyncio_task, running_loop, sniffio_local
from ._finished import Finished
from ._pool import OffloadPool

__all__ = ["Offload"]

T = TypeVar("T")

# threading.Lock.acquire rejects timeouts above this; longer ones wait forever.
_TIMEOUT_MAX: Final = threading.TIMEOUT_MAX


@internal
class Offload(Generic[T]):
    """``call()`` running in a daemon helper thread, waited for by one claimant at a time.

    Args:
        call: the blocking call (no arguments; use :func:`functools.partial`).
        dispose: receives the outcome when no claimant takes it: the call
            finished while nobody was attached, the attached claimant's event
            loop is gone, or the claimant gave up in the very instant the call
            finished. Called once, in whichever thread decided it (the helper
            thread, except in that last race); it must not raise.
        name: the helper thread's name (a pool names its own threads).
        pool: run in a thread of this pool, once one is free (None: a thread
            of its own, at once).
        withdrawn: called when a claimant stops waiting for a call that is
            still queued in ``pool``: the call will never run.
        gone: called instead of ``dispose`` (which it must do the work of) when the
            outcome is not taken because the claimant attached can never look (its
            event loop is gone): its owner may have more to give back.

    Use: :meth:`claim` (optional before :meth:`start`), :meth:`start`, then
    :meth:`wait` or :meth:`wait_async`. A wait returns the :class:`Finished`
    outcome, which the caller then owns, or None after detaching (timeout;
    cancellation raises instead). A detached offload can be claimed again
    while the call is still running.
    """

    __slots__ = (
        "_accept",
        "_claimed",
        "_dispose",
        "_done",
        "_gone",
        "_mutex",
        "_name",
        "_notify",
        "_outcome",
        "_pool",
        "_queued",
        "_withdrawn",
        "call",
    )

    call: Callable[[], T]

    def __init__(
        self,
        call: Callable[[], T],
        dispose: Callable[[Finished[T]], None],
        *,
        name: str = "keyedlock-offload",
        pool: OffloadPool | None = None,
        withdrawn: Callable[[], None] | None = None,
        gone: Callable[[Finished[T]], None] | None = None,
    ) -> None:
        self.call = call
        self._dispose = dispose
        self._gone = gone or dispose
        self._name = name
        self._pool = pool
        self._withdrawn = withdrawn
        #: With a pool: not started yet (queued there, or not yet submitted, or submitted as
        #: an interrupt landed): a claimant that stops waiting withdraws it.
        self._queued = pool is not None
        self._mutex = threading.Lock()
        self._claimed = False
        self._done = False
        self._notify: Callable[[], bool] | None = None
        self._outcome: Finished[T] | None = None
        self._accept: Callable[[Finished[T]], None] | None = None

    def __repr__(self) -> str:
        state = "done" if self._done else "queued" if self._queued else "running"
        return f"<Offload {self._name} {state} claimed={self._claimed}>"

    # -- the helper thread -------------------------------------------------

    def start(self) -> None:
        """Start the helper thread (with a pool: start the call in a free thread of the pool,
        or queue it there until one is free)."""
        pool = self._pool
        if pool is None:
            threading.Thread(target=self.run, name=self._name, daemon=True).start()
            return
        # (Not started until run() says so: if submit raises, even after a thread took the
        # call, the claimant's let_go withdraws it, and run() then finds it done.)
        pool.submit(self)

    def run(self) -> None:
        """The helper thread's work: the call, then its outcome to the claimant or ``dispose``.

        A call withdrawn from its pool's queue does not run.
        """
        if self._pool is not None:
            with self._mutex:
                if self._done:
                    return  # withdrawn while queued
                self._queued = False
        try:
            outcome: Finished[T] = Finished(self.call(), None)
        except BaseException as exc:
            outcome = Finished(None, exc)
        with self._mutex:
            self._done = True
            orphan = not self._claimed
            if not orphan:
                accept = self._accept
                if accept is not None:
                    accept(outcome)  # the claimant owns it from here on, whatever happens next
                self._outcome = outcome  # for the claimant to take
            notify = self._notify
            self._notify = None
        if orphan:
            self._dispose(outcome)
        elif notify is not None and not notify() and self._take() is not None:
            # The claimant's event loop is gone: it will never look again.
            self._gone(outcome)

    # -- claimants ---------------------------------------------------------

    def claim(self, accept: Callable[[Finished[T]], None] | None = None) -> bool:
        """Attach as the claimant; False if the call already finished (or is claimed).

        ``accept``, if given, is called with the outcome the moment it arrives
        while this claim holds, in the helper thread, under the offload's
        mutex (it must be quick and must not raise): the claimant owns the
        outcome from then on, even if it stops waiting in the same instant,
        so ``accept`` should record it where the claimant's own cleanup finds
        it. Without ``accept``, an outcome that arrives as the claimant gives
        up is disposed of.
        """
        with self._mutex:
            if self._done or self._claimed:
                return False
            self._claimed = True
            self._accept = accept
            return True

    @property
    def done(self) -> bool:
        """True once the call has returned or raised (or was withdrawn: it never runs)."""
        return self._done

    @property
    def queued(self) -> bool:
        """True while the call waits in its pool's queue for a thread."""
        return self._queued

    def _unclaim(self) -> bool:
        """Under the mutex: end the claim (the claimant stopped waiting). True if the call
        was still queued: then it is withdrawn, and done without an outcome."""
        self._notify = None
        self._claimed = False
        self._accept = None
        if self._queued:
            self._queued = False
            self._done = True  # never runs: nothing to claim any more
            return True
        return False

    def _withdraw(self) -> None:
        """Outside the mutex, after :meth:`_unclaim` said so: out of the queue, and report it."""
        pool = self._pool
        if pool is not None:
            pool.withdraw(self)  # (if a thread took it already, run() sees it is done)
        withdrawn = self._withdrawn
        if withdrawn is not None:
            withdrawn()

    def _take(self) -> Finished[T] | None:
        """Take the outcome if there is one (the claim ends with it); None otherwise."""
        with self._mutex:
            outcome = self._outcome
            if outcome is not None:
                self._outcome = None
                self._claimed = False
            return outcome

    def _arm(self, notify: Callable[[], bool]) -> Finished[T] | None:
        """Register the claimant's waker, unless the outcome is already there (then take it)."""
        with self._mutex:
            assert self._claimed, "wait() on an offload that is not claimed"
            outcome = self._outcome
            if outcome is not None:
                self._outcome = None
                self._claimed = False
                return outcome
            self._notify = notify
            return None

    def _detach(self) -> Finished[T] | None:
        """Stop waiting: detach and return None, or take the outcome if it just arrived
        (a call still queued is withdrawn)."""
        with self._mutex:
            outcome = self._outcome
            if outcome is not None:
                self._outcome = None
            withdrawn = self._unclaim()
        if withdrawn:
            self._withdraw()
        return outcome

    def _wake_lost(self) -> None:
        """The claimant's loop was closed with our wake-up still queued: it will never look.

        Called from a finalizer, possibly while this thread is inside other
        keyedlock code: the outcome is disposed of in a new helper thread.
        """
        threading.Thread(
            target=self._dispose_unclaimed, name=self._name + "-lost", daemon=True
        ).start()

    def _dispose_unclaimed(self) -> None:
        outcome = self._take()
        if outcome is not None:
            self._gone(outcome)

    def let_go(self) -> None:
        """End the claim without waiting any more (an exception, or a claim left behind by
        an interrupted claimant): dispose of an outcome that arrived (unless the claim
        accepted it: then the claimant owns it); a call still queued is withdrawn."""
        accepting = self._accept is not None
        outcome = self._detach()
        if outcome is not None and not accepting:
            self._dispose(outcome)

    def wait(self, timeout: float | None) -> Finished[T] | None:
        """Block this thread until the call finishes; None if ``timeout`` elapsed first.

        Needs a claim. On timeout the claimant detaches (the call keeps
        running; see :meth:`claim`). An exception while waiting
        (KeyboardInterrupt) detaches too, disposing of an outcome that
        arrived in the same instant.
        """
        parked = threading.Lock()
        parked.acquire()
        outcome = self._arm(partial(_release, parked))
        if outcome is not None:
            return outcome
        wait = -1.0 if timeout is None or timeout > _TIMEOUT_MAX else timeout
        try:
            parked.acquire(timeout=wait)
        except BaseException:
            complete(self.let_go)  # (again if another interrupt lands in it)
            raise
        return self._detach()

    async def wait_async(self, timeout: float | None) -> Finished[T] | None:
        """As :meth:`wait`, from an asyncio or trio task, without blocking its loop.

        asyncio: cancellation detaches (disposing of an outcome that arrived
        in the same instant) and CancelledError propagates. trio: as trio's
        own primitives do, an outcome that arrived before the cancellation
        could take effect is returned (trio raises Cancelled at the task's
        next checkpoint); otherwise the task detaches and Cancelled is raised.
        """
        loop = running_loop()
        task = None if loop is None else asyncio_task()
        if loop is not None and task is not None:
            return await self._wait_asyncio(loop, task, timeout)
        if sniffio_local.name == "trio":
            return await self._wait_trio(timeout)
        raise RuntimeError("Offload.wait_async needs a running asyncio task or trio task")

    async def _wait_asyncio(
        self, loop: Any, task: asyncio.Task[Any], timeout: float | None
    ) -> Finished[T] | None:
        fut = loop.create_future()
        outcome = self._arm(partial(wake_future, loop, fut, self._wake_lost))
        if outcome is not None:
            return outcome
        timer = None
        try:
            if timeout is not None:
                timer = loop.call_later(timeout, fut.cancel, WAKE_UP)
            before = task.cancelling()
            try:
                await fut
            except asyncio.CancelledError as exc:
                if not woken(exc, fut, task, before):  # the task itself was cancelled
                    raise_own(exc, task)
                    raise
        except BaseException:
            complete(self.let_go)  # (again if another interrupt lands in it)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return self._detach()

    async def _wait_trio(self, timeout: float | None) -> Finished[T] | None:
        import trio
        from trio.lowlevel import wait_task_rescheduled

        from ._trio import trio_waker

        outcome = self._arm(trio_waker())
        if outcome is not None:
            return outcome
        if timeout is None:
            await wait_task_rescheduled(self._abort_trio)
        else:
            with trio.move_on_after(timeout):
                await wait_task_rescheduled(self._abort_trio)
        return self._take()

    def _abort_trio(self, _: RaiseCancelT) -> Abort:
        """trio's abort function of the claimant: detach (withdrawing a call still queued),
        unless the outcome just arrived."""
        from trio.lowlevel import Abort

        with self._mutex:
            if self._done:
                return Abort.FAILED  # the outcome's wake is on its way
            withdrawn = self._unclaim()
        if withdrawn:
            self._withdraw()
        return Abort.SUCCEEDED


def _release(parked: threading.Lock) -> bool:
    parked.release()
    return True
