"""A cap on the helper threads of a family of offloads: the calls beyond it wait their turn.

A blocking call (a kernel lock wait) needs a thread of its own for as long
as it blocks: nothing can wait for several of them in one thread. An
:class:`OffloadPool` bounds how many such threads run at once. A call
submitted while ``limit`` threads are busy is queued, first in, first out,
and starts in the first thread that finishes its call: that thread takes the
next queued call instead of ending, so nothing polls and no thread waits
idle. A thread that finds the queue empty ends.

A queued call has not started: it can be *withdrawn* (its waiter gave up),
and then never runs. :class:`~keyedlock._runtime.Offload` does that when its
claimant stops waiting before the call got a thread.

A fork child starts with an empty pool (:meth:`OffloadPool.forked`): the
parent's threads and queued calls did not fork with it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

from .._core import complete
from .._ki import internal

__all__ = ["OffloadPool", "Queued"]


class Queued(Protocol):
    """A call an :class:`OffloadPool` runs: ``run()`` must not raise."""

    def run(self) -> None: ...


class _Place:
    """One thread's place in a pool: counted while it is in the pool's ``_places`` set (adding
    and discarding it are single steps, safe to repeat after an interrupt)."""

    __slots__ = ("begun",)

    def __init__(self) -> None:
        #: Set by the thread as it begins: from then on the place is the thread's to give up.
        self.begun = False


@internal
class OffloadPool:
    """At most ``limit`` daemon threads named ``name``, running queued calls in FIFO order."""

    __slots__ = ("_mutex", "_places", "_queue", "limit", "name")

    def __init__(self, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError(f"an offload pool needs at least one thread, got {limit!r}")
        self.limit = limit
        self.name = name
        self._mutex = threading.Lock()
        self._places: set[_Place] = set()
        self._queue: OrderedDict[Queued, None] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<OffloadPool {self.name} threads={len(self._places)}/{self.limit} "
            f"queued={len(self._queue)}>"
        )

    @property
    def threads(self) -> int:
        """How many of the pool's threads are running a call."""
        return len(self._places)

    @property
    def queued(self) -> int:
        """How many calls wait for a thread."""
        return len(self._queue)

    def submit(self, call: Queued) -> None:
        """Run ``call.run()`` in a thread of the pool now, or queue it until one is free.

        If this raises (no thread could start, or an interrupt), the call may not run: its
        ``run()`` must find out for itself whether it is still wanted (see ``Offload``)."""
        place = _Place()
        try:
            with self._mutex:
                if len(self._places) >= self.limit:
                    self._queue[call] = None
                    return
                self._places.add(place)
            self._start(call, place)
        except BaseException:
            complete(self._give_back, place)  # (nothing to give back if the call was queued)
            raise

    def _start(self, call: Queued | None, place: _Place) -> None:
        threading.Thread(target=self._work, args=(call, place), name=self.name, daemon=True).start()

    def _give_back(self, place: _Place) -> None:
        """``submit`` was interrupted (or no thread could start): give its place back, unless
        its thread began (Thread.start() waits for the new thread: interrupted there, the
        thread runs anyway, and owns the place); then, if a call queued meanwhile and there
        is room, start a thread that takes it. Safe to run again."""
        with self._mutex:
            if not place.begun:
                self._places.discard(place)  # (its thread, if it begins, takes a queued call)
            stranded = bool(self._queue) and len(self._places) < self.limit
        if stranded:
            self._start(None, _Place())  # (run again, this may start one more: it ends at once)

    def withdraw(self, call: Queued) -> bool:
        """Take ``call`` out of the queue; False if it is not queued (it started already)."""
        with self._mutex:
            if call not in self._queue:
                return False
            del self._queue[call]
            return True

    def forked(self) -> None:
        """In a fork child: no thread and nothing queued (a new mutex: the parent's may be held)."""
        self._mutex = threading.Lock()
        self._places = set()
        self._queue = OrderedDict()

    def _work(self, call: Queued | None, place: _Place) -> None:
        """A thread of the pool: run ``call``, then each queued call in turn, until none is left.
        Without a place in the pool as it begins (given back by its submitter, or a thread
        started for the queue), it takes a place and a queued call if there is room, or ends."""
        with self._mutex:
            if place not in self._places:
                if not self._queue or len(self._places) >= self.limit:
                    return
                self._places.add(place)
                call = self._queue.popitem(last=False)[0]
            place.begun = True
        assert call is not None  # (None only for a thread started for the queue)
        try:
            while True:
                call.run()
                with self._mutex:
                    if not self._queue:
                        self._places.discard(place)
                        return
                    call = self._queue.popitem(last=False)[0]
        except BaseException:
            # run() does not raise; if it ever did, the queue must not be stranded.
            with self._mutex:
                self._places.discard(place)
                restart = bool(self._queue)
            if restart:
                self._start(None, _Place())
            raise
