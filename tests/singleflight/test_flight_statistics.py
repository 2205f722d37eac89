"""statistics(key) and keys() of a single-flight group, in every scope."""

from __future__ import annotations

import os
from collections.abc import Callable

import anyio
import pytest

from keyedlock import FlightStatistics, SingleFlight

from ..support import WAIT
from .flight_support import wait_followers_async


def test_an_idle_key(sf: SingleFlight) -> None:
    assert sf.statistics("k") == FlightStatistics(
        key="k",
        in_flight=False,
        leader=None,
        running_for=None,
        followers=0,
        followers_by_runtime={},
        cached=False,
    )
    assert sf.keys() == []


@pytest.mark.anyio
async def test_a_call_in_flight(sf: SingleFlight, anyio_backend: str) -> None:
    sf.statistics("k")  # the first call turns on recording when calls start
    gate, started = anyio.Event(), anyio.Event()
    seen: list[FlightStatistics] = []

    async def fetch() -> int:
        started.set()
        await gate.wait()
        return 1

    async def caller() -> None:
        await sf.do("k", fetch)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, name="the-leader")
            # (Started, not only in flight: a Redis leader is in flight here before Redis
            # has made it the leader, and its call starts then.)
            await started.wait()
            for i in range(3):
                tg.start_soon(caller)
                await wait_followers_async(sf, "k", i + 1)
            seen.append(sf.statistics("k"))
            assert sf.keys() == ["k"]
            gate.set()

    [stats] = seen
    assert stats.in_flight
    assert stats.leader is not None
    assert stats.leader.runtime == anyio_backend
    assert stats.leader.pid == os.getpid()
    assert stats.leader.name == "the-leader"
    assert stats.running_for is not None
    assert stats.followers == 3
    assert stats.followers_by_runtime == {anyio_backend: 3}
    assert not stats.cached
    assert sf.statistics("k").in_flight is False
    assert sf.keys() == []


def test_a_kept_value_is_reported(make_flight: Callable[..., SingleFlight]) -> None:
    sf = make_flight(ttl=WAIT * 100)
    assert sf.do_sync("k", lambda: 5) == 5
    stats = sf.statistics("k")
    assert stats.cached
    assert not stats.in_flight
    sf.forget("k")
    assert not sf.statistics("k").cached
