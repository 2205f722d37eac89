"""asyncio followers of one single-flight call on one loop, queued as one waiter (a *herd*).

Followers of a call all wait for the same thing, its outcome, so they need no
place each in the key's queue. The first asyncio follower on a loop queues one
hold for all of them (the herd's); the ones after it only join the herd: no hold queued,
no guard taken, no frame of ours while they wait. They all await one future, the herd's
*shared* future: when the core wakes the herd's hold, one ``set_result`` on the loop
hands every follower the call's outcome, in arrival order (the order they parked in).

A follower's cancellation cancels the future its task awaits, the shared one,
and so wakes every follower. That is the one disturbance a shared future has;
the herd then *splits*: each follower still counted gets a future of its own
(:meth:`AsyncioHerd._split`, once per herd), and from there on the herd works
one future per follower. A woken follower asks :meth:`AsyncioHerd.again`: if
its own task was not cancelled (``task.cancelling()`` is as it was when it
joined), it awaits its own future and waits on; otherwise it leaves. So a
cancelled follower still leaves alone: the call and the others go on.

If the herd is handed the call (its leader gave up), it splits too, and the
earliest follower still waiting takes it over (``FlightTable.take_over``) and
the herd waits again, first in line behind it; if that follower is cancelled
before it runs, it gives the call up to the herd again, as any leader would.

Everything a herd does after it is queued runs on its loop's thread: the
core's wake from another thread only resolves the herd's *anchor* future there
(through :class:`~keyedlock._runtime._asyncio.AsyncioWaker`), whose callback
wakes the herd.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterator
from functools import partial
from typing import Any, Final

from .._core import GRANTED, IDLE, WAITING, FlightTable, Hold, complete
from .._ki import internal
from ._asyncio import AsyncioWaker, YieldThen, lost_wake, wake_future
from ._detect import get_ident, running_loop

__all__ = ["AsyncioHerd", "HerdTicket", "Herds"]

#: The entries of followers that left are dropped from a herd once there are this many of
#: them, and as many as the followers still counted.
_COMPACT_AT = 64


@internal
class HerdTicket(Hold):
    """A caller's hold that may follow a call in a herd: ``herd``, set once it joins one,
    ``fut``, the future it awaits there while it counts as a follower (the herd's shared
    one, or its own once the herd split), and ``before``, its task's ``cancelling()`` as it
    joined (a wake-up that raises CancelledError in it is its own cancellation only if the
    count went up since)."""

    __slots__ = ("before", "fut", "herd")

    herd: AsyncioHerd | None
    fut: asyncio.Future[Any] | None
    before: int

    def stays(self) -> bool:  # False once its task was cancelled: it leaves as it wakes
        return self._owner.cancelling() == self.before  # type: ignore[attr-defined, no-any-return]


@internal
class AsyncioHerd:
    """The asyncio followers of the call for ``key`` on one loop: one hold in the queue.

    The scope queues it (:meth:`enqueue`), adds followers (:meth:`add`: each
    awaits the future it gets, resolved with the call's outcome, or with None
    once its ticket leads the call; one that the shared future's cancellation
    woke asks :meth:`again`) and tells it of those that stop waiting otherwise
    (:meth:`leave`).

    Interrupts: every step is safe to stop at any point where a signal can land
    (after a call, at a function's entry), and the wake-up (:meth:`_wake`)
    resumes where an interrupt stopped it (a take-over is recorded in
    :attr:`claim` before it starts). On the loop's thread the core wakes again
    after an interrupt; from another thread the anchor runs :meth:`_wake`
    twice, and the second call finishes the first or finds nothing left to do.
    An interrupted follower leaves through :meth:`leave`, safe to call again.
    """

    #: The runtime of the callers it stands for (see ``describe_owner``).
    stands_for: Final = "asyncio"

    __slots__ = (
        "anchor",
        "claim",
        "closed",
        "compact_at",
        "count",
        "herds",
        "hold",
        "key",
        "loop",
        "members",
        "new_future",
        "shared",
        "split",
        "start",
        "table",
        "waker",
    )

    def __init__(
        self, herds: Herds, table: FlightTable, key: Hashable, task: asyncio.Task[Any]
    ) -> None:
        self.herds = herds
        self.table = table
        self.key = key
        self.loop = loop = task.get_loop()
        #: ``loop.create_future``, without its Python frame for asyncio's own loops.
        self.new_future: Callable[[], asyncio.Future[Any]] = (
            partial(asyncio.Future, loop=loop)
            if type(loop).create_future is asyncio.BaseEventLoop.create_future
            else loop.create_future
        )
        #: The herd's place in the queue. Its owner is the herd (no task: a follower that
        #: left may call again, and must not find itself holding or waiting).
        self.hold = Hold(self)
        #: The followers, in arrival order: (future, ticket); those before ``start`` are
        #: done with (they took the call over, or it was handed on past them).
        self.members: list[tuple[asyncio.Future[Any], HerdTicket]] = []
        #: The future every follower awaits until the herd splits (then None).
        self.shared: asyncio.Future[Any] | None = None
        #: True once the herd split: each follower has a future of its own.
        self.split = False
        self.start = 0
        self.compact_at = _COMPACT_AT
        #: Followers that have not left; the last to leave withdraws the herd.
        self.count = 0
        #: True once woken with the outcome, passed on or withdrawn: nobody joins any more.
        self.closed = False
        #: A take-over begun: the index of the follower taking the call over.
        self.claim: int | None = None
        #: The future the herd's waker resolves from another thread, and that waker.
        self.anchor: asyncio.Future[None] | None = None
        self.waker: _HerdWaker | None = None

    def _arm(self) -> _HerdWaker:
        """A new waker for the herd's hold, with a new anchor."""
        self.anchor = anchor = self.new_future()
        anchor.add_done_callback(self._wake)
        anchor.add_done_callback(self._wake)  # (the second finishes an interrupted first)
        self.waker = waker = _HerdWaker()
        waker.herd = self
        waker.loop = self.loop
        waker.fut = anchor
        waker.table = self.table
        waker.key = self.key
        waker.hold = self.hold
        waker.answer = None
        return waker

    def enqueue(self) -> bool:
        """Queue the herd's hold behind the call; False if the key was free (the call
        ended meanwhile): the hold took it, and has given it back (see :meth:`give_back`)."""
        if self.table.enqueue(self.key, self.hold, self._arm()):
            self.give_back()
            return False
        return True

    def add(self, ticket: HerdTicket) -> asyncio.Future[Any]:
        """A new follower, with its ``ticket`` (its owner: the task): the future it awaits."""
        shared = self.shared
        if shared is None and not self.split:
            self.shared = shared = self.new_future()
        if shared is not None and not shared.done():
            fut = shared
        else:
            if shared is not None:  # cancelled by a follower's cancellation: split first
                self._split()
            fut = self.new_future()
        owner: Any = ticket._owner  # (a cancel pending as it parks cancels the shared one: its own)
        ticket.before = owner.cancelling() - (1 if getattr(owner, "_must_cancel", False) else 0)
        # Linked (one run, no call in it) before it is listed: interrupted in between,
        # it leaves as any follower does, and is never listed without being counted.
        ticket.herd = self
        ticket.fut = fut
        self.count += 1
        members = self.members
        members.append((fut, ticket))
        # The entries of followers gone are dropped once they are as many as those counted
        # (and at least _COMPACT_AT): a herd that nobody leaves is never walked as it grows.
        if len(members) - self.count >= self.compact_at and self.claim is None:
            self._compact()
        return fut

    def _live(self) -> Iterator[tuple[int, asyncio.Future[Any], HerdTicket]]:
        """The followers still waiting, in arrival order, with their index in ``members``
        (not the ones done with, nor those that left or were cancelled; one on the shared
        future counts once another's cancellation woke it, until it leaves)."""
        members = self.members
        shared = self.shared
        for i in range(self.start, len(members)):
            fut, ticket = members[i]
            if ticket.fut is fut and (not fut.done() or (fut is shared and ticket.stays())):
                yield i, fut, ticket

    def _split(self) -> None:
        """From one shared future to one future per follower: each follower still counted
        on the shared future gets its own, then the shared one is cancelled, which wakes
        them all (each asks :meth:`again`). Run again after an interrupt, it finishes."""
        shared = self.shared
        if shared is None:
            return
        members = self.members
        new_future = self.new_future
        for i in range(self.start, len(members)):
            fut, ticket = members[i]
            if fut is shared and ticket.fut is shared and ticket.stays():
                own = new_future()
                members[i] = (own, ticket)  # (no call between the two: no signal either)
                ticket.fut = own
        shared.cancel()  # (nothing if a follower's cancellation cancelled it)
        self.split = True
        self.shared = None

    def again(self, ticket: HerdTicket, exc: BaseException) -> Awaitable[Any] | None:
        """What a follower woken by ``exc`` awaits now, if ``exc`` is a CancelledError and
        its own task was not cancelled: the shared future's cancellation (it awaits its own
        future), or the wake-up of a follower that takes the call over (its own future
        cancelled: it leads). Either way it yields once first. None if ``exc`` is its own
        (it leaves, or gives up the call it took over, as it concludes).

        The yield lets a cancellation on its way come first: anyio delivers a cancel scope's
        only to tasks whose awaited future is not done, as the shared future's cancellation
        made it for every follower, and cancels them at its next round (run by the yield)."""
        if not isinstance(exc, asyncio.CancelledError):
            return None
        before = getattr(ticket, "before", -1)  # (unset: interrupted before it was added)
        if before < 0 or ticket._owner.cancelling() != before:  # type: ignore[attr-defined]
            return None
        self._split()
        fut = ticket.fut
        if fut is None:
            return YieldThen(None)
        # (Cancelled, a leaving follower's (the shared one): it raises, and never spins.)
        return None if fut.cancelled() else YieldThen(fut)

    def _compact(self) -> None:
        """Drop the followers done with or gone."""
        self.members = kept = [(fut, ticket) for _, fut, ticket in self._live()]
        self.start = 0
        self.compact_at = max(_COMPACT_AT, len(kept))

    def leave(self, ticket: HerdTicket) -> None:
        """A follower stopped waiting without the outcome (cancelled, interrupted)."""
        if getattr(ticket, "fut", None) is not None:  # (unset: it left before it was added)
            # One run, no call in it; the wake-up skips it from here on (its future may
            # still be pending: an interrupt, not a cancellation, ended its wait).
            self.count -= 1
            ticket.fut = None
        if not self.count and not self.closed:  # the last one: the herd leaves the queue
            self.give_back()

    def give_back(self) -> None:
        """The herd's hold leaves the call, however far it got, and the herd closes:
        withdrawn if it waits; if it was handed the call, or took the key, passed on."""
        table = self.table
        if table.cancel(self.key, self.hold) == IDLE:  # it took the key: passed on,
            table.conclude(self.key, self.hold, None)  # (or it was forgotten since)
        self._close()

    def _wake(self, _anchor: object) -> None:
        """The core woke the herd's hold: every follower gets the outcome, or the earliest
        still waiting takes the call over. Interrupted, it finishes first (as the core's
        deliveries do): a loop closed after the interrupt never runs it again."""
        try:
            self._wake_once()
        except BaseException:
            complete(self._wake_once)  # (again if another interrupt lands in it)
            raise

    def _wake_once(self) -> None:
        if self.closed:
            return
        if self.claim is not None:
            self._take_over(self.claim)
            return
        hold = self.hold
        state = hold._state
        if state == WAITING:
            outcome = hold._queue.outcome
            if outcome is None:
                return  # waiting again (the first call of this wake-up took the call over)
            shared = self.shared
            if shared is not None and not shared.done():
                shared.set_result(outcome)  # one wake-up for every follower
            elif shared is None or shared.cancelled():  # (else: set above, then interrupted)
                self._split()  # (a follower's cancellation woke them all: each gets its own)
                for _, fut, _ in self._live():
                    fut.set_result(outcome)
            self._close()
        elif state == GRANTED:
            self._split()  # one follower takes the call over, the others wait on
            first = next(self._live(), None)
            if first is None:
                self.give_back()  # everyone left: the call passes on
            else:
                self.claim = first[0]
                self._take_over(first[0])
        else:  # given back, or withdrawn (an interrupted wake-up finished by the other)
            self._close()

    def _take_over(self, first: int) -> None:
        """The follower at ``first`` leads the call; the herd waits again for the others."""
        fut, ticket = self.members[first]
        # The others may have left (cancelled) already: then the herd's place is given back
        # when the last of them has run (see leave).
        again = self.count > 1
        if self.hold._state == GRANTED:  # (not yet)
            self.table.take_over(self.key, self.hold, ticket, self._arm() if again else None)
        if not fut.done():
            fut.cancel()  # its ticket leads: woken, it yields once (see again), then leads
        # One run, no call in it: the follower is no longer one, and the claim is done.
        if ticket.fut is not None:  # (else it left meanwhile: see leave)
            ticket.fut = None
            self.count -= 1
        self.start = first + 1
        self.claim = None
        if not again:
            self._close()

    def _close(self) -> None:
        """Nobody joins any more: out of the scope's herds. Its followers are let go of, and
        the links back to the herd cut (no cycle is left for the collector)."""
        herds = self.herds
        if herds.get(self.key) is self:  # (first: a wake-up interrupted here closes it again)
            # (Not ``del``: another loop's thread may replace or drop the entry meanwhile.)
            herds.pop(self.key, None)
        self.closed = True
        self.members = []
        self.hold._owner = None
        anchor = self.anchor
        if anchor is not None:
            anchor.remove_done_callback(self._wake)
        waker = self.waker
        if waker is not None:
            waker.closed()

    def waiting(self) -> list[Hold]:
        """The tickets of the followers waiting in the herd, in arrival order."""
        # (Read from any thread. A follower taking the call over leads from the moment its
        # ticket is granted, under the table's guard: see KeyTable.snapshot.)
        return [ticket for _, _, ticket in self._live() if ticket._state == IDLE]


@internal
class _HerdWaker(AsyncioWaker):
    """The waker of a herd's hold. On the loop's thread it wakes the herd at once (the
    core calls a waker again if an interrupt stops it: the herd's wake-up resumes);
    from another thread it resolves the anchor there, as an :class:`AsyncioWaker` does.
    A herd whose loop is closed, before the wake-up or with it still queued, is closed
    (the core passes a call it was handed on)."""

    __slots__ = ("herd",)

    herd: AsyncioHerd | None

    def __call__(self) -> bool:
        herd = self.herd
        if herd is None:  # closed: nothing is left to wake
            return self.answer is not False
        loop = self.loop
        try:  # on_loop_thread(loop), inlined as in AsyncioWaker
            here = loop._thread_id == get_ident()  # type: ignore[attr-defined]
        except AttributeError:  # a loop that does not record its thread
            here = running_loop() is loop
        if here:
            herd._wake(None)
            return True
        answer = self.answer
        if answer is None:
            self.answer = answer = wake_future(loop, self.fut, partial(_lost, herd))
        if not answer:  # (again if the core calls again: an interrupt stopped the first)
            herd._close()
        return answer

    def closed(self) -> None:
        """Its herd closed: let go of it, and of the hold (which refers to this waker)."""
        self.herd = None
        self.hold = None  # type: ignore[assignment]


def _lost(herd: AsyncioHerd) -> None:
    """A wake-up of ``herd`` queued on its loop was dropped unrun (the loop closed): the herd
    closes, and the core passes on a call it was handed (see ``lost_wake``)."""
    try:  # the loss first: an interrupt in a finalizer is dropped, with what follows it
        lost_wake(herd.table, herd.key, herd.hold)
    finally:
        herd._close()


#: The herd of each key's call (one loop's; followers on other loops wait on their own).
Herds = dict[Hashable, AsyncioHerd]
