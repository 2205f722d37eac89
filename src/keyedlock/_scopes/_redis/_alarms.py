"""Alarms: calls sent at a given time, from a thread of their own.

A timed wait in Redis blocks on its wake list (``BLPOP``), and the server times a pop out
only at its next clock tick (every 100 ms at its default ``hz``): a waiter whose deadline
comes first sets an alarm, and at the deadline this thread rings its wake list (see
:func:`~._lockcalls.ring`), which ends the pop at once. The waiter cancels the alarm as its
pop ends (``with alarm:``); a ring that goes all the same pushes nothing once the waiter has
left its place.

A thread of its own, not the renewal thread: a ring may be the first call to a server that
just stopped, and opening a connection to it (a handshake that only the socket timeout
bounds) must not hold up the renewal of leases on the other servers. Rings due at once go
in one round trip per server, late servers' not at all (see :meth:`Link.run_many`).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import threading
from time import monotonic
from typing import Final

from ..._ki import internal
from ._link import Link
from ._loops import MARGIN
from ._lua import Call

__all__ = ["NO_ALARM", "Alarm", "Armed", "alarms"]

#: What a wait enters for as long as it pops: an :class:`Alarm`, or :data:`NO_ALARM`.
Armed = contextlib.AbstractContextManager[None]


@internal
class Alarm:
    """A call to send at ``at`` (monotonic time), unless cancelled first: leaving its
    ``with`` block cancels it. (A hint, set without a lock: a ring sent as it is cancelled
    is harmless, see the module docstring.)"""

    __slots__ = ("at", "call", "link", "live")

    def __init__(self, link: Link, call: Call, at: float) -> None:
        self.link = link
        self.call = call
        self.at = at
        self.live = True

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        self.live = False


#: What a wait that needs no alarm enters instead.
NO_ALARM: Final = contextlib.nullcontext()


@internal
class Alarms:
    """The alarms of this process, and the thread that sends them (started on first use)."""

    __slots__ = ("_cond", "_heap", "_order", "_thread")

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        #: (when, a number that breaks ties, the alarm), earliest first.
        self._heap: list[tuple[float, int, Alarm]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def set(self, link: Link, call: Call, at: float) -> Alarm:
        """Send ``call`` on ``link`` at ``at``, once (its reply and errors ignored), unless
        the alarm is cancelled first."""
        alarm = Alarm(link, call, at)
        with self._cond:
            heapq.heappush(self._heap, (at, next(self._order), alarm))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="keyedlock-redis-alarms", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        return alarm

    def _run(self) -> None:
        while True:
            _send(self._due())

    def _due(self) -> list[Alarm]:
        """Wait for the next alarm's time; the alarms due then (none cancelled)."""
        heap = self._heap
        with self._cond:
            while True:
                while heap and not heap[0][2].live:
                    heapq.heappop(heap)  # (cancelled)
                left = heap[0][0] - monotonic() if heap else None
                if left is not None and left <= 0:
                    break
                self._cond.wait(left)
            now = monotonic()
            due = []
            while heap and heap[0][0] <= now:
                alarm = heapq.heappop(heap)[2]
                if alarm.live:
                    due.append(alarm)
            return due

    def forked(self) -> None:
        """In a fork child: no thread, no alarm (the parent's waits did not fork with it)."""
        self._cond = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None


def _send(due: list[Alarm]) -> None:
    """Send the calls of ``due``, in one round trip per link."""
    by_link: dict[Link, list[Call]] = {}
    for alarm in due:
        by_link.setdefault(alarm.link, []).append(alarm.call)
    for link, calls in by_link.items():
        with contextlib.suppress(Exception):  # (a ring that fails: the pop times out itself)
            link.run_many(calls, MARGIN, skip_late=True)


#: The alarms of this process.
alarms: Final = Alarms()

if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=alarms.forked)
