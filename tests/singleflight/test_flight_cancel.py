"""Cancellation and takeover: a caller's cancellation is its own.

A cancelled follower just leaves. If the leader (the caller running the call) is cancelled or
interrupted, the earliest remaining caller takes over and runs its own function; the others
wait on it. Nobody ever receives another caller's cancellation.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Literal

import anyio
import pytest
import trio
from anyio.abc import TaskGroup

from keyedlock import Result, SingleFlight

from ..conformance.scopes import Scope, differs
from ..support import (
    WAIT,
    AsyncioThread,
    Handle,
    Threads,
    TrioThread,
    wait_until,
    wait_until_async,
)
from .flight_support import wait_followers, wait_followers_async

FOLLOWERS = ("first", "second", "third")


class Call:
    """The functions callers pass in these tests: the leader's never ends by itself.

    ``calls`` records who ran its function, in order; a follower's function returns its
    caller's name once ``gate`` is set.
    """

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.gate = anyio.Event()

    async def fetch(self, name: str) -> str:
        self.calls.append(name)
        if name == "leader":
            await anyio.sleep_forever()
        await self.gate.wait()
        return name


async def start_in_order(
    sf: SingleFlight,
    tg: TaskGroup,
    call: Call,
    results: dict[str, Result[str]],
    scopes: dict[str, anyio.CancelScope],
) -> None:
    """Start the leader, then the followers one by one, each queued before the next starts."""

    async def caller(name: str) -> None:
        with scopes[name]:
            results[name] = await sf.do_ex("k", call.fetch, name)

    tg.start_soon(caller, "leader")
    await wait_until_async(lambda: call.calls == ["leader"], "the leader runs the call")
    for i, name in enumerate(FOLLOWERS):
        tg.start_soon(caller, name)
        await wait_followers_async(sf, "k", i + 1)


# -- any runtime (anyio cancel scopes: task.cancel() under asyncio, scopes under trio) -------


@pytest.mark.anyio
async def test_the_earliest_follower_takes_over_a_cancelled_leader(sf: SingleFlight) -> None:
    call = Call()
    results: dict[str, Result[str]] = {}
    scopes = {name: anyio.CancelScope() for name in ("leader", *FOLLOWERS)}
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            await start_in_order(sf, tg, call, results, scopes)
            scopes["leader"].cancel()
            await wait_until_async(lambda: call.calls == ["leader", "first"], "a takeover")
            assert sf.in_flight("k")
            await wait_followers_async(sf, "k", 2)  # second and third now wait on first

            async def late() -> None:  # arrives after the cancellation
                results["late"] = await sf.do_ex("k", call.fetch, "late")

            tg.start_soon(late)
            await wait_followers_async(sf, "k", 3)
            call.gate.set()

    assert scopes["leader"].cancelled_caught
    assert "leader" not in results
    assert results == {name: Result("first", True) for name in ("first", "second", "third", "late")}
    assert call.calls == ["leader", "first"]


@pytest.mark.anyio
async def test_a_cancelled_follower_leaves_the_others_alone(sf: SingleFlight) -> None:
    call = Call()
    results: dict[str, Result[str]] = {}
    scopes = {name: anyio.CancelScope() for name in ("leader", *FOLLOWERS)}
    leader_gate = anyio.Event()

    async def fetch(name: str) -> str:
        call.calls.append(name)
        await leader_gate.wait()
        return "value"

    async def caller(name: str) -> None:
        with scopes[name]:
            results[name] = await sf.do_ex("k", fetch, name)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "leader")
            await wait_until_async(lambda: call.calls == ["leader"], "the leader runs the call")
            for i, name in enumerate(FOLLOWERS):
                tg.start_soon(caller, name)
                await wait_followers_async(sf, "k", i + 1)
            scopes["second"].cancel()
            await wait_followers_async(sf, "k", 2)
            leader_gate.set()

    assert scopes["second"].cancelled_caught
    assert results == {name: Result("value", True) for name in ("leader", "first", "third")}
    assert call.calls == ["leader"]


@pytest.mark.anyio
async def test_leader_and_earliest_follower_cancelled_at_once(sf: SingleFlight) -> None:
    call = Call()
    results: dict[str, Result[str]] = {}
    scopes = {name: anyio.CancelScope() for name in ("leader", *FOLLOWERS)}
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            await start_in_order(sf, tg, call, results, scopes)
            scopes["leader"].cancel()
            scopes["first"].cancel()
            await wait_until_async(lambda: len(call.calls) == 2, "a takeover")
            call.gate.set()

    assert scopes["leader"].cancelled_caught
    assert scopes["first"].cancelled_caught
    assert call.calls == ["leader", "second"]
    assert results == {name: Result("second", True) for name in ("second", "third")}


@pytest.mark.anyio
async def test_all_callers_cancelled_leaves_nothing_running(sf: SingleFlight) -> None:
    call = Call()
    results: dict[str, Result[str]] = {}
    scopes = {name: anyio.CancelScope() for name in ("leader", *FOLLOWERS)}
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            await start_in_order(sf, tg, call, results, scopes)
            tg.cancel_scope.cancel()

    assert results == {}
    assert call.calls == ["leader"], "a cancelled follower ran its function"
    assert len(sf) == 0
    assert not sf.in_flight("k")

    async def fresh() -> str:
        return "fresh"

    # The next caller starts a new call and never sees the old callers' cancellation.
    assert await sf.do_ex("k", fresh) == Result("fresh", False)


@pytest.mark.anyio
async def test_a_leader_cancelled_at_its_first_checkpoint_leaves_no_trace(
    flight_scope: Scope, sf: SingleFlight
) -> None:
    differs(flight_scope, "redis", why="joining is a round trip: the leader's task yields first")
    started: list[str] = []

    async def fetch() -> str:
        started.append("run")
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    with anyio.move_on_after(0) as scope:
        await sf.do("k", fetch)
    assert scope.cancelled_caught
    assert started == ["run"]
    assert len(sf) == 0

    async def fresh() -> str:
        return "fresh"

    assert await sf.do_ex("k", fresh) == Result("fresh", False)


@pytest.mark.anyio
async def test_a_forgotten_call_hands_over_within_its_own_callers(
    flight_scope: Scope, sf: SingleFlight
) -> None:
    differs(
        flight_scope,
        "redis",
        why="a forgotten call's followers join the key's current call when its leader gives up",
    )
    call = Call()
    new_gate = anyio.Event()
    results: dict[str, Result[str]] = {}
    scopes = {name: anyio.CancelScope() for name in ("leader", *FOLLOWERS)}

    async def fetch_new(name: str) -> str:
        call.calls.append(name)
        await new_gate.wait()
        return name

    async def new_caller() -> None:
        results["new"] = await sf.do_ex("k", fetch_new, "new")

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            await start_in_order(sf, tg, call, results, scopes)
            sf.forget("k")
            tg.start_soon(new_caller)
            await wait_until_async(lambda: "new" in call.calls, "the new call runs")
            scopes["leader"].cancel()  # the forgotten call's leader
            await wait_until_async(lambda: "first" in call.calls, "a takeover in the old call")
            assert sf.in_flight("k"), "the takeover in the old call removed the new call"
            assert sf._backend.waiters(sf._local("k")) == 0
            call.gate.set()
            await wait_until_async(lambda: len(results) == 3, "the old call's callers end")
            assert sf.in_flight("k")
            new_gate.set()

    assert results == {
        "first": Result("first", True),
        "second": Result("first", True),
        "third": Result("first", True),
        "new": Result("new", False),
    }


# -- asyncio: Task.cancel() and asyncio.timeout() ----------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("how", ["task.cancel", "asyncio.timeout"])
async def test_asyncio_leader_cancelled(sf: SingleFlight, how: str) -> None:
    call = Call()
    timeout: list[asyncio.Timeout] = []

    async def leader() -> str:
        if how == "task.cancel":
            return await sf.do("k", call.fetch, "leader")
        async with asyncio.timeout(None) as cm:
            timeout.append(cm)
            return await sf.do("k", call.fetch, "leader")

    async with asyncio.timeout(WAIT):
        leader_task = asyncio.create_task(leader())
        await wait_until_async(lambda: call.calls == ["leader"], "the leader runs the call")
        followers = []
        for i, name in enumerate(FOLLOWERS):
            followers.append(asyncio.create_task(sf.do_ex("k", call.fetch, name)))
            await wait_followers_async(sf, "k", i + 1)

        if how == "task.cancel":
            leader_task.cancel()
        else:
            timeout[0].reschedule(asyncio.get_running_loop().time())  # expires now
        await wait_until_async(lambda: call.calls == ["leader", "first"], "a takeover")
        call.gate.set()
        assert await asyncio.gather(*followers) == [Result("first", True)] * 3
        if how == "task.cancel":
            with pytest.raises(asyncio.CancelledError):
                await leader_task
        else:
            with pytest.raises(TimeoutError):
                await leader_task


# -- trio: cancel scopes and move_on_after -------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("how", ["CancelScope", "move_on_after"])
async def test_trio_leader_cancelled(sf: SingleFlight, how: str) -> None:
    call = Call()
    results: dict[str, Result[str]] = {}
    leader_scope: list[trio.CancelScope] = []

    async def leader() -> None:
        scope = trio.CancelScope() if how == "CancelScope" else trio.move_on_after(WAIT * 100)
        leader_scope.append(scope)
        with scope:
            await sf.do("k", call.fetch, "leader")

    async def follower(name: str) -> None:
        results[name] = await sf.do_ex("k", call.fetch, name)

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await wait_until_async(lambda: call.calls == ["leader"], "the leader runs the call")
            for i, name in enumerate(FOLLOWERS):
                nursery.start_soon(follower, name)
                await wait_followers_async(sf, "k", i + 1)
            if how == "CancelScope":
                leader_scope[0].cancel()
            else:
                leader_scope[0].deadline = -math.inf  # the deadline has passed
            await wait_until_async(lambda: call.calls == ["leader", "first"], "a takeover")
            call.gate.set()

    assert leader_scope[0].cancelled_caught
    assert results == {name: Result("first", True) for name in FOLLOWERS}


# -- threads: KeyboardInterrupt in the leader -------------------------------------------


Runtime = Literal["thread", "asyncio", "trio"]
RUNTIMES: tuple[Runtime, ...] = ("thread", "asyncio", "trio")


@pytest.mark.parametrize("successor", RUNTIMES)
def test_keyboard_interrupt_in_a_thread_leader(
    sf: SingleFlight,
    threads: Threads,
    asyncio_thread: AsyncioThread,
    trio_thread: TrioThread,
    successor: Runtime,
) -> None:
    gate = threading.Event()
    calls: list[str] = []

    def leader_fn() -> str:
        calls.append("leader")
        assert gate.wait(WAIT)
        raise KeyboardInterrupt

    def fetch_sync(name: str) -> str:
        calls.append(name)
        return name

    async def fetch_async(name: str) -> str:
        calls.append(name)
        return name

    def start(runtime: Runtime) -> Handle[Result[str]]:
        if runtime == "thread":
            return threads.start(lambda: sf.do_sync_ex("k", fetch_sync, runtime), runtime)
        task: Callable[[], Coroutine[Any, Any, Result[str]]]
        task = lambda: sf.do_ex("k", fetch_async, runtime)  # noqa: E731
        return (asyncio_thread if runtime == "asyncio" else trio_thread).submit(task, runtime)

    leader = threads.start(lambda: sf.do_sync("k", leader_fn), "leader")
    wait_until(lambda: calls == ["leader"], "the leader runs the call")
    order = [successor, *(runtime for runtime in RUNTIMES if runtime != successor)]
    followers = {}
    for i, runtime in enumerate(order):
        followers[runtime] = start(runtime)
        wait_followers(sf, "k", i + 1)
    gate.set()

    with pytest.raises(KeyboardInterrupt):
        leader.result()
    for handle in followers.values():
        assert handle.result() == Result(successor, True)
    assert calls == ["leader", successor]
    assert len(sf) == 0


def test_keyboard_interrupt_with_no_follower_frees_the_key(sf: SingleFlight) -> None:
    def interrupted() -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sf.do_sync("k", interrupted)
    assert len(sf) == 0
    assert sf.do_sync_ex("k", lambda: "fresh") == Result("fresh", False)
