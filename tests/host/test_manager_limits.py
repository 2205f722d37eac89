"""The manager at its limits: an outcome too large for its messages, a manager used again
after it stopped, and objects that cannot travel to another process."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from keyedlock import FileKeyedLock, KeyedLock, SingleFlight, klock
from keyedlock._scopes._manager import _transport
from keyedlock.multiprocessing import KeyedLockManager

from ..support import Threads, wait_until

_FORK = multiprocessing.get_context(
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
)
WAIT = 10.0


def test_an_outcome_too_large_to_send_reaches_the_followers_as_an_error(
    monkeypatch: pytest.MonkeyPatch, threads: Threads
) -> None:
    """The leader's value cannot be sent (larger than a message may be: made small here):
    the leader raises why, its follower gets the same error, and nothing is left in flight
    (the follower, and every later caller, waited for good before)."""
    monkeypatch.setattr(_transport, "MAX_MESSAGE", 1 << 16)
    with KeyedLockManager(ctx=_FORK) as manager:
        flight = manager.SingleFlight()
        followed = threading.Event()

        def big() -> bytes:
            assert followed.wait(WAIT)
            return b"x" * (1 << 17)

        leader = threads.start(lambda: flight.do_sync("big", big), "leader")
        wait_until(lambda: flight.in_flight("big"), "the leader runs the call")
        follower = threads.start(lambda: flight.do_sync("big", lambda: b"not run"), "follower")
        wait_until(lambda: flight.statistics("big").followers == 1, "the follower waits")
        followed.set()
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
        (lambda: KeyedLock(), "a KeyedLock cannot be pickled: its keys live in this process"),
        (lambda: klock("k"), "a LockContext cannot be pickled"),
        (lambda: SingleFlight(), "a SingleFlight cannot be pickled: its calls live in this"),
    ],
    ids=["KeyedLock", "LockContext", "SingleFlight"],
)
def test_what_cannot_travel_says_what_can(make: Callable[[], object], message: str) -> None:
    with pytest.raises(TypeError, match=message):
        pickle.dumps(make())


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
