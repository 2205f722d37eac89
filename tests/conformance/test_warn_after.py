"""warn_after=: a hold still held after that many seconds is logged once, on "keyedlock"."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from fractions import Fraction
from typing import Any
from unittest.mock import patch

import anyio
import anyio.to_thread
import pytest

from keyedlock import KeyedLock

from ..support import WAIT, Records, wait_waiters
from .scopes import Scope


def test_the_logger_is_silent_by_default() -> None:
    logger = logging.getLogger("keyedlock")
    assert any(isinstance(handler, logging.NullHandler) for handler in logger.handlers)


def test_a_long_hold_is_logged_once(
    scope: Scope, make_lock: Callable[..., KeyedLock], records: Records
) -> None:
    lock = make_lock(warn_after=0.01)
    assert lock.warn_after == 0.01
    with lock("order:7"):  # this line is the place the message names
        assert records.arrived.wait(WAIT), "no warning for a hold longer than warn_after"
        records.arrived.clear()
        [message] = records.messages()
    assert "'order:7'" in message
    assert "warn_after=0.01" in message
    assert "thread" in message
    assert "test_warn_after.py" in message
    assert "test_a_long_hold_is_logged_once" in message
    assert len(records.records) == 1  # once per hold


def test_a_hold_taken_with_acquire_is_watched_until_release(
    make_lock: Callable[..., KeyedLock], records: Records
) -> None:
    lock = make_lock(warn_after=0.01)
    assert lock.acquire("k")
    try:
        assert records.arrived.wait(WAIT)
    finally:
        lock.release("k")
    assert "'k'" in records.messages()[0]


@pytest.mark.anyio
async def test_a_long_hold_of_a_task_is_logged(
    make_lock: Callable[..., KeyedLock], records: Records, anyio_backend: str
) -> None:
    lock = make_lock(warn_after=0.01)
    async with lock("k"):
        assert await anyio.to_thread.run_sync(records.arrived.wait, WAIT)
    assert f"{anyio_backend} task" in records.messages()[0]


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1, ValueError), ("1", TypeError), (True, TypeError)]
)
def test_bad_warn_after_is_refused(
    make_lock: Callable[..., KeyedLock], value: Any, error: type[Exception]
) -> None:
    with pytest.raises(error, match="warn_after"):
        make_lock(warn_after=value)


def test_warn_after_is_any_real_number_of_seconds(make_lock: Callable[..., KeyedLock]) -> None:
    assert make_lock(warn_after=Fraction(1, 2)).warn_after == 0.5


def _wait_in_thread(records: Records) -> None:
    assert records.arrived.wait(WAIT), "no warning for a hold longer than warn_after"
    records.arrived.clear()


def test_a_hold_taken_by_run_sync_or_guard_names_the_callers_place(
    make_lock: Callable[..., KeyedLock], records: Records
) -> None:
    """The place is the caller's line, not a line of keyedlock's own helpers."""
    lock = make_lock(warn_after=0.01)

    @lock.guard(lambda order: f"order:{order}")
    def guarded(order: int) -> None:
        _wait_in_thread(records)

    lock.run_sync("k", _wait_in_thread, records)
    guarded(7)
    first, second = records.messages()
    for message in (first, second):
        assert "test_warn_after.py" in message, message
        assert "test_a_hold_taken_by_run_sync_or_guard_names_the_callers_place" in message
        assert "keyedlock" + "/_" not in message.replace("\\", "/"), message


@pytest.mark.anyio
async def test_a_hold_taken_by_run_names_the_callers_place(
    make_lock: Callable[..., KeyedLock], records: Records
) -> None:
    lock = make_lock(warn_after=0.01)

    async def wait() -> None:
        assert await anyio.to_thread.run_sync(records.arrived.wait, WAIT)

    await lock.run("k", wait)
    [message] = records.messages()
    assert "test_a_hold_taken_by_run_names_the_callers_place" in message, message


@pytest.mark.anyio
async def test_a_guarded_function_that_is_a_task_names_itself(
    make_lock: Callable[..., KeyedLock], records: Records
) -> None:
    """A guarded function started as a task of its own is called by the event loop: the
    place logged is the function (where it is defined), not a line of the loop's."""
    lock = make_lock(warn_after=0.01)

    @lock.guard("k")
    async def task_of_its_own() -> None:
        assert await anyio.to_thread.run_sync(records.arrived.wait, WAIT)

    async with anyio.create_task_group() as tg:
        tg.start_soon(task_of_its_own)
    [message] = records.messages()
    assert "test_warn_after.py" in message, message
    assert "in task_of_its_own(), the function run with the key (called by " in message


class Proxy:
    """A callable whose every attribute exists (as a remote-call proxy's): ``__wrapped__``
    too, so unwrapping it never ends."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    def __getattr__(self, name: str) -> Proxy:
        return Proxy(self.calls)

    def __call__(self) -> None:
        self.calls.append("called")


@pytest.mark.anyio
async def test_any_callable_run_as_a_task_of_its_own_runs(
    make_lock: Callable[..., KeyedLock],
) -> None:
    """Finding the place of a ``run`` whose caller is the event loop never fails the call."""
    lock = make_lock(warn_after=WAIT)
    calls: list[str] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lock.run, "k", Proxy(calls))
    assert calls == ["called"]


def test_a_guarded_function_that_is_a_thread_names_itself(
    make_lock: Callable[..., KeyedLock], records: Records
) -> None:
    lock = make_lock(warn_after=0.01)

    @lock.guard("k")
    def thread_of_its_own() -> None:
        _wait_in_thread(records)

    thread = threading.Thread(target=thread_of_its_own)
    thread.start()
    thread.join(WAIT)
    [message] = records.messages()
    assert "test_warn_after.py" in message, message
    assert "in thread_of_its_own(), the function run with the key (called by " in message


def test_release_forgets_the_hold_it_released_not_the_next_one(
    make_lock: Callable[..., KeyedLock], records: Records
) -> None:
    """``release(key)`` hands the key to a waiter that took it with ``acquire()``: the waiter
    may be watched before the release forgets the hold it released. The waiter's hold is
    still watched, and logged; the released one never is."""
    lock = make_lock(warn_after=0.3)
    lock.acquire("k")
    handed = threading.Event()

    def waiter() -> None:
        assert lock.acquire("k", timeout=WAIT)
        handed.set()
        try:
            assert records.arrived.wait(WAIT), "the waiter's long hold was not logged"
        finally:
            lock.release("k")

    kind = type(lock._backend)
    release_key = kind.release_key

    def releasing(backend: Any, key: object, done: list[Any]) -> None:
        release_key(backend, key, done)
        handed.wait(WAIT)  # the waiter is watched before this release forgets its hold

    thread = threading.Thread(target=waiter, name="waiter")
    thread.start()
    wait_waiters(lock, "k", 1)
    with patch.object(kind, "release_key", releasing):
        lock.release("k")
    thread.join(WAIT)
    assert not thread.is_alive()
    [message] = records.messages()
    assert "'waiter'" in message
