"""The process's renewal thread: every lease and waiting place of the cluster scope, kept alive.

One daemon thread per process (started on first use, again in a fork child) keeps the time
for every scope and single-flight group of the cluster scope. Each *round* asks every
registered member (a :class:`Renewable`) for its renewal calls (a held key's ``renew``, a
waiting place's ``refresh``, a flight leader's lease, a follower's place), sent per server
in one batch: one round trip per node, whatever the number of keys. Rounds come every third
of the shortest lease among the members, so a lease is renewed twice before it could run
out; a member learns each reply through the callback that came with its call (a lease found
gone makes the hold ``lost``).

The same thread runs *chores*: calls that must reach the server but that nobody waits for
(the clean-up of an acquisition interrupted or cancelled mid-way, a release whose reply was
lost, a single-flight outcome published for a task whose event loop must not block). They go
with the next turn; at interpreter exit the thread is given a moment to send those still
queued. And *reports*: a member whose counts changed (the callers queued in this process
behind its attempts) is asked for its :meth:`~Reporting.reports` at once, their replies
ignored (the next round's renewals carry the counts again).

The thread itself sends nothing: each link's work of a turn goes to a thread of that link's
own, one at a time per link (see :mod:`._sending`), so a server that does not answer holds
up its own renewals and no other's. Work that comes for a link while its last is still
being sent waits for it, merged (the rounds it missed are one round, sent as it is done);
a thread that sent something waits a moment for more before it ends (under contention,
reports come many times a second).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from collections import deque
from time import monotonic
from typing import Any, Final, Protocol

from ..._ki import internal
from ._link import Link
from ._lua import Call
from ._sending import NOT_YET, Chore, Job, Renewal, send

__all__ = ["NOT_YET", "Renewable", "Renewal", "Renewer", "Reporting", "renewer", "send"]

#: How long, at most, interpreter exit waits for the chores still queued (seconds).
_EXIT_GRACE: Final = 2.0

#: How soon chores that could not reach their server go again (seconds): a server that was
#: late answers its probe within moments, and a clean-up should not wait for the next round
#: (a third of the lease away).
_RETRY: Final = 0.25

#: How long a link's sending thread waits for more work once it has sent something: under
#: contention reports come many times a second, each would start a thread (seconds).
_LINGER: Final = 1.0


class Renewable(Protocol):
    """What the renewal thread needs from a scope or single-flight group."""

    @property
    def link(self) -> Link: ...

    @property
    def period(self) -> float:
        """Seconds between two renewals of its leases (a third of the lease)."""
        ...

    def renewals(self) -> list[Renewal]:
        """Its calls for this round (an empty list: nothing to renew)."""
        ...

    def forked(self) -> None:
        """In a fork child: forget every hold (the parent's did not fork with it)."""
        ...


class Reporting(Renewable, Protocol):
    """A member that also reports counts between rounds (see :meth:`Renewer.report`)."""

    def reports(self) -> list[Call]:
        """The calls that send what changed since last time (an empty list: nothing)."""
        ...


@internal
class Renewer:
    """The renewal thread of this process (see the module docstring)."""

    __slots__ = (
        "_again",
        "_busy",
        "_chores",
        "_cond",
        "_held",
        "_later",
        "_members",
        "_more",
        "_pid",
        "_reporting",
        "_sending",
        "_thread",
    )

    def __init__(self) -> None:
        self._conditions()
        self._members: weakref.WeakSet[Any] = weakref.WeakSet()
        self._chores: deque[Chore] = deque()
        #: Chores that could not reach their server, sent again at ``_again`` (or with the
        #: next round, if it comes first).
        self._later: list[Chore] = []
        self._again = 0.0
        #: Members with counts to report (see :meth:`report`).
        self._reporting: weakref.WeakSet[Any] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        #: The links whose job is being sent, and the work that came for them meanwhile.
        self._sending: weakref.WeakSet[Link] = weakref.WeakSet()
        self._held: dict[Link, Job] = {}
        #: How many chores are being sent or wait for their link's thread.
        self._busy = 0
        self._pid = os.getpid()

    def _conditions(self) -> None:
        lock = threading.Lock()
        #: What the renewal thread (and settle) wait on.
        self._cond = threading.Condition(lock)
        #: What the links' sending threads wait on for more work.
        self._more = threading.Condition(lock)

    def add(self, member: Renewable) -> None:
        """Renew ``member``'s leases from now on (for as long as it lives)."""
        with self._cond:
            self._members.add(member)
            self._start()
            self._cond.notify_all()  # its period may be shorter than the current one

    def chore(self, link: Link, call: Call, retry_for: float = 0.0) -> None:
        """Send ``call`` soon, from the renewal thread (its reply and errors are ignored).
        If the server cannot be reached, does not answer or is late (see
        :meth:`Link.answering`), it goes again soon (``_RETRY``) for ``retry_for`` seconds (a
        call that may be sent twice: a withdraw, a release)."""
        with self._cond:
            self._chores.append((link, call, monotonic() + retry_for))
            self._start()
            self._cond.notify_all()  # (settle may wait on it too)

    def report(self, member: Reporting) -> None:
        """Ask ``member`` for its :meth:`~Reporting.reports` soon, from the renewal thread
        (many changes before it gets there make one batch)."""
        with self._cond:
            if member in self._reporting:
                return
            self._reporting.add(member)
            self._start()
            self._cond.notify_all()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="keyedlock-redis-renewal", daemon=True
            )
            self._thread.start()

    def settle(self, timeout: float) -> bool:
        """Wait until no chore is queued, being sent or waiting to go again (at most
        ``timeout`` s); True if so."""
        deadline = monotonic() + timeout
        with self._cond:
            while self._chores or self._busy or self._later:
                left = deadline - monotonic()
                if left <= 0 or self._thread is None:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    # -- the thread ----------------------------------------------------------

    def _run(self) -> None:
        due = monotonic()
        while True:
            due = self._turn(due)

    def _turn(self, due: float) -> float:
        """Wait for the round due at ``due``, a chore or a report, and hand what came to the
        links' sending threads; when the next round is due. (A method of its own: while the
        thread waits, no local of it keeps a member or a link alive, so a lock nobody uses
        any more goes, with its connections.)"""
        with self._cond:
            while True:
                period = min((m.period for m in self._members), default=1.0)
                due = min(due, monotonic() + period)
                left = due - monotonic()
                again = min(left, self._again - monotonic()) if self._later else left
                if self._chores or self._reporting or again <= 0:
                    break
                self._cond.wait(again)
            chores = list(self._chores)
            self._chores.clear()
            reporting = list(self._reporting)
            self._reporting.clear()
            if self._later and again <= 0:
                chores[:0] = self._later  # (first: the oldest, and those left untried)
                self._later.clear()
            renewing = list(self._members) if left <= 0 else []
            self._busy += len(chores)  # (until sent: see _send)
        if left <= 0:
            due = monotonic() + period
        jobs: dict[Link, Job] = {}
        for chore in chores:
            jobs.setdefault(chore[0], Job()).chores.append(chore)
        for member in dict.fromkeys(renewing + reporting):
            with contextlib.suppress(Exception):  # (a bug must not end the renewals)
                job = jobs.setdefault(member.link, Job())
                if member in reporting:
                    job.reporting.append(member)
                if member in renewing:
                    job.renewing.append(member)
                    job.period = period
        for link, job in jobs.items():
            self._hand(link, job)
        return due

    def _hand(self, link: Link, job: Job) -> None:
        """Have ``job`` sent by a thread of ``link``'s own, or, if its last job is still
        being sent, by that thread next. (Only this thread starts a link's job: while none
        runs, the link's members are asked for their renewals here, and a link with
        nothing to send costs no thread.)"""
        with self._cond:
            if link in self._sending:
                held = self._held.get(link)
                if held is None:
                    self._held[link] = job
                else:
                    held.merge(job)
                self._more.notify_all()  # (its thread may be waiting for more)
                return
        job.collect()
        if job.empty():
            return
        with self._cond:
            self._sending.add(link)
        try:
            # (Given in a box it empties: a thread's own arguments would keep them alive.)
            threading.Thread(
                target=self._send,
                args=([(link, job)], _LINGER),
                name="keyedlock-redis-renewal-send",
                daemon=True,
            ).start()
        except RuntimeError:  # no thread left, or interpreter exit: from this one, then
            self._send([(link, job)], 0.0)

    def _send(self, box: list[tuple[Link, Job]], linger: float) -> None:
        """A link's sending thread: its job, then whatever came for it meanwhile, or within
        ``linger`` seconds of the last job that sent something."""
        link: Link | None
        job: Job | None
        link, job = box.pop()
        until = 0.0
        gone = weakref.ref(link)
        while job is not None and link is not None:
            later: list[Chore] = []
            # (Nothing may end this thread with its link still marked as being sent: its
            # work would wait for it for ever. A SystemExit raised in a member's callback
            # ends only what it interrupted.)
            with contextlib.suppress(BaseException):
                later = job.run(link)
            if not job.empty():
                until = monotonic() + linger
            sent = len(job.chores)
            # While it waits for more, this thread keeps neither the link nor a member alive:
            # a lock dropped by its program goes, with its connections.
            job = link = None
            with self._cond:
                if sent or later:  # (what settle and the renewal thread wait for; a round
                    # or a report alone wakes nobody: under contention reports come often)
                    self._busy -= sent
                    if later and not self._later:  # (chores waiting already go at their time)
                        self._again = monotonic() + _RETRY
                    self._later += later
                    self._cond.notify_all()
                del later
                while (link := gone()) is not None:
                    job = self._held.pop(link, None)
                    if job is not None or (left := until - monotonic()) <= 0:
                        break
                    link = None
                    self._more.wait(left)
                if job is None and link is not None:
                    self._sending.discard(link)

    def at_exit(self) -> None:
        """At interpreter exit: give the chores still queued a moment to go out (those that
        could not reach their server go again every tenth of a second meanwhile)."""
        if self._pid != os.getpid():
            return
        deadline = monotonic() + _EXIT_GRACE
        while True:
            with self._cond:
                self._chores.extendleft(reversed(self._later))
                self._later.clear()
                self._cond.notify_all()
            left = deadline - monotonic()
            if self.settle(min(left, 0.1)) or left <= 0.1:
                return

    def running(self) -> None:
        """Make sure the thread runs: a member's hold or call is about to need it (a member
        is added once, when it is made: in a fork child made by a parent that had it, the
        child's first hold or call starts the child's thread)."""
        if self._thread is None:
            with self._cond:
                self._start()

    def forked(self) -> None:
        """In a fork child: no thread (it did not fork; the child's first hold or call
        starts one, see :meth:`running`), nothing queued or being sent, a fresh condition,
        and every member holds nothing."""
        for member in list(self._members):
            with contextlib.suppress(Exception):
                member.forked()
        self._conditions()
        self._chores = deque()
        self._later = []
        self._reporting = weakref.WeakSet()
        self._thread = None
        self._sending = weakref.WeakSet()
        self._held = {}
        self._busy = 0
        self._pid = os.getpid()


#: The renewal thread of this process.
renewer: Final = Renewer()


atexit.register(renewer.at_exit)

if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=renewer.forked)
