"""The renewal thread on its own: what ``settle`` waits for, how chores go again, and that
it keeps no lock alive.

``settle`` is what tests (and interpreter exit) use to know that nothing is left for the
thread to send: a chore queued or running. A renewal round is no such thing; it comes every
third of a lease whether anything was left over or not.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from types import SimpleNamespace
from typing import Any

import pytest

from keyedlock import _ki
from keyedlock._scopes._redis._connect import _Handshake
from keyedlock._scopes._redis._failures import RedisUnavailable
from keyedlock._scopes._redis._link import Link
from keyedlock._scopes._redis._probe import late_servers
from keyedlock._scopes._redis._renewal import Renewer
from keyedlock._scopes._redis._sending import send as _send
from keyedlock.redis import RedisKeyedLock

from ..support import WAIT, wait_until
from .conftest import LEASE
from .servers import Server


class SlowMember:
    """A member whose renewal round blocks until the test lets it go."""

    period = 0.01
    link: Any = None

    def __init__(self) -> None:
        self.in_round = threading.Event()
        self.go = threading.Event()

    def renewals(self) -> list[Any]:
        self.in_round.set()
        self.go.wait(WAIT)
        return []

    def forked(self) -> None:
        pass


def test_a_renewal_round_in_progress_is_not_a_chore_left_over() -> None:
    renewer = Renewer()
    member = SlowMember()
    renewer.add(member)
    try:
        assert member.in_round.wait(WAIT), "no renewal round came"
        assert renewer.settle(0), "a renewal round counted as a chore left over"
    finally:
        member.go.set()


class AwayLink:
    """A link whose server cannot be reached: every call raises, and is counted."""

    def __init__(self) -> None:
        self.calls: list[object] = []

    def answering(self, call: object) -> bool:
        return True  # (not known to be late: refused, reset)

    def run(self, call: object, wait: float | None = None) -> object:
        self.calls.append(call)
        raise RedisUnavailable("the server is away")


def test_chores_behind_one_that_found_the_server_away_wait_for_the_next_round() -> None:
    """One chore finds its server away: the others for it are not sent this round (each
    would wait too), and none is dropped untried, even one not meant to go again."""
    away = AwayLink()
    now = time.monotonic()
    chores: list[Any] = [(away, "withdraw", now + 60), (away, "conclude", now), (away, "x", now)]
    later: list[Any] = _send(chores)
    assert away.calls == ["withdraw"]
    assert [call for _, call, _ in later] == ["withdraw", "conclude", "x"]
    again: list[Any] = _send(later)
    assert [call for _, call, _ in again] == ["withdraw", "conclude", "x"]
    assert away.calls == ["withdraw", "withdraw"]


def test_a_chore_not_meant_to_go_again_goes_once() -> None:
    away = AwayLink()
    assert _send([(away, "conclude", time.monotonic())]) == []  # type: ignore[list-item]
    assert away.calls == ["conclude"]


class LateLink(AwayLink):
    """A link whose server is late: it did not answer in time, nor the probe since."""

    def answering(self, call: object) -> bool:
        return False


def test_chores_for_a_late_server_wait_unsent_while_their_time_runs() -> None:
    """A late server's chores are not sent (each would wait for it): they wait for a round
    that finds it answering, for as long as they may go again, and are dropped after."""
    late = LateLink()
    now = time.monotonic()
    chores: list[Any] = [(late, "withdraw", now + 60), (late, "conclude", now)]
    later: list[Any] = _send(chores)
    assert late.calls == []
    assert [call for _, call, _ in later] == ["withdraw"]


class HealthyLink(AwayLink):
    """A link whose server answers every call."""

    def run(self, call: object, wait: float | None = None) -> object:
        self.calls.append(call)
        return 1


def test_a_probe_that_cannot_start_costs_no_chore(monkeypatch: pytest.MonkeyPatch) -> None:
    """A late server's probe thread cannot start (no thread left, or interpreter exit): its
    chore waits for a later round, and the chores for other servers still go."""
    link = Link("redis://127.0.0.1:1", "test")  # (never connected)
    pool = link._pool_of(b"k")
    healthy = HealthyLink()

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    late_servers.mark(pool)
    try:
        now = time.monotonic()
        call = SimpleNamespace(keys=[b"k"])
        chores: list[Any] = [(link, call, now + 60), (healthy, "release", now + 60)]
        later: list[Any] = _send(chores)
        assert healthy.calls == ["release"]
        assert [chore[1] for chore in later] == [call]
    finally:
        late_servers.answered(pool)


def test_a_lock_nobody_uses_any_more_goes_with_its_connections(redis_server: Server) -> None:
    """The renewal thread keeps no lock alive while it waits: a lock dropped by its program
    is freed (and its client's connections closed), not kept for the process's life."""
    lock = RedisKeyedLock(redis_server.url, lease=LEASE)
    with lock("k"):
        pass
    gone = weakref.ref(lock._backend.scope)  # (what the renewal thread renews: the link's owner)
    del lock

    def freed() -> bool:
        gc.collect()
        return gone() is None

    wait_until(freed, "the dropped lock is freed")


def test_the_links_calls_are_protected_from_ctrl_c_under_trio() -> None:
    """Every call of the link, sync and async, is one of keyedlock's internals (a Ctrl-C under
    trio waits for a checkpoint: a release that went through is never reported as
    interrupted)."""
    for name in ("run", "run_many", "command", "pop", "run_async", "finish_async", "pop_async"):
        assert getattr(Link, name) in _ki._marked, name


class IdleMember:
    """A member that holds nothing: it is asked for its renewals each round, and has none."""

    period = 0.01
    link: Any

    def __init__(self) -> None:
        self.link = object()  # (a link of its own: nothing is sent)
        self.asked = 0

    def renewals(self) -> list[Any]:
        self.asked += 1
        return []

    def forked(self) -> None:
        pass


def test_a_member_with_nothing_to_renew_costs_no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Locks and groups that hold and wait for nothing cost a round no sending thread,
    however many there are and however short the rounds."""
    started: list[str] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    renewer = Renewer()
    members = [IdleMember() for _ in range(20)]
    for member in members:
        renewer.add(member)
    wait_until(lambda: min(m.asked for m in members) >= 5, "five rounds")
    assert "keyedlock-redis-renewal-send" not in started


class BlockingPool:
    """A pool whose next connection is made when the test says so."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.released: list[object] = []

    def get_connection(self, *args: object) -> object:
        assert self.go.wait(WAIT)
        return "connection"

    def release(self, conn: object) -> None:
        self.released.append(conn)


class Interrupted:
    """An event whose wait is interrupted (Ctrl-C while a caller waits for a handshake)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def wait(self, timeout: float | None = None) -> bool:
        raise KeyboardInterrupt

    def set(self) -> None:
        self.event.set()


@pytest.mark.parametrize("made", [False, True], ids=["before-it-is-made", "after"])
def test_a_caller_interrupted_while_a_connection_is_made_leaves_it_to_the_pool(made: bool) -> None:
    pool = BlockingPool()
    handshake = _Handshake(pool)
    ended = threading.Event()
    handshake.done = Interrupted(ended)  # type: ignore[assignment]
    threading.Thread(target=handshake.make, daemon=True).start()
    if made:
        pool.go.set()
        assert ended.wait(WAIT)
    with pytest.raises(KeyboardInterrupt):
        handshake.take(WAIT)
    pool.go.set()
    wait_until(lambda: pool.released == ["connection"], "the connection goes to the pool")


class CountingLink:
    """A link whose server answers every batch at once, and counts them."""

    def __init__(self) -> None:
        self.batches = 0

    def answering(self, call: object) -> bool:
        return True

    def run_many(self, calls: list[object], wait: float | None = None, **_: object) -> list[int]:
        self.batches += 1
        return [1] * len(calls)


class ReportingMember:
    """A member with counts to report when the test says so, and no lease to renew."""

    period = 60.0
    link: Any

    def __init__(self, link: CountingLink) -> None:
        self.link = link
        self.pending = 0

    def renewals(self) -> list[Any]:
        return []

    def reports(self) -> list[Any]:
        calls, self.pending = [object()] * self.pending, 0
        return calls

    def forked(self) -> None:
        pass


def test_reports_in_quick_succession_are_sent_by_one_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under contention a member reports many times a second: its link's sending thread
    waits a moment for more work rather than a thread being started for each report."""
    started: list[str] = []
    start = threading.Thread.start

    def counted(self: threading.Thread) -> None:
        started.append(self.name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", counted)
    renewer = Renewer()
    link = CountingLink()
    member = ReportingMember(link)
    renewer.add(member)
    for n in range(1, 31):
        member.pending = 1
        renewer.report(member)
        wait_until(lambda n=n: link.batches == n, "the report is sent")  # type: ignore[misc]
    assert started.count("keyedlock-redis-renewal-send") == 1
