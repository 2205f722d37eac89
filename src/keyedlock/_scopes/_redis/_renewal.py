"""The process's renewal thread: every lease and waiting place of the cluster scope, kept alive.

One daemon thread per process (started on first use, again in a fork child) serves every
scope and single-flight group of the cluster scope. Each *round* asks every registered member
(a :class:`Renewable`) for its renewal calls (a held key's ``renew``, a waiting place's
``refresh``, a flight leader's lease, a follower's place) and sends them, per server, in one
batch: one round trip per node, whatever the number of keys. Rounds come every third of the
shortest lease among the members, so a lease is renewed twice before it could run out; a
member learns each reply through the callback that came with its call (a lease found gone
makes the hold ``lost``).

The same thread runs *chores*: calls that must reach the server but that nobody waits for
(the clean-up of an acquisition interrupted or cancelled mid-way, a release whose reply was
lost, a single-flight outcome published for a task whose event loop must not block). They go
before the next round; at interpreter exit the thread is given a moment to send those still
queued. And *reports*: a member whose counts changed (the callers queued in this process
behind its attempts) is asked for its :meth:`~Reporting.reports` at once, sent in one batch
per server, their replies ignored (the next round's renewals carry the counts again).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from time import monotonic
from typing import Any, Final, Protocol

from ..._ki import internal
from ._failures import NoAnswer, RedisUnavailable
from ._link import SKIPPED, Link
from ._loops import MARGIN
from ._lua import Call
from ._probe import late_servers

__all__ = ["Renewable", "Renewal", "Renewer", "Reporting", "renewer"]

#: A renewal call, and what to do with its reply (the reply, or the exception it raised).
Renewal = tuple[Call, Callable[[Any], None]]

#: A chore: the link to send it on, the call, and until when to send it again if it cannot
#: reach the server (monotonic time).
Chore = tuple[Link, Call, float]

#: What a renewal for a server still late after its round's wait is answered.
NOT_YET: Final = Exception("within the renewal round's wait")

#: How long, at most, interpreter exit waits for the chores still queued (seconds).
_EXIT_GRACE: Final = 2.0


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


def _report(members: list[Any]) -> None:
    """Send the members' reports, one batch per server, each waited for MARGIN at most.
    Those for a late server are dropped (the next round's renewals carry the counts)."""
    by_link: dict[Link, list[Call]] = {}
    for member in members:
        with contextlib.suppress(Exception):
            link = member.link
            calls = [call for call in member.reports() if link.answering(call)]
            if calls:
                by_link.setdefault(link, []).extend(calls)
    for link, calls in by_link.items():
        with contextlib.suppress(Exception):
            link.run_many(calls, MARGIN)


def _send(chores: list[Chore]) -> list[Chore]:
    """Send each chore once; those to go again. Each waits MARGIN at most for its reply;
    once a server is away its other chores wait for the next round, untried (whatever
    their time), and a late server's are not sent until it answers again (see
    :meth:`Link.answering`), waiting for as long as their time to go again runs: a stopped
    server costs the renewals of the others about MARGIN once, not MARGIN per chore or per
    round."""
    later: list[Chore] = []
    away: set[Link] = set()
    for chore in chores:
        link, call, until = chore
        if link in away:
            later.append(chore)
            continue
        if not link.answering(call):
            if monotonic() < until:
                later.append(chore)
            continue
        try:
            link.run(call, MARGIN)
        except RedisUnavailable:
            away.add(link)
            if monotonic() < until:
                later.append(chore)
        except Exception:  # (an error reply: sending it again would not help)
            continue
    return later


def _batch(link: Link, renewals: list[Renewal], wait: float) -> list[Any]:
    """The replies to ``renewals``, SKIPPED for a late server's (see :meth:`Link.run_many`)."""
    try:
        return link.run_many([call for call, _ in renewals], wait, skip_late=True)
    except Exception as exc:
        return [exc] * len(renewals)


def _answer(renewal: Renewal, reply: Any) -> None:
    with contextlib.suppress(Exception):
        renewal[1](reply)


@internal
class Renewer:
    """The renewal thread of this process (see the module docstring)."""

    __slots__ = (
        "_busy",
        "_chores",
        "_cond",
        "_later",
        "_members",
        "_pid",
        "_reporting",
        "_thread",
    )

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._members: weakref.WeakSet[Any] = weakref.WeakSet()
        self._chores: deque[Chore] = deque()
        #: Chores that could not reach their server, sent again with the next round.
        self._later: list[Chore] = []
        #: Members with counts to report (see :meth:`report`).
        self._reporting: weakref.WeakSet[Any] = weakref.WeakSet()
        self._thread: threading.Thread | None = None
        self._busy = False
        self._pid = os.getpid()

    def add(self, member: Renewable) -> None:
        """Renew ``member``'s leases from now on (for as long as it lives)."""
        with self._cond:
            self._members.add(member)
            self._start()
            self._cond.notify()  # its period may be shorter than the current one

    def chore(self, link: Link, call: Call, retry_for: float = 0.0) -> None:
        """Send ``call`` soon, from the renewal thread (its reply and errors are ignored).
        If the server cannot be reached, does not answer or is late (see
        :meth:`Link.answering`), it goes again with each round for ``retry_for`` seconds (a
        call that may be sent twice: a withdraw, a release)."""
        with self._cond:
            self._chores.append((link, call, monotonic() + retry_for))
            self._start()
            self._cond.notify()

    def report(self, member: Reporting) -> None:
        """Ask ``member`` for its :meth:`~Reporting.reports` soon, from the renewal thread
        (many changes before it gets there make one batch)."""
        with self._cond:
            if member in self._reporting:
                return
            self._reporting.add(member)
            self._start()
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="keyedlock-redis-renewal", daemon=True
            )
            self._thread.start()

    def settle(self, timeout: float) -> bool:
        """Wait until no chore is queued, running or waiting to go again (at most
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
        """Wait for the round due at ``due`` or a chore, and run what came; when the next
        round is due. (A method of its own: while the thread waits, no local of it keeps a
        member or a link alive, so a lock nobody uses any more goes, with its connections.)
        """
        with self._cond:
            while True:
                period = min((m.period for m in self._members), default=1.0)
                due = min(due, monotonic() + period)
                left = due - monotonic()
                if self._chores or self._reporting or left <= 0:
                    break
                self._cond.wait(left)
            chores = list(self._chores)
            self._chores.clear()
            reporting = list(self._reporting)
            self._reporting.clear()
            if self._later and left <= 0:
                chores += self._later
                self._later.clear()
            self._busy = bool(chores)  # (a renewal round alone is no chore to settle)
        try:
            if monotonic() >= due:  # (first: the leases' time runs; reports and chores wait)
                due = monotonic() + period
                self._round(list(self._members), period)
            if reporting:
                _report(reporting)
            later = _send(chores)
            if later:
                with self._cond:
                    self._later += later
        except Exception:  # pragma: no cover - a bug must not end the renewals
            pass
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        return due

    def _round(self, members: list[Any], period: float) -> None:
        """One renewal round: every member's calls, in one batch per server, each waited
        for a renewal period at most (MARGIN at least), so that a far or busy server still
        has time. The calls to late servers go last: their probes are given one such wait,
        all together, and each batch goes as soon as its server answered (with a whole
        wait for its replies): however many links a stopped server serves, it holds the
        renewals of the others up once, not once per link."""
        wait = max(MARGIN, period)
        by_link: dict[Link, list[Renewal]] = {}
        for member in members:
            with contextlib.suppress(Exception):
                renewals = member.renewals()
                if renewals:
                    by_link.setdefault(member.link, []).extend(renewals)
        # Each batch as soon as its server answers: at once, but for a late server's, which
        # wait for its probe (one wait at most after the first pass, all of them together).
        pending = by_link
        deadline: float | None = None
        while pending:
            news = late_servers.news
            waiting: dict[Link, list[Renewal]] = {}
            for link, renewals in pending.items():
                if not any(link.answering(call) for call, _ in renewals):
                    waiting[link] = renewals  # (its probes run meanwhile: started here)
                    continue
                for renewal, reply in zip(renewals, _batch(link, renewals, wait), strict=True):
                    if reply is SKIPPED:
                        waiting.setdefault(link, []).append(renewal)
                    else:
                        _answer(renewal, reply)
            pending = waiting
            if deadline is None:
                deadline = monotonic() + wait
            if not pending or monotonic() >= deadline:
                break
            late_servers.wait_news(news, deadline)
        for link, renewals in pending.items():
            still = link.unavailable(NOT_YET, None, NoAnswer)
            for renewal in renewals:
                _answer(renewal, still)

    def at_exit(self) -> None:
        """At interpreter exit: give the chores still queued a moment to go out."""
        if self._pid == os.getpid():
            self.settle(_EXIT_GRACE)

    def running(self) -> None:
        """Make sure the thread runs: a member's hold or call is about to need it (a member
        is added once, when it is made: in a fork child made by a parent that had it, the
        child's first hold or call starts the child's thread)."""
        if self._thread is None:
            with self._cond:
                self._start()

    def forked(self) -> None:
        """In a fork child: no thread (it did not fork; the child's first hold or call
        starts one, see :meth:`running`), nothing queued, a fresh condition, and every
        member holds nothing."""
        for member in list(self._members):
            with contextlib.suppress(Exception):
                member.forked()
        self._cond = threading.Condition(threading.Lock())
        self._chores = deque()
        self._later = []
        self._reporting = weakref.WeakSet()
        self._thread = None
        self._busy = False
        self._pid = os.getpid()


#: The renewal thread of this process.
renewer: Final = Renewer()


atexit.register(renewer.at_exit)

if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=renewer.forked)
