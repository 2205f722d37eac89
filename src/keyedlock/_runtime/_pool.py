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


@internal
class OffloadPool:
    """At most ``limit`` daemon threads named ``name``, running queued calls in FIFO order."""

    __slots__ = ("_mutex", "_queue", "_running", "limit", "name")

    def __init__(self, limit: int, name: str) -> None:
        if limit < 1:
            raise ValueError(f"an offload pool needs at least one thread, got {limit!r}")
        self.limit = limit
        self.name = name
        self._mutex = threading.Lock()
        self._running = 0
        self._queue: OrderedDict[Queued, None] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<OffloadPool {self.name} threads={self._running}/{self.limit} "
            f"queued={len(self._queue)}>"
        )

    @property
    def threads(self) -> int:
        """How many of the pool's threads are running a call."""
        return self._running

    @property
    def queued(self) -> int:
        """How many calls wait for a thread."""
        return len(self._queue)

    def submit(self, call: Queued) -> None:
        """Run ``call.run()`` in a thread of the pool now, or queue it until one is free.

        If this raises (no thread could start, or an interrupt), the call may not run: its
        ``run()`` must find out for itself whether it is still wanted (see ``Offload``)."""
        begun = [False]  # set by the thread as it begins; True for good once given up
        counted = False
        try:
            with self._mutex:  # (an interrupt as it exits: counted, and no thread yet)
                if self._running >= self.limit:
                    self._queue[call] = None
                    return
                self._running += 1
                counted = True
            worker = threading.Thread(
                target=self._work, args=(call, begun), name=self.name, daemon=True
            )
            worker.start()
        except BaseException:
            if counted:
                complete(self._give_back, begun)
            raise

    def _give_back(self, begun: list[bool]) -> None:
        """``submit`` was interrupted after it counted a thread: give the place back, unless
        the thread began (it owns the count then), and if a call queued meanwhile, start a
        thread that takes it. Thread.start() waits for the new thread: an interrupt there
        leaves a thread that runs anyway; whichever of the two comes first owns the count
        (given back here, the thread takes a queued call instead, or ends)."""
        with self._mutex:
            if not begun[0]:
                begun[0] = True
                self._running -= 1
            stranded = bool(self._queue) and self._running < self.limit
        if stranded:
            # (Run again after an interrupt, this may start one more: it finds nothing to do.)
            threading.Thread(
                target=self._work, args=(None, [True]), name=self.name, daemon=True
            ).start()

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
        self._running = 0
        self._queue = OrderedDict()

    def _work(self, call: Queued | None, begun: list[bool]) -> None:
        """A thread of the pool: run ``call``, then each queued call in turn, until none is left
        (if its submitter gave its place up first, ``begun`` is True as it begins: it takes a
        queued call instead, or ends; see :meth:`_give_back`)."""
        with self._mutex:
            if begun[0]:
                # Its submitter gave its place up (see submit): it takes a call queued
                # meanwhile instead, if there is room for it (none may be left waiting).
                if not self._queue or self._running >= self.limit:
                    return
                self._running += 1
                call = self._queue.popitem(last=False)[0]
            begun[0] = True
        assert call is not None  # (None only for a thread that takes a queued call)
        try:
            while True:
                call.run()
                with self._mutex:
                    if not self._queue:
                        self._running -= 1
                        return
                    call = self._queue.popitem(last=False)[0]
        except BaseException:
            # run() does not raise; if it ever did, the queue must not be stranded.
            with self._mutex:
                self._running -= 1
                restart = bool(self._queue)
                if restart:
                    call = self._queue.popitem(last=False)[0]
            if restart:
                self.submit(call)
            raise
