"""ttl: a successful value is reused for ttl seconds after its call ends; errors never are.

Reuse is checked with a ttl far longer than any test, so it never depends on speed. Expiry
needs real time to pass: those tests use a tiny ttl and wait, bounded, until it has passed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import anyio
import pytest

import keyedlock._scopes._localflight as localflight
from keyedlock import Result, SingleFlight

from ..support import WAIT, Threads, table_of, wait_until, wait_until_async
from .flight_support import wait_followers, wait_followers_async

#: A ttl no test outlives: reuse never depends on how fast the machine is.
LONG_TTL = WAIT * 100
#: A ttl the expiry tests wait out (real time, bounded).
SHORT_TTL = 0.02


class FetchError(Exception):
    """The error the shared call raises in these tests."""


def sleep_past(deadline: float) -> None:
    """Sleep until ``time.monotonic()`` is past ``deadline`` (real time: only for ttl expiry)."""
    while (left := deadline - time.monotonic()) >= 0:
        time.sleep(left + 0.001)


async def sleep_past_async(deadline: float) -> None:
    """As :func:`sleep_past`, from an asyncio or trio task."""
    for _ in range(100):  # a timer may fire a hair early: look again
        left = deadline - time.monotonic()
        if left < 0:
            return
        await anyio.sleep(left + 0.001)
    raise AssertionError("the clock did not pass the deadline")


def test_ttl_is_reported_as_seconds(make_flight: Callable[..., SingleFlight]) -> None:
    assert make_flight().ttl == 0.0
    assert make_flight(ttl=5).ttl == 5.0
    assert isinstance(make_flight(ttl=5).ttl, float)
    assert make_flight(ttl=0.5).ttl == 0.5
    assert "ttl=0.5" in repr(make_flight(ttl=0.5))


@pytest.mark.anyio
async def test_a_value_is_reused_within_ttl(make_flight: Callable[..., SingleFlight]) -> None:
    sf = make_flight(ttl=LONG_TTL)
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await sf.do_ex("k", fetch) == Result(1, False)
    assert not sf.in_flight("k"), "a kept value is not a call in flight"
    assert len(sf) == 0
    assert await sf.do_ex("k", fetch) == Result(1, True)
    assert await sf.do("k", fetch) == 1
    assert calls == 1
    assert await sf.do_ex("other key", fetch) == Result(2, False)


def test_a_value_is_reused_within_ttl_in_threads(make_flight: Callable[..., SingleFlight]) -> None:
    sf = make_flight(ttl=LONG_TTL)
    calls = 0

    def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert sf.do_sync_ex("k", fetch) == Result(1, False)
    assert not sf.in_flight("k")
    assert len(sf) == 0
    assert sf.do_sync_ex("k", fetch) == Result(1, True)
    assert sf.do_sync("k", fetch) == 1
    assert calls == 1


@pytest.mark.anyio
async def test_a_value_kept_by_a_thread_is_reused_by_tasks(
    anyio_backend: str, make_flight: Callable[..., SingleFlight]
) -> None:
    sf = make_flight(ttl=LONG_TTL)
    assert await anyio.to_thread.run_sync(lambda: sf.do_sync_ex("k", lambda: "from a thread")) == (
        Result("from a thread", False)
    )

    async def never() -> str:
        raise AssertionError("the kept value should have been reused")

    assert await sf.do_ex("k", never) == Result("from a thread", True)


@pytest.mark.anyio
async def test_callers_during_and_after_the_call_all_share(
    make_flight: Callable[..., SingleFlight],
) -> None:
    sf = make_flight(ttl=LONG_TTL)
    gate = anyio.Event()
    calls = 0

    async def fetch() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "value"

    results: list[Result[str]] = []

    async def caller() -> None:
        results.append(await sf.do_ex("k", fetch))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await wait_until_async(lambda: calls == 1, "the leader runs the call")
            tg.start_soon(caller)
            await wait_followers_async(sf, "k", 1)
            gate.set()
    assert results == [Result("value", True)] * 2
    assert [await sf.do_ex("k", fetch) for _ in range(3)] == [Result("value", True)] * 3
    assert calls == 1


def test_threads_during_and_after_the_call_all_share(
    threads: Threads, make_flight: Callable[..., SingleFlight]
) -> None:
    sf = make_flight(ttl=LONG_TTL)
    gate = threading.Event()
    calls: list[str] = []

    def fetch() -> str:
        calls.append("call")
        assert gate.wait(WAIT)
        return "value"

    leader = threads.start(lambda: sf.do_sync_ex("k", fetch), "leader")
    wait_until(lambda: len(calls) == 1, "the leader runs the call")
    follower = threads.start(lambda: sf.do_sync_ex("k", fetch), "follower")
    wait_followers(sf, "k", 1)
    gate.set()
    assert leader.result() == Result("value", True)
    assert follower.result() == Result("value", True)
    assert sf.do_sync_ex("k", fetch) == Result("value", True)
    assert calls == ["call"]


@pytest.mark.anyio
async def test_errors_are_not_reused(make_flight: Callable[..., SingleFlight]) -> None:
    sf = make_flight(ttl=LONG_TTL)
    calls = 0

    async def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise FetchError("first call fails")
        return calls

    with pytest.raises(FetchError):
        await sf.do("k", flaky)
    assert await sf.do_ex("k", flaky) == Result(2, False)
    assert await sf.do_ex("k", flaky) == Result(2, True)
    assert calls == 2


def test_errors_are_not_reused_in_threads(make_flight: Callable[..., SingleFlight]) -> None:
    sf = make_flight(ttl=LONG_TTL)
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise FetchError("first call fails")
        return calls

    with pytest.raises(FetchError):
        sf.do_sync("k", flaky)
    assert sf.do_sync_ex("k", flaky) == Result(2, False)
    assert sf.do_sync_ex("k", flaky) == Result(2, True)


def test_an_expired_value_is_not_reused(make_flight: Callable[..., SingleFlight]) -> None:
    sf = make_flight(ttl=SHORT_TTL)
    calls = 0

    def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert sf.do_sync("k", fetch) == 1
    sleep_past(time.monotonic() + SHORT_TTL)
    assert sf.do_sync_ex("k", fetch) == Result(2, False)


@pytest.mark.anyio
async def test_an_expired_value_is_not_reused_by_tasks(
    make_flight: Callable[..., SingleFlight],
) -> None:
    sf = make_flight(ttl=SHORT_TTL)
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert await sf.do("k", fetch) == 1
    await sleep_past_async(time.monotonic() + SHORT_TTL)
    assert await sf.do_ex("k", fetch) == Result(2, False)


@pytest.mark.parametrize("last_key", ["a new key", "an old key"])
def test_expired_values_are_dropped(last_key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]  # a clock of the test's own: 500 calls take no time, however loaded the host
    monkeypatch.setattr(localflight, "monotonic", lambda: now[0])
    sf = SingleFlight(ttl=SHORT_TTL)
    keys = [f"key-{i}" for i in range(500)]
    for key in keys:
        sf.do_sync(key, lambda: "value")
    assert len(table_of(sf).results) == len(keys)
    now[0] += SHORT_TTL * 2

    key = "key-new" if last_key == "a new key" else keys[len(keys) // 2]
    assert sf.do_sync_ex(key, lambda: "fresh") == Result("fresh", False)
    assert list(table_of(sf).results) == [key], "expired values are still kept"


@pytest.mark.parametrize("next_call", ["a hit of a fresh value", "a call that fails"])
def test_expired_values_are_dropped_by_any_next_call(
    next_call: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only a call that keeps a value: whatever the next call does, expired ones go."""
    now = [1000.0]
    monkeypatch.setattr(localflight, "monotonic", lambda: now[0])
    sf = SingleFlight(ttl=SHORT_TTL)
    for i in range(100):
        sf.do_sync(f"key-{i}", lambda: "value")
    now[0] += SHORT_TTL / 2
    sf.do_sync("fresh", lambda: "fresh value")
    now[0] += SHORT_TTL * 0.75  # the first 100 expired; "fresh" has not

    if next_call == "a hit of a fresh value":
        assert sf.do_sync_ex("fresh", lambda: "unused") == Result("fresh value", True)
    else:

        def fail() -> str:
            raise FetchError("no")

        with pytest.raises(FetchError):
            sf.do_sync("failing", fail)
    assert list(table_of(sf).results) == ["fresh"], "expired values are still kept"


@pytest.mark.anyio
async def test_many_keys_over_time_keep_the_results_bounded() -> None:
    sf = SingleFlight(ttl=SHORT_TTL)

    async def fetch(i: int) -> int:
        return i

    for round_ in range(3):
        for i in range(200):
            await sf.do((round_, i), fetch, i)
        assert len(table_of(sf).results) <= 200
        await sleep_past_async(time.monotonic() + SHORT_TTL)
    await sf.do("last", fetch, -1)
    assert list(table_of(sf).results) == ["last"]
    assert len(sf) == 0
