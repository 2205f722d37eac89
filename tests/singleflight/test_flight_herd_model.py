"""asyncio callers of one key, driven step by step through random plans (hypothesis).

A plan joins callers (some inside an anyio cancel scope), cancels tasks and scopes, lets
the event loop run a few steps, and ends the running call with a value or an error, in any
order. Nothing is timed: each step is one turn of the loop. The callers that join while a
call runs are its herd (see test_flight_herd.py); a cancelled leader hands the call to the
earliest follower still waiting, which runs its own function.

What must hold, whatever the plan:

- one call at a time, and only the function of the caller that leads it;
- a caller nobody cancelled gets a value or an error, each from a call that ended with it;
- a cancelled caller (its task, or its scope) gets no outcome of a call that ended after it
  was cancelled: anyio's scope and asyncio's cancellation win over a wake-up on its way;
- a caller that ran a call that returned gets that call's value, unless it was cancelled;
- once every task is done, nothing is in flight, queued or herded.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyedlock import SingleFlight

from ..support import LONG_STRESS

pytestmark = pytest.mark.timeout(120)

Action = tuple[str, Any]

JOIN = st.tuples(st.just("join"), st.sampled_from(["plain", "scoped"]))
ACTIONS = st.one_of(
    JOIN,
    JOIN,  # (twice: herds need callers)
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(st.just("scope"), st.integers(0, 9)),
    st.tuples(st.just("step"), st.integers(1, 3)),
    st.tuples(st.just("finish"), st.booleans()),
)


def plans(size: int) -> st.SearchStrategy[list[Action]]:
    """A few callers that start (a leader and its herd), then ``size`` actions at most."""
    opening = st.lists(JOIN, min_size=2, max_size=6).map(lambda joins: [*joins, ("step", 1)])
    return st.tuples(opening, st.lists(ACTIONS, max_size=size)).map(lambda p: p[0] + p[1])


PLANS = plans(30)

#: Turns of the loop a plan may take to end once its actions are done.
DRAIN_STEPS = 500


@dataclass
class Run:
    """What one plan did and saw; ``step`` counts actions and turns of the loop."""

    sf: SingleFlight = field(default_factory=SingleFlight)
    step: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    scopes: dict[int, anyio.CancelScope] = field(default_factory=dict)
    cancelled_at: dict[int, int] = field(default_factory=dict)  # caller -> its first cancel
    running: list[int] = field(default_factory=list)  # the caller whose call runs (one)
    gates: dict[int, asyncio.Future[bool]] = field(default_factory=dict)
    ended: dict[int, tuple[bool, int]] = field(default_factory=dict)  # call -> (ok, step)
    outcomes: dict[int, tuple[str, Any]] = field(default_factory=dict)

    def call_of(self, caller: int) -> Any:
        async def call() -> int:
            assert not self.running, f"call {caller} started while {self.running} runs"
            self.running.append(caller)
            gate = self.gates[caller] = asyncio.get_running_loop().create_future()
            try:
                ok = await gate
            finally:
                self.running.remove(caller)
            if ok:
                return caller
            raise ValueError(caller)

        return call

    async def caller(self, me: int, scoped: bool) -> None:
        sf = self.sf
        try:
            if scoped:
                with anyio.CancelScope() as scope:
                    self.scopes[me] = scope
                    self.outcomes[me] = ("value", await sf.do("k", self.call_of(me)))
                self.outcomes.setdefault(me, ("moved on", None))
            else:
                self.outcomes[me] = ("value", await sf.do("k", self.call_of(me)))
        except ValueError as exc:
            self.outcomes[me] = ("error", exc.args[0])
        except asyncio.CancelledError:
            self.outcomes[me] = ("cancelled", None)
            raise

    def end_call(self, ok: bool) -> None:
        if self.running:
            caller = self.running[0]
            gate = self.gates[caller]
            if not gate.done():
                gate.set_result(ok)
                self.ended[caller] = (ok, self.step)

    async def act(self, action: Action) -> None:
        kind, arg = action
        if kind == "join":
            if len(self.tasks) < 10:
                self.tasks.append(
                    asyncio.create_task(self.caller(len(self.tasks), arg == "scoped"))
                )
        elif kind == "cancel":
            if arg < len(self.tasks) and not self.tasks[arg].done():
                self.tasks[arg].cancel()
                self.cancelled_at.setdefault(arg, self.step)
        elif kind == "scope":
            scope = self.scopes.get(arg)
            if scope is not None and not self.tasks[arg].done():
                scope.cancel()
                self.cancelled_at.setdefault(arg, self.step)
        elif kind == "step":
            for _ in range(arg):
                await asyncio.sleep(0)
                self.step += 1
        else:
            self.end_call(arg)
        self.step += 1

    async def play(self, plan: list[Action]) -> None:
        for action in plan:
            await self.act(action)
        for _ in range(DRAIN_STEPS):
            if all(task.done() for task in self.tasks):
                break
            self.end_call(True)
            await asyncio.sleep(0)
            self.step += 1
        stuck = [i for i, task in enumerate(self.tasks) if not task.done()]
        assert not stuck, f"callers {stuck} never ended ({self.outcomes})"

    def check(self) -> None:
        for me in range(len(self.tasks)):
            kind, got = self.outcomes.get(me, ("never ran", None))
            cancelled = self.cancelled_at.get(me)
            if kind in ("value", "error"):
                assert got in self.ended, f"caller {me} got {kind} {got!r} from no call"
                ok, at = self.ended[got]
                assert ok == (kind == "value"), f"caller {me}: {kind} of call {got}, ok={ok}"
                if cancelled is not None:
                    assert at < cancelled, (
                        f"caller {me}, cancelled at step {cancelled}, got the {kind} of call "
                        f"{got}, which ended at step {at}"
                    )
            elif kind == "moved on":
                assert me in self.scopes, f"caller {me} moved on with no scope"
                assert cancelled is not None, f"caller {me} moved on, never cancelled"
            else:
                assert cancelled is not None, f"caller {me}, never cancelled, ended {kind!r}"
        for caller, (ok, _) in self.ended.items():
            if ok and caller not in self.cancelled_at:
                assert self.outcomes[caller] == ("value", caller), (
                    f"caller {caller} ran a call that returned, and got {self.outcomes[caller]}"
                )
        sf = self.sf
        assert len(sf) == 0
        assert sf._backend.herds == {}  # type: ignore[attr-defined]
        assert len(sf._backend.table) == 0  # type: ignore[attr-defined]


def play(plan: list[Action]) -> None:
    run = Run()

    async def main() -> None:
        async with asyncio.timeout(5):
            await run.play(plan)

    asyncio.run(main())
    run.check()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PLANS)
def test_herd_plans(plan: list[Action]) -> None:
    play(plan)


@pytest.mark.slow
@pytest.mark.timeout(900)
@settings(
    max_examples=3000 if LONG_STRESS else 300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plans(80))
def test_herd_plans_long(plan: list[Action]) -> None:
    play(plan)
