"""forget(key): the next call starts fresh; callers of the forgotten call still get its outcome."""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio
import pytest

from keyedlock import Result, SingleFlight

from ..support import WAIT, Threads, table_of, wait_until, wait_until_async
from .flight_support import wait_followers, wait_followers_async


@pytest.mark.anyio
@pytest.mark.parametrize("first_to_finish", ["old", "new"])
async def test_forget_during_a_call(sf: SingleFlight, first_to_finish: str) -> None:
    gates = {"old": anyio.Event(), "new": anyio.Event()}
    calls: list[str] = []

    async def fetch(generation: str) -> str:
        calls.append(generation)
        await gates[generation].wait()
        return generation

    results: dict[str, Result[str]] = {}

    async def caller(name: str, generation: str) -> None:
        results[name] = await sf.do_ex("k", fetch, generation)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "old leader", "old")
            await wait_until_async(lambda: calls == ["old"], "the first call runs")
            tg.start_soon(caller, "old follower", "unused")
            await wait_followers_async(sf, "k", 1)

            sf.forget("k")
            assert not sf.in_flight("k")
            assert len(sf) == 0

            tg.start_soon(caller, "new leader", "new")
            await wait_until_async(lambda: calls == ["old", "new"], "a new call starts")
            tg.start_soon(caller, "new follower", "unused")
            await wait_followers_async(sf, "k", 1)  # it joined the new call, not the old one
            assert sf.in_flight("k")

            if first_to_finish == "old":
                gates["old"].set()
                await wait_until_async(lambda: len(results) == 2, "the old call's callers end")
                assert sf.in_flight("k"), "the old call ending removed the new one"
                assert len(sf) == 1
                assert sf._backend.waiters(sf._local("k")) == 1
                gates["new"].set()
            else:
                gates["new"].set()
                await wait_until_async(lambda: len(results) == 2, "the new call's callers end")
                assert not sf.in_flight("k")
                gates["old"].set()

    assert calls == ["old", "new"]
    assert results == {
        "old leader": Result("old", True),
        "old follower": Result("old", True),
        "new leader": Result("new", True),
        "new follower": Result("new", True),
    }


@pytest.mark.parametrize("first_to_finish", ["old", "new"])
def test_forget_during_a_call_in_threads(
    sf: SingleFlight, threads: Threads, first_to_finish: str
) -> None:
    gates = {"old": threading.Event(), "new": threading.Event()}
    calls: list[str] = []

    def fetch(generation: str) -> str:
        calls.append(generation)
        assert gates[generation].wait(WAIT)
        return generation

    old_leader = threads.start(lambda: sf.do_sync_ex("k", fetch, "old"), "old leader")
    wait_until(lambda: calls == ["old"], "the first call runs")
    old_follower = threads.start(lambda: sf.do_sync_ex("k", fetch, "unused"), "old follower")
    wait_followers(sf, "k", 1)

    sf.forget("k")
    assert not sf.in_flight("k")

    new_leader = threads.start(lambda: sf.do_sync_ex("k", fetch, "new"), "new leader")
    wait_until(lambda: calls == ["old", "new"], "a new call starts")
    new_follower = threads.start(lambda: sf.do_sync_ex("k", fetch, "unused"), "new follower")
    wait_followers(sf, "k", 1)

    if first_to_finish == "old":
        gates["old"].set()
        assert old_leader.result() == Result("old", True)
        assert old_follower.result() == Result("old", True)
        assert sf.in_flight("k"), "the old call ending removed the new one"
        gates["new"].set()
    else:
        gates["new"].set()
        assert new_leader.result() == Result("new", True)
        assert new_follower.result() == Result("new", True)
        assert not sf.in_flight("k")
        gates["old"].set()
    assert old_leader.result() == Result("old", True)
    assert old_follower.result() == Result("old", True)
    assert new_leader.result() == Result("new", True)
    assert new_follower.result() == Result("new", True)
    assert calls == ["old", "new"]


def test_forget_of_an_idle_key_does_nothing(sf: SingleFlight) -> None:
    sf.forget("never used")
    sf.forget(b"never used either")
    assert len(sf) == 0
    assert sf.do_sync("k", lambda: 1) == 1


def test_forget_drops_a_kept_value() -> None:
    sf = SingleFlight(ttl=WAIT * 100)
    calls = 0

    def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert sf.do_sync_ex("k", fetch) == Result(1, False)
    assert sf.do_sync_ex("k", fetch) == Result(1, True)
    sf.forget("k")
    assert "k" not in table_of(sf).results
    assert sf.do_sync_ex("k", fetch) == Result(2, False)
    assert sf.do_sync_ex("k", fetch) == Result(2, True)


@pytest.mark.anyio
@pytest.mark.parametrize("first_to_finish", ["old", "new"])
async def test_a_forgotten_call_keeps_no_value(
    first_to_finish: str, make_flight: Callable[..., SingleFlight]
) -> None:
    """With ttl, only the current call's value is kept: a forgotten one never replaces it."""
    sf = make_flight(ttl=WAIT * 100)
    gates = {"old": anyio.Event(), "new": anyio.Event()}
    calls: list[str] = []
    finished: list[str] = []

    async def fetch(generation: str) -> str:
        calls.append(generation)
        await gates[generation].wait()
        return generation

    async def caller(generation: str) -> None:
        finished.append(await sf.do("k", fetch, generation))

    async def let_finish(generation: str) -> None:
        gates[generation].set()
        await wait_until_async(lambda: generation in finished, f"the {generation} call ends")

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "old")
            await wait_until_async(lambda: calls == ["old"], "the first call runs")
            sf.forget("k")
            tg.start_soon(caller, "new")
            await wait_until_async(lambda: calls == ["old", "new"], "a new call starts")
            order = ["old", "new"] if first_to_finish == "old" else ["new", "old"]
            for generation in order:
                await let_finish(generation)
    assert finished == order

    assert await sf.do_ex("k", fetch, "unused") == Result("new", True)
    assert calls == ["old", "new"]
    assert len(sf) == 0


@pytest.mark.anyio
async def test_a_forgotten_call_alone_keeps_no_value() -> None:
    sf = SingleFlight(ttl=WAIT * 100)
    gate = anyio.Event()
    calls: list[str] = []

    async def fetch(name: str) -> str:
        calls.append(name)
        if name == "first":
            await gate.wait()
        return name

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sf.do, "k", fetch, "first")
            await wait_until_async(lambda: calls == ["first"], "the first call runs")
            sf.forget("k")
            gate.set()
    assert table_of(sf).results == {}
    assert await sf.do_ex("k", fetch, "second") == Result("second", False)
    assert calls == ["first", "second"]
