"""asyncio followers of one call wait as a herd: one place in the key's queue for all of them.

A herd is how the process scope parks asyncio followers (trio tasks and threads wait one by
one), so these tests run on asyncio alone; what they check is the same behaviour every
runtime has (see test_flight_cancel.py, which runs on all): a follower that leaves changes
nothing for the others, the earliest follower still waiting takes a call over, in arrival
order with followers of other runtimes, and nothing is left behind once the call ends. Each
test also checks the herd itself (how many places it takes, that it is gone at the end).
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import pytest

from keyedlock import Result, SingleFlight
from keyedlock._core import Hold
from keyedlock._runtime import AsyncioHerd

from ..support import start_thread, wait_until, wait_until_async
from .flight_support import wait_followers_async

pytestmark = pytest.mark.timeout(30)

WAIT = 10.0


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), WAIT))


def places(sf: SingleFlight, key: str) -> int:
    """How many places the key's queue has (a herd takes one for all its followers)."""
    return sf._backend.table.waiters(key)  # type: ignore[attr-defined, no-any-return]


class Gate:
    """Callers of key "k" whose call waits for the gate: who ran the call, and what each
    caller got (or "cancelled")."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.results: dict[str, Any] = {}
        self.gate = asyncio.Event()

    def fn(self, name: str) -> Callable[[], Coroutine[Any, Any, str]]:
        async def call() -> str:
            self.ran.append(name)
            await self.gate.wait()
            return name

        return call

    def start(
        self, sf: SingleFlight, name: str, task_name: str | None = None
    ) -> asyncio.Task[None]:
        """A task calling ``sf.do_ex("k", ...)`` as ``name``, its result in ``results``."""

        async def main() -> None:
            try:
                self.results[name] = await sf.do_ex("k", self.fn(name))
            except asyncio.CancelledError:
                self.results[name] = "cancelled"
                raise

        return asyncio.create_task(main(), name=task_name)


class ThreadLeader:
    """A thread leading the call for key "k" until :meth:`end`: the call then returns
    ``value`` or, with ``gives_up``, is interrupted (KeyboardInterrupt: the call is handed
    on)."""

    def __init__(self, sf: SingleFlight, value: str = "led", gives_up: bool = False) -> None:
        started, self.release = threading.Event(), threading.Event()

        def call() -> str:
            started.set()
            self.release.wait(WAIT)
            if gives_up:
                raise KeyboardInterrupt  # what an interrupt does: the call is handed on
            return value

        def lead() -> str:
            try:
                return sf.do_sync("k", call)
            except KeyboardInterrupt:
                return "gave up"

        self.thread = start_thread(lead, "leader")
        assert started.wait(WAIT)

    def end(self) -> str:
        """Let the call end; what the thread got ("gave up" if it gave the call up)."""
        self.release.set()
        return self.thread.result(WAIT)


def test_a_herd_takes_one_place_and_every_follower_gets_the_value() -> None:
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        results = gate.results
        tasks = [gate.start(sf, f"c{i}") for i in range(50)]
        await wait_followers_async(sf, "k", 49)
        assert places(sf, "k") == 1
        stats = sf.statistics("k")
        assert stats.followers == 49
        assert dict(stats.followers_by_runtime) == {"asyncio": 49}
        gate.gate.set()
        await asyncio.gather(*tasks)
        assert gate.ran == ["c0"]
        assert results == {f"c{i}": Result("c0", True) for i in range(50)}
        assert sf._backend.herds == {}  # type: ignore[attr-defined]

    run(main)
    assert len(sf) == 0


def test_cancelled_followers_leave_the_herd_and_the_last_one_leaves_the_queue() -> None:
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        results = gate.results
        leader = gate.start(sf, "leader")
        followers = [gate.start(sf, f"f{i}") for i in range(3)]
        await wait_followers_async(sf, "k", 3)
        followers[1].cancel()
        await wait_followers_async(sf, "k", 2)
        assert places(sf, "k") == 1
        for task in (followers[0], followers[2]):
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        assert places(sf, "k") == 0  # the herd left the queue with its last follower
        assert sf._backend.herds == {}  # type: ignore[attr-defined]
        gate.gate.set()
        await leader
        assert results["leader"] == Result("leader", False)  # nobody shared it

    run(main)
    assert len(sf) == 0


def test_a_follower_cancelled_on_the_shared_future_wakes_no_one_else_for_good() -> None:
    """Followers await one shared future; cancelling one follower cancels that future, which
    wakes them all: the others wait on, each with a future of its own, their tasks'
    cancellation counts untouched, and a caller arriving after that still joins the herd."""
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        results = gate.results
        leader = gate.start(sf, "leader")
        tasks = {n: gate.start(sf, n) for n in ("a", "b", "c")}
        await wait_followers_async(sf, "k", 3)
        (herd,) = sf._backend.herds.values()  # type: ignore[attr-defined]
        assert herd.shared is not None  # one future for the three
        assert not herd.split
        tasks["b"].cancel()
        assert sf.statistics("k").followers == 2  # (b counts no more at once)
        await wait_until_async(lambda: tasks["b"].done(), "b leaves")
        assert herd.split  # each of the others has its own now
        assert herd.shared is None
        assert [t.done() for t in (tasks["a"], tasks["c"])] == [False, False]
        late = gate.start(sf, "late")
        await wait_followers_async(sf, "k", 3)
        assert places(sf, "k") == 1  # the late caller joined the same herd
        gate.gate.set()
        await asyncio.gather(leader, tasks["a"], tasks["c"], late)
        assert results == {
            "leader": Result("leader", True),
            "a": Result("leader", True),
            "b": "cancelled",
            "c": Result("leader", True),
            "late": Result("leader", True),
        }
        # Woken by b's cancellation, a and c were never cancelled themselves.
        assert [tasks[n].cancelling() for n in ("a", "c")] == [0, 0]
        assert tasks["b"].cancelled()

    run(main)
    assert len(sf) == 0


def test_followers_cancelled_in_one_step_all_leave_and_the_rest_get_the_value() -> None:
    """Two followers cancelled back to back: the first cancels the shared future, the
    second finds it cancelled already (its task is marked to raise when it wakes). Both
    leave; so does a third cancelled as the call ends; the others get the value."""
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        results = gate.results
        leader = gate.start(sf, "leader")
        names = ("a", "b", "c", "d", "e")
        tasks = {n: gate.start(sf, n) for n in names}
        await wait_followers_async(sf, "k", len(names))
        tasks["b"].cancel()
        tasks["d"].cancel()
        await wait_followers_async(sf, "k", 3)
        tasks["e"].cancel()
        gate.gate.set()  # (the call ends in the same round as e's cancellation)
        await asyncio.gather(leader, *tasks.values(), return_exceptions=True)
        assert {n: results[n] for n in names} == {
            "a": Result("leader", True),
            "b": "cancelled",
            "c": Result("leader", True),
            "d": "cancelled",
            "e": "cancelled",
        }
        assert sf._backend.herds == {}  # type: ignore[attr-defined]

    run(main)
    assert len(sf) == 0


def test_a_follower_whose_task_was_cancelled_before_it_joined_raises_once_it_waits() -> None:
    """A cancellation requested while the task runs (it cancelled itself, or every task; or
    asyncio.run's SIGINT handler did) is delivered as the task parks: it cancels the future
    the task awaits, the herd's shared one. That is the task's own cancellation, although its
    ``cancelling()`` count went up before it joined: it must raise, not wait on."""
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        results = gate.results
        leader = gate.start(sf, "leader")
        other = gate.start(sf, "other")
        await wait_followers_async(sf, "k", 1)

        async def cancelled_first() -> None:
            asyncio.current_task().cancel()  # type: ignore[union-attr]  # (delivered as it parks)
            try:
                results["late"] = await sf.do_ex("k", gate.fn("late"))
            except asyncio.CancelledError:
                results["late"] = "cancelled"
                raise

        late = asyncio.create_task(cancelled_first())
        # It leaves at once (fixed), or waits on in the herd (the bug).
        await wait_until_async(
            lambda: late.done() or sf.statistics("k").followers == 2, "late leaves or waits"
        )
        gate.gate.set()
        await asyncio.gather(leader, other, late, return_exceptions=True)
        assert results == {
            "leader": Result("leader", True),
            "other": Result("leader", True),
            "late": "cancelled",
        }
        assert late.cancelled()
        assert other.cancelling() == 0
        assert sf._backend.herds == {}  # type: ignore[attr-defined]

    run(main)
    assert len(sf) == 0


def test_followers_in_one_cancelled_anyio_scope_all_leave_though_the_call_ends_next() -> None:
    """anyio (on asyncio) cancels a task in a cancelled scope only while the future it awaits
    is pending. Cancelling the first follower of a scope cancels the herd's shared future, so
    anyio skips the others and cancels them at its next round; the call's value, made after
    the scope was cancelled, must not reach them first."""
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        results = gate.results
        leader = gate.start(sf, "leader")
        groups: list[anyio.abc.TaskGroup] = []

        async def follow(name: str) -> None:
            try:
                results[name] = await sf.do_ex("k", gate.fn(name))
            except asyncio.CancelledError:
                results[name] = "cancelled"
                raise

        async def group() -> None:
            async with anyio.create_task_group() as tg:
                groups.append(tg)
                tg.start_soon(follow, "a")
                tg.start_soon(follow, "b")

        grouped = asyncio.create_task(group())
        await wait_followers_async(sf, "k", 2)
        outside = gate.start(sf, "outside")
        await wait_followers_async(sf, "k", 3)
        gate.gate.set()  # the call ends at the next round...
        groups[0].cancel_scope.cancel()  # ...and the group is cancelled before that
        await asyncio.gather(leader, outside, grouped)
        assert results == {
            "leader": Result("leader", True),
            "a": "cancelled",
            "b": "cancelled",
            "outside": Result("leader", True),
        }
        assert sf._backend.herds == {}  # type: ignore[attr-defined]

    run(main)
    assert len(sf) == 0


def test_a_cancelled_follower_stops_counting_at_once_on_the_shared_future() -> None:
    """A follower's cancellation takes it out of the herd's followers at once (as it did with
    a future per follower): in the statistics, and for a take-over, before its task runs."""
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        leader = gate.start(sf, "leader")
        tasks = {n: gate.start(sf, n) for n in ("a", "b", "c")}
        await wait_followers_async(sf, "k", 3)
        tasks["b"].cancel()
        assert sf.statistics("k").followers == 2
        tasks["a"].cancel()
        assert sf.statistics("k").followers == 1
        gate.gate.set()
        await asyncio.gather(leader, *tasks.values(), return_exceptions=True)
        assert gate.results["c"] == Result("leader", True)

    run(main)
    assert len(sf) == 0


def test_the_earliest_follower_still_waiting_takes_over_and_the_herd_follows_it() -> None:
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        results = gate.results
        leader = gate.start(sf, "leader")
        names = ["a", "b", "c", "d"]
        tasks = {n: gate.start(sf, n) for n in names}
        await wait_followers_async(sf, "k", 4)
        tasks["a"].cancel()
        await wait_followers_async(sf, "k", 3)
        leader.cancel()
        await wait_until_async(lambda: gate.ran == ["leader", "b"], "b takes over")
        assert places(sf, "k") == 1  # c and d wait again, as a herd, behind b
        assert sf.statistics("k").followers == 2
        gate.gate.set()
        await asyncio.gather(tasks["b"], tasks["c"], tasks["d"])
        assert results == {
            "leader": "cancelled",
            "a": "cancelled",
            "b": Result("b", True),
            "c": Result("b", True),
            "d": Result("b", True),
        }

    run(main)
    assert len(sf) == 0


def test_a_follower_cancelled_once_handed_the_call_passes_it_to_the_next() -> None:
    """The follower taking a call over is cancelled after the hand-off, before it runs."""
    sf = SingleFlight()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate = Gate()
        results = gate.results
        tasks: dict[str, asyncio.Task[None]] = {}

        async def leading() -> str:
            try:
                await gate.gate.wait()
            except asyncio.CancelledError:
                # Queued before the leader gives the call up, which hands it to "a" and
                # queues a's wake-up: "a" is cancelled once handed the call, before it runs.
                loop.call_soon(cancel_a)
                raise
            return "leader"

        async def lead() -> None:
            await sf.do("k", leading)

        leaders_seen: list[str | None] = []

        def cancel_a() -> None:
            leading_now = sf.statistics("k").leader
            leaders_seen.append(None if leading_now is None else leading_now.name)
            tasks["a"].cancel()

        leader = asyncio.create_task(lead())
        await asyncio.sleep(0)
        for name in ("a", "b", "c"):
            tasks[name] = gate.start(sf, name, task_name=name)
        await wait_followers_async(sf, "k", 3)
        leader.cancel()
        await wait_until_async(lambda: "b" in gate.ran, "b takes over")
        assert leaders_seen == ["a"]  # "a" was handed the call when it was cancelled
        assert gate.ran == ["b"]  # and never ran it
        assert results["a"] == "cancelled"
        gate.gate.set()
        await asyncio.gather(tasks["b"], tasks["c"])
        assert results["c"] == Result("b", True)
        with pytest.raises(asyncio.CancelledError):
            await leader

    run(main)
    assert len(sf) == 0


def test_a_herd_whose_followers_all_left_passes_a_call_it_is_handed_on() -> None:
    """Handed the call in the same instant as its last follower leaves: the call passes on."""
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        leader = gate.start(sf, "leader")
        follower = gate.start(sf, "f")
        await wait_followers_async(sf, "k", 1)
        # Both cancelled in one step of the loop: the leader gives the call up to the herd
        # first, then the follower leaves it, before the herd's wake-up runs.
        leader.cancel()
        follower.cancel()
        await asyncio.gather(leader, follower, return_exceptions=True)
        assert not sf.in_flight("k")
        assert sf._backend.herds == {}  # type: ignore[attr-defined]
        gate.gate.set()
        assert await sf.do("k", gate.fn("next")) == "next"

    run(main)
    assert len(sf) == 0


def test_herd_followers_keep_their_turn_among_other_runtimes_followers() -> None:
    """A thread that queued between two asyncio followers takes the call over before the
    later one: a follower joins a herd only while the herd is last in the queue."""
    sf = SingleFlight()
    release = threading.Event()

    def in_thread() -> Result[str]:
        def call() -> str:
            release.wait(WAIT)
            return "thread"

        return sf.do_sync_ex("k", call)

    async def main() -> None:
        gate = Gate()
        results = gate.results
        leader = gate.start(sf, "leader")
        first = gate.start(sf, "first")
        await wait_followers_async(sf, "k", 1)
        thread = start_thread(in_thread, "follower")
        await wait_followers_async(sf, "k", 2)
        later = gate.start(sf, "later")
        await wait_followers_async(sf, "k", 3)
        assert places(sf, "k") == 3  # first's herd, the thread, later's herd
        first.cancel()
        await wait_followers_async(sf, "k", 2)
        leader.cancel()

        def thread_leads() -> bool:
            lead = sf.statistics("k").leader
            return lead is not None and lead.runtime == "thread"

        await asyncio.to_thread(wait_until, thread_leads, "the thread takes over")
        release.set()
        await later
        assert results["later"] == Result("thread", True)
        assert await asyncio.to_thread(thread.result) == Result("thread", True)
        assert gate.ran == ["leader"]

    run(main)
    assert len(sf) == 0


def test_many_followers_leaving_one_by_one_leave_no_trace_in_the_herd() -> None:
    sf = SingleFlight()

    async def main() -> None:
        gate = Gate()
        results = gate.results
        leader = gate.start(sf, "leader")
        stay = gate.start(sf, "stay")
        await wait_followers_async(sf, "k", 1)
        (herd,) = sf._backend.herds.values()  # type: ignore[attr-defined]
        for i in range(500):
            task = gate.start(sf, f"gone{i}")
            await wait_followers_async(sf, "k", 2)
            task.cancel()
            await wait_followers_async(sf, "k", 1)
        assert len(herd.members) <= 128  # the ones that left are dropped as it grows
        gate.gate.set()
        await asyncio.gather(leader, stay)
        assert results["stay"] == Result("leader", True)

    run(main)
    assert len(sf) == 0


def test_a_herd_on_a_closed_loop_is_dropped_when_a_thread_ends_the_call() -> None:
    """The loop of a herd is closed with its followers still waiting (never cancelled); the
    thread leading the call ends it: nothing of the herd is left."""
    sf = SingleFlight()
    leader = ThreadLeader(sf, "thread")
    loop = asyncio.new_event_loop()
    try:
        follower = loop.create_task(sf.do("k", lambda: "never"))
        loop.run_until_complete(wait_followers_async(sf, "k", 1))
        assert sf._backend.herds  # type: ignore[attr-defined]
    finally:
        loop.close()  # the follower is still waiting: it will never run again
    assert leader.end() == "thread"
    assert sf._backend.herds == {}  # type: ignore[attr-defined]
    assert len(sf) == 0
    assert not follower.done()


def test_a_call_that_ends_as_the_herd_queues_is_led_by_the_caller() -> None:
    """The call a follower saw ends before its herd is queued (in another thread, in real
    life): the herd's place took the key, and the caller leads in its place."""
    sf = SingleFlight()
    table = sf._backend.table  # type: ignore[attr-defined]
    gone = Hold(object())  # a leader whose call has ended: the key is free again
    real_take = table.take

    def take_once(key: str, hold: Hold) -> Hold:
        table.take = real_take
        return gone  # what the caller saw

    table.take = take_once

    def mine() -> str:
        leader = sf.statistics("k").leader
        task = asyncio.current_task()
        assert leader is not None
        assert task is not None
        assert leader.name == task.get_name()  # the caller holds the key, not the herd
        return "mine"

    async def main() -> None:
        assert await sf.do_ex("k", mine) == Result("mine", False)

    try:
        run(main)
    finally:
        table.take = real_take
    assert len(sf) == 0
    assert sf._backend.herds == {}  # type: ignore[attr-defined]


def test_a_call_forgotten_as_the_herd_gives_its_place_back_is_handed_on() -> None:
    """The herd's place took the key (the call it saw had ended); before it gives the key
    back, a thread queues behind it and the call is forgotten: the thread still gets it."""
    sf = SingleFlight()
    backend: Any = sf._backend
    table = backend.table
    real_take = table.take
    table.take = lambda key, hold: Hold(object())  # a call that has ended: the key is free
    real_give_back = AsyncioHerd.give_back
    queued = threading.Event()
    thread_results: list[str] = []

    def thread_follower() -> None:
        thread_results.append(sf.do_sync("k", lambda: "thread's own"))

    def give_back(herd: AsyncioHerd) -> None:
        table.take = real_take
        start_thread(thread_follower, "behind the herd")
        wait_until(lambda: table.waiters("k") == 1, "the thread queues behind the herd")
        sf.forget("k")
        queued.set()
        real_give_back(herd)

    async def main() -> None:
        assert await sf.do_ex("k", lambda: "mine") == Result("mine", False)

    AsyncioHerd.give_back = give_back  # type: ignore[method-assign, assignment]
    try:
        run(main)
    finally:
        AsyncioHerd.give_back = real_give_back  # type: ignore[method-assign]
        table.take = real_take
    assert queued.is_set()
    wait_until(lambda: thread_results == ["thread's own"], "the thread runs its own call")
    assert len(sf) == 0
    assert backend.herds == {}


def test_two_loops_closing_herds_of_one_key_at_once_raise_nothing() -> None:
    """Two loops' herds of one key close in overlapping steps (a thread switch lands between
    a herd's look at the scope's herds and its removal): a follower's cancellation is all
    that it raises."""
    sf = SingleFlight()
    backend: Any = sf._backend
    armed, b_go, b_done = threading.Event(), threading.Event(), threading.Event()

    class SwitchingHerds(dict[Any, Any]):
        def get(self, key: Any, default: Any = None) -> Any:
            found = dict.get(self, key, default)
            if armed.is_set() and threading.current_thread().name == "loop-a":
                armed.clear()
                b_go.set()
                b_done.wait(WAIT)  # loop b's herd is stored and closed meanwhile
            return found

    backend.herds = SwitchingHerds()
    leader = ThreadLeader(sf, "v")
    raised: list[BaseException] = []

    async def follow_and_cancel(first: bool) -> None:
        if not first:
            assert await asyncio.to_thread(b_go.wait, WAIT)
        task = asyncio.create_task(sf.do("k", lambda: "own"))
        loop = asyncio.get_running_loop()
        await wait_until_async(
            lambda: "k" in backend.herds and backend.herds["k"].loop is loop, "a herd here"
        )
        if first:
            armed.set()
        task.cancel()
        try:
            await task
        except BaseException as exc:  # (what it raised is the point)
            raised.append(exc)
        if not first:
            b_done.set()

    a = start_thread(lambda: asyncio.run(follow_and_cancel(True)), "loop-a")
    b = start_thread(lambda: asyncio.run(follow_and_cancel(False)), "loop-b")
    a.result(WAIT)
    b.result(WAIT)
    assert leader.end() == "v"
    assert [type(exc) for exc in raised] == [asyncio.CancelledError] * 2
    assert len(sf) == 0
    assert dict(backend.herds) == {}


@pytest.mark.parametrize("gives_up", [False, True], ids=["outcome", "handed-the-call"])
def test_a_wake_up_lost_in_a_closed_loop_leaves_no_herd(gives_up: bool) -> None:
    """The herd's wake-up is queued on a loop that is not running, which is then closed:
    the herd is gone, and a call it was handed passes on to the thread queued after it."""
    sf = SingleFlight()
    backend: Any = sf._backend
    leader = ThreadLeader(sf, "led", gives_up)
    loop = asyncio.new_event_loop()
    try:
        follower = loop.create_task(sf.do("k", lambda: "never"))
        loop.run_until_complete(wait_followers_async(sf, "k", 1))
        behind = start_thread(lambda: sf.do_sync("k", lambda: "its own"), "behind the herd")
        wait_until(lambda: backend.waiters("k") == 2, "a thread queues behind the herd")
        assert leader.end() == ("gave up" if gives_up else "led")  # its wake-up is queued
    finally:
        loop.close()  # with the wake-up still queued: it is dropped unrun
    follower._log_destroy_pending = False  # type: ignore[attr-defined]  # (it never runs)
    del follower
    gc.collect()
    assert behind.result(WAIT) == ("its own" if gives_up else "led")
    assert backend.herds == {}
    assert len(sf) == 0


def test_herds_leave_no_cycle_for_the_collector() -> None:
    sf = SingleFlight()

    async def main() -> None:
        for i in range(20):
            gate = asyncio.Event()

            async def call(value: int = i, gate: asyncio.Event = gate) -> int:
                await gate.wait()
                return value

            tasks = [asyncio.create_task(sf.do("k", call)) for _ in range(3)]
            await wait_followers_async(sf, "k", 2)
            gate.set()
            assert await asyncio.gather(*tasks) == [i] * 3

    gc.collect()
    gc.disable()
    try:
        run(main)
        alive = [obj for obj in gc.get_objects() if type(obj) is AsyncioHerd]
    finally:
        gc.enable()
    assert alive == []


def test_statistics_name_who_takes_over_before_the_herds_loop_runs_its_wake_up() -> None:
    """A thread leader gives the call up while the herd's loop is busy: the statistics show
    the herd's earliest follower leading and the others following, at once."""
    sf = SingleFlight()
    loop_busy, unblock = threading.Event(), threading.Event()
    leader = ThreadLeader(sf, gives_up=True)

    async def followers() -> list[str]:
        tasks = [asyncio.create_task(sf.do("k", lambda: "own"), name=f"f{i}") for i in range(3)]
        await wait_followers_async(sf, "k", 3)
        loop_busy.set()
        unblock.wait(WAIT)  # the loop is busy: the herd's wake-up waits
        return await asyncio.gather(*tasks)

    loop_thread = start_thread(lambda: asyncio.run(followers()), "loop")
    assert loop_busy.wait(WAIT)
    assert leader.end() == "gave up"
    stats = sf.statistics("k")
    unblock.set()
    assert stats.leader is not None
    assert (stats.leader.runtime, stats.leader.name) == ("asyncio", "f0")
    assert stats.followers == 2
    assert dict(stats.followers_by_runtime) == {"asyncio": 2}
    assert loop_thread.result(WAIT) == ["own"] * 3
    assert len(sf) == 0


def test_statistics_during_a_takeover_count_the_follower_taking_it_once() -> None:
    """A snapshot taken as a herd's follower takes the call over (right after the table
    made it the leader, before the herd has noted it) counts it once: as the leader."""
    sf = SingleFlight()
    backend: Any = sf._backend
    table = backend.table
    seen: list[tuple[str | None, int, int]] = []
    real_take_over = type(table).take_over

    def take_over(self: Any, *args: Any) -> bool:
        taken: bool = real_take_over(self, *args)
        stats = sf.statistics("k")  # (what a thread switch here would let another thread see)
        name = None if stats.leader is None else stats.leader.name
        seen.append((name, stats.followers, backend.waiters("k")))
        return taken

    async def main() -> None:
        gate = Gate()
        leader = gate.start(sf, "leader")
        tasks = [gate.start(sf, f"f{i}", task_name=f"f{i}") for i in range(3)]
        await wait_followers_async(sf, "k", 3)
        type(table).take_over = take_over
        try:
            leader.cancel()
            await wait_until_async(lambda: bool(seen), "a takeover")
        finally:
            type(table).take_over = real_take_over
        gate.gate.set()
        await asyncio.gather(*tasks)

    run(main)
    assert seen == [("f0", 2, 2)]
    assert len(sf) == 0
