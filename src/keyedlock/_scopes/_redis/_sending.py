"""What the renewal thread sends to one server (one link), from a thread of that link's own.

The renewal thread (:mod:`._renewal`) keeps the time; each link's work of a turn (a round's
renewals of its members, their reports, its chores) is a :class:`Job`, sent by a thread of
its own, one job at a time per link. So a server that does not answer (stopped, cut off, a
handshake that hangs) holds up only its own renewals: those of the other servers go out on
time, whatever the lease, whatever the client's socket timeouts. The helpers here send one
link's calls: :func:`renew`, :func:`report`, :func:`send`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

from ._failures import NoAnswer, RedisUnavailable
from ._link import SKIPPED, Link
from ._loops import MARGIN
from ._lua import Call
from ._probe import late_servers

__all__ = ["NOT_YET", "Chore", "Job", "Renewal", "renew", "report", "send"]

#: A renewal call, and what to do with its reply (the reply, or the exception it raised).
Renewal = tuple[Call, Callable[[Any], None]]

#: A chore: the link to send it on, the call, and until when to send it again if it cannot
#: reach the server (monotonic time).
Chore = tuple[Link, Call, float]

#: What a renewal for a server still late after its round's wait is answered.
NOT_YET: Final = Exception("within the renewal round's wait")


class Job:
    """One link's work for its sending thread: a round's renewals, the members with counts
    to report, and its chores, sent in that order."""

    __slots__ = ("chores", "period", "renewals", "renewing", "reporting")

    def __init__(self) -> None:
        #: The members to renew: their calls are asked for by :meth:`collect`.
        self.renewing: list[Any] = []
        #: The round's calls, once collected.
        self.renewals: list[Renewal] = []
        #: The round's renewal period (see :func:`renew`).
        self.period = MARGIN
        self.reporting: list[Any] = []
        self.chores: list[Chore] = []

    def collect(self) -> None:
        """Ask the members to renew for their calls (from the thread that owns the link's
        members now: the renewal thread while no job of the link runs, else the link's)."""
        for member in self.renewing:
            with contextlib.suppress(Exception):
                self.renewals += member.renewals()
        self.renewing = []

    def empty(self) -> bool:
        return not (self.renewing or self.renewals or self.reporting or self.chores)

    def merge(self, other: Job) -> None:
        """Take ``other``'s work too (it came while this link's last job was running):
        a round the link missed is one round, with the latest members and period."""
        if other.renewing:
            self.renewing = other.renewing
            self.renewals = []
            self.period = other.period
        self.reporting += [m for m in other.reporting if m not in self.reporting]
        self.chores += other.chores

    def run(self, link: Link) -> list[Chore]:
        """Send it all; the chores to go again."""
        self.collect()
        if self.renewals:
            renew(link, self.renewals, self.period)
        if self.reporting:
            report(link, self.reporting)
        return send(self.chores) if self.chores else []


def _answer(renewal: Renewal, reply: Any) -> None:
    with contextlib.suppress(Exception):
        renewal[1](reply)


def renew(link: Link, renewals: list[Renewal], period: float) -> None:
    """One round's ``renewals`` on ``link`` (rounds ``period`` apart), in one batch per
    server. Each server's replies get a period (MARGIN at least), so that a far or busy
    server still has time. A late server's are sent as soon as it answers its probe,
    within a period (the link's next round is then due); if it has not by then, they are
    answered :data:`NOT_YET`."""
    pending = renewals
    wait = max(MARGIN, period)
    deadline = monotonic() + period
    while True:
        news = late_servers.news
        if any(link.answering(call) for call, _ in pending):  # (a late one: its probe starts)
            try:
                replies = link.run_many([call for call, _ in pending], wait, skip_late=True)
            except Exception as exc:
                replies = [exc] * len(pending)
            waiting: list[Renewal] = []
            for renewal, reply in zip(pending, replies, strict=True):
                if reply is SKIPPED:
                    waiting.append(renewal)
                else:
                    _answer(renewal, reply)
            pending = waiting
        if not pending or monotonic() >= deadline:
            break
        late_servers.wait_news(news, deadline)
    if pending:
        still = link.unavailable(NOT_YET, None, NoAnswer)
        for renewal in pending:
            _answer(renewal, still)


def report(link: Link, members: list[Any]) -> None:
    """Send the ``members``' reports in one batch, waited for MARGIN at most. Those for a
    late server are dropped (the next round's renewals carry the counts)."""
    calls: list[Call] = []
    for member in members:
        with contextlib.suppress(Exception):
            calls += [call for call in member.reports() if link.answering(call)]
    if calls:
        with contextlib.suppress(Exception):
            link.run_many(calls, MARGIN)


def send(chores: list[Chore]) -> list[Chore]:
    """Send each chore once; those to go again. Each waits MARGIN at most for its reply;
    once a server is away its other chores wait for the next try, untried (whatever their
    time: they go first then), and a late server's are not sent until it answers again
    (see :meth:`Link.answering`), waiting for as long as their time to go again runs: a
    stopped server costs its own chores about MARGIN once, not MARGIN per chore or per
    try."""
    later: list[Chore] = []
    away: set[Link] = set()
    for chore in chores:
        link, call, until = chore
        if link in away:
            later.append(chore)  # (untried: it goes again, first, whatever its time)
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
