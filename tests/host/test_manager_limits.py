"""The manager at its limits: an outcome too large for its messages, a manager used again
after it stopped, and objects that cannot travel to another process."""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from keyedlock import FileKeyedLock, KeyedLock, SingleFlight, klock
from keyedlock._flightcalls import FlightCalls
from keyedlock._scopes._manager import _transport
from keyedlock.multiprocessing import KeyedLockManager, SingleFlightProxy

from ..support import ThreadHandle, Threads, wait_until

pytestmark = [
    # Forking while helper threads of earlier tests linger is fine here (the children only
    # talk to the manager); newer Pythons warn about it.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

_FORK = multiprocessing.get_context(
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
)
WAIT = 10.0


def _leader_and_follower(
    threads: Threads,
    flight: SingleFlightProxy,
    lead: Callable[[], bytes],
    follow: Callable[[], bytes],
) -> tuple[ThreadHandle[bytes], ThreadHandle[bytes]]:
    """Two callers of the call for "big": a leader that runs ``lead`` once a follower, with
    ``follow`` of its own, waits for it; their threads."""
    followed = threading.Event()

    def leading() -> bytes:
        assert followed.wait(WAIT)
        return lead()

    leader = threads.start(lambda: flight.do_sync("big", leading), "leader")
    wait_until(lambda: flight.in_flight("big"), "the leader runs the call")
    follower = threads.start(lambda: flight.do_sync("big", follow), "follower")
    wait_until(lambda: flight.statistics("big").followers == 1, "the follower waits")
    followed.set()
    return leader, follower


def test_an_outcome_too_large_to_send_reaches_the_followers_as_an_error(
    monkeypatch: pytest.MonkeyPatch, threads: Threads
) -> None:
    """The leader's value cannot be sent (larger than a message may be: made small here):
    the leader raises why, its follower gets the same error, and nothing is left in flight
    (the follower, and every later caller, waited for good before)."""
    monkeypatch.setattr(_transport, "MAX_MESSAGE", 1 << 16)
    with KeyedLockManager(ctx=_FORK) as manager:
        flight = manager.SingleFlight()
        leader, follower = _leader_and_follower(
            threads, flight, lambda: b"x" * (1 << 17), lambda: b"not run"
        )
        with pytest.raises(ValueError, match="too large to send"):
            leader.result(WAIT)
        with pytest.raises(ValueError, match="too large to send"):
            follower.result(WAIT)
        assert not flight.in_flight("big")
        assert len(flight) == 0
        assert flight.do_sync("big", lambda: b"small") == b"small"


def test_a_stopped_manager_is_not_entered_again() -> None:
    manager = KeyedLockManager(ctx=_FORK)
    with manager:
        pass
    with pytest.raises(RuntimeError, match=r"has stopped .* make a new one"), manager:
        raise AssertionError("entered a stopped manager")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: KeyedLock(), "a KeyedLock cannot be pickled or copied: its keys live in this"),
        (lambda: klock("k"), "a LockContext cannot be pickled"),
        (lambda: SingleFlight(), "a SingleFlight cannot be pickled or copied: its calls live"),
    ],
    ids=["KeyedLock", "LockContext", "SingleFlight"],
)
def test_what_cannot_travel_says_what_can(make: Callable[[], object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        pickle.dumps(make())
    with pytest.raises(TypeError, match=message):
        copy.copy(make())


def test_a_context_of_a_wider_scope_cannot_be_pickled(tmp_path: Path) -> None:
    """The lock travels (a copy reaches the same keys); one use of it does not."""
    lock = FileKeyedLock(f"{tmp_path}/keys.lock")
    assert pickle.loads(pickle.dumps(lock)).path == lock.path
    with pytest.raises(TypeError, match="a LockContext cannot be pickled"):
        pickle.dumps(lock("k"))
    with (
        KeyedLockManager(ctx=_FORK) as manager,
        pytest.raises(TypeError, match="a LockContext cannot be pickled"),
    ):
        pickle.dumps(manager.KeyedLock()("k"))


def test_a_leaders_exception_too_large_to_send_is_its_own_and_runs_once(
    monkeypatch: pytest.MonkeyPatch, threads: Threads
) -> None:
    """The call's exception cannot be sent: the leader raises its own exception, the
    follower the reason it could not be sent, and the call ran once (the error shared in
    its place leaves out what it was raised in: the too large exception itself)."""
    monkeypatch.setattr(_transport, "MAX_MESSAGE", 1 << 16)
    runs: list[int] = []
    with KeyedLockManager(ctx=_FORK) as manager:
        flight = manager.SingleFlight()

        def fails() -> bytes:
            runs.append(1)
            raise RuntimeError("x" * (1 << 17))

        leader, follower = _leader_and_follower(threads, flight, fails, fails)
        with pytest.raises(RuntimeError, match=r"^x+$"):
            leader.result(WAIT)
        with pytest.raises(ValueError, match="too large to send"):
            follower.result(WAIT)
        assert runs == [1]
        assert not flight.in_flight("big")


def test_an_interrupt_as_the_leader_deals_with_an_unsent_outcome_leaves_nothing_in_flight(
    monkeypatch: pytest.MonkeyPatch, threads: Threads
) -> None:
    """Ctrl-C lands as the leader starts sharing the error of a conclusion that failed (the
    first instruction of the step): the call is given up, and the follower takes it over."""
    monkeypatch.setattr(_transport, "MAX_MESSAGE", 1 << 16)

    def interrupted(*args: object) -> bool:
        raise KeyboardInterrupt

    monkeypatch.setattr(FlightCalls, "_undelivered", interrupted)
    with KeyedLockManager(ctx=_FORK) as manager:
        flight = manager.SingleFlight()
        leader, follower = _leader_and_follower(
            threads, flight, lambda: b"x" * (1 << 17), lambda: b"its own"
        )
        with pytest.raises(KeyboardInterrupt):
            leader.result(WAIT)
        assert follower.result(WAIT) == b"its own"
        assert not flight.in_flight("big")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_sees_whether_the_manager_runs_and_enters_it() -> None:
    """A child forked with the manager object asks by the manager's pid (it is not the
    child's own child): running, `with manager:` enters it, and its locks work."""
    with KeyedLockManager(ctx=_FORK) as manager:
        lock = manager.KeyedLock()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through the pipe
            try:
                with manager:
                    ok = manager.running and lock.acquire("k", timeout=WAIT)
                    lock.release("k")
                os.write(write, b"ok" if ok else b"no")
            except BaseException as exc:
                os.write(write, repr(exc).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as reply:
            assert reply.read() == b"ok"
        os.waitpid(pid, 0)
        assert manager.running
    assert not manager.running
