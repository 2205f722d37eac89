"""Offload: a blocking call in a helper thread, awaited cancellably; exactly one party (the
claimant or ``dispose``) ends up with its outcome, whatever the timing. With a pool, calls
beyond its cap queue in order, and a queued call whose claimant gives up never runs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
import trio
import trio.testing

from keyedlock._runtime import Finished, Offload, OffloadPool

from ..support import WAIT, wait_until


class Call:
    """A blocking call that returns ``value`` (or raises ``error``) once ``go`` is set."""

    def __init__(self, value: str = "value", error: BaseException | None = None) -> None:
        self.go = threading.Event()
        self.value = value
        self.error = error

    def __call__(self) -> str:
        assert self.go.wait(WAIT)
        if self.error is not None:
            raise self.error
        return self.value


class Disposal:
    """Records what ``dispose`` received, and in which thread."""

    def __init__(self) -> None:
        self.outcomes: list[Finished[str]] = []
        self.threads: list[str] = []
        self.called = threading.Event()

    def __call__(self, outcome: Finished[str]) -> None:
        self.outcomes.append(outcome)
        self.threads.append(threading.current_thread().name)
        self.called.set()


def _job(call: Call, disposal: Disposal) -> Offload[str]:
    job = Offload(call, disposal, name="offload-test")
    assert job.claim()
    job.start()
    return job


def test_wait_returns_the_outcome() -> None:
    call, disposal = Call(), Disposal()
    job = _job(call, disposal)
    call.go.set()
    outcome = job.wait(WAIT)
    assert outcome is not None
    assert outcome.unwrap() == "value"
    assert job.done
    assert not disposal.outcomes
    assert not job.claim()  # finished: nothing left to claim


def test_error_is_delivered() -> None:
    call, disposal = Call(error=KeyError("x")), Disposal()
    job = _job(call, disposal)
    call.go.set()
    outcome = job.wait(WAIT)
    assert outcome is not None
    with pytest.raises(KeyError):
        outcome.unwrap()
    assert "error=" in repr(outcome)


def test_timeout_detaches_and_late_outcome_is_disposed_in_the_helper() -> None:
    call, disposal = Call(), Disposal()
    job = _job(call, disposal)
    assert job.wait(0.01) is None
    call.go.set()
    assert disposal.called.wait(WAIT)
    assert [o.unwrap() for o in disposal.outcomes] == ["value"]
    assert disposal.threads == ["offload-test"]


def test_a_later_claimant_adopts_a_detached_call() -> None:
    call, disposal = Call(), Disposal()
    job = _job(call, disposal)
    assert job.wait(0.01) is None
    assert job.claim()
    assert not job.claim()  # one claimant at a time
    call.go.set()
    outcome = job.wait(WAIT)
    assert outcome is not None
    assert outcome.value == "value"
    assert not disposal.outcomes


def test_asyncio_cancel_while_running_disposes_later() -> None:
    call, disposal = Call(), Disposal()

    async def main() -> None:
        job = _job(call, disposal)
        task = asyncio.create_task(job.wait_async(None))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    call.go.set()
    assert disposal.called.wait(WAIT)
    assert disposal.threads == ["offload-test"]


def test_asyncio_cancel_racing_the_outcome_disposes_it_once() -> None:
    """The outcome arrives, then the task is cancelled before it resumes."""
    call, disposal = Call(), Disposal()

    async def main() -> None:
        job = _job(call, disposal)
        task = asyncio.create_task(job.wait_async(None))
        await asyncio.sleep(0)
        call.go.set()
        wait_until(lambda: job.done, "the call finishes")  # the loop does not run meanwhile
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert [o.value for o in disposal.outcomes] == ["value"]
    assert disposal.threads == [threading.current_thread().name]


def test_asyncio_timeout() -> None:
    call, disposal = Call(), Disposal()

    async def main() -> Finished[str] | None:
        return await _job(call, disposal).wait_async(0.01)

    assert asyncio.run(main()) is None
    call.go.set()
    assert disposal.called.wait(WAIT)


def test_trio_cancel_while_running_disposes_later() -> None:
    call, disposal = Call(), Disposal()

    async def main() -> None:
        job = _job(call, disposal)
        with trio.move_on_after(0.01):
            await job.wait_async(None)
            pytest.fail("not cancelled")

    trio.run(main)
    call.go.set()
    assert disposal.called.wait(WAIT)
    assert disposal.threads == ["offload-test"]


def test_trio_cancel_racing_the_outcome_returns_it() -> None:
    """As trio's own primitives: an outcome that won the race is returned, then the
    cancellation is delivered at the next checkpoint."""
    call, disposal = Call(), Disposal()
    got: list[Finished[str] | None] = []

    async def main() -> None:
        job = _job(call, disposal)
        cancelled = False

        async def waiter(scope: trio.CancelScope) -> None:
            nonlocal cancelled
            with scope:
                got.append(await job.wait_async(None))
                await trio.lowlevel.checkpoint()
            cancelled = scope.cancelled_caught

        scope = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter, scope)
            await trio.testing.wait_all_tasks_blocked()
            call.go.set()
            wait_until(lambda: job.done, "the call finishes")  # the run does not go on meanwhile
            scope.cancel()
        assert cancelled

    trio.run(main)
    assert len(got) == 1
    assert got[0] is not None
    assert got[0].value == "value"
    assert not disposal.outcomes


def test_trio_timeout() -> None:
    call, disposal = Call(), Disposal()

    async def main() -> Finished[str] | None:
        return await _job(call, disposal).wait_async(0.01)

    assert trio.run(main) is None
    call.go.set()
    assert disposal.called.wait(WAIT)


def test_claimant_whose_loop_closed_is_disposed_for() -> None:
    call, disposal = Call(), Disposal()
    loop = asyncio.new_event_loop()
    job = _job(call, disposal)
    try:
        task = loop.create_task(job.wait_async(None))
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    call.go.set()
    assert disposal.called.wait(WAIT)
    assert disposal.threads == ["offload-test"]
    task.get_coro().close()
    assert len(disposal.outcomes) == 1


def test_wait_async_needs_a_task() -> None:
    job: Offload[None] = Offload(lambda: None, lambda outcome: None)
    coro = job.wait_async(None)
    with pytest.raises(RuntimeError, match="asyncio task or trio task"):
        coro.send(None)


# -- a pool: a cap on helper threads ------------------------------------------------------------


class Recorder:
    """A call that records that it ran (in order, with its thread), then waits for ``go``."""

    def __init__(self, name: str, ran: list[tuple[str, str]]) -> None:
        self.name = name
        self.ran = ran
        self.go = threading.Event()
        self.started = threading.Event()

    def __call__(self) -> str:
        self.ran.append((self.name, threading.current_thread().name))
        self.started.set()
        assert self.go.wait(WAIT)
        return self.name


class Withdrawals:
    def __init__(self) -> None:
        self.names: list[str] = []

    def of(self, name: str) -> Callable[[], None]:
        return lambda: self.names.append(name)


def _pooled(
    pool: OffloadPool, call: Recorder, disposal: Disposal, withdrawals: Withdrawals
) -> Offload[str]:
    job = Offload(call, disposal, pool=pool, withdrawn=withdrawals.of(call.name))
    assert job.claim()
    job.start()
    return job


def test_pool_runs_queued_calls_in_order_in_the_freed_thread() -> None:
    ran: list[tuple[str, str]] = []
    disposal, withdrawals = Disposal(), Withdrawals()
    pool = OffloadPool(1, "pool-test")
    calls = [Recorder(name, ran) for name in "abcd"]
    jobs = [_pooled(pool, call, disposal, withdrawals) for call in calls]
    assert calls[0].started.wait(WAIT)
    assert (pool.threads, pool.queued) == (1, 3)
    assert [job.queued for job in jobs] == [False, True, True, True]
    for call, job in zip(calls, jobs, strict=True):
        call.go.set()
        outcome = job.wait(WAIT)
        assert outcome is not None
        assert outcome.unwrap() == call.name
    assert [name for name, _ in ran] == ["a", "b", "c", "d"]
    assert {thread for _, thread in ran} == {"pool-test"}  # one thread ran them all
    wait_until(lambda: pool.threads == 0, "the thread ends with the queue empty")
    assert not disposal.outcomes
    assert not withdrawals.names


def test_pool_rejects_a_cap_below_one() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        OffloadPool(0, "pool-test")


def test_a_queued_call_whose_claimant_times_out_is_withdrawn() -> None:
    ran: list[tuple[str, str]] = []
    disposal, withdrawals = Disposal(), Withdrawals()
    pool = OffloadPool(1, "pool-test")
    first, second, third = (Recorder(name, ran) for name in "abc")
    job_a = _pooled(pool, first, disposal, withdrawals)
    job_b = _pooled(pool, second, disposal, withdrawals)
    job_c = _pooled(pool, third, disposal, withdrawals)
    assert job_b.wait(0.01) is None  # timed out while queued
    assert withdrawals.names == ["b"]
    assert job_b.done
    assert not job_b.queued
    assert not job_b.claim()  # withdrawn: nothing to adopt
    assert pool.queued == 1
    first.go.set()
    third.go.set()
    assert job_a.wait(WAIT) is not None
    assert job_c.wait(WAIT) is not None
    assert [name for name, _ in ran] == ["a", "c"]  # b never ran
    assert not disposal.outcomes


def test_let_go_of_a_queued_call_withdraws_it() -> None:
    ran: list[tuple[str, str]] = []
    disposal, withdrawals = Disposal(), Withdrawals()
    pool = OffloadPool(1, "pool-test")
    first, second = Recorder("a", ran), Recorder("b", ran)
    job_a = _pooled(pool, first, disposal, withdrawals)
    job_b = _pooled(pool, second, disposal, withdrawals)
    job_b.let_go()
    assert withdrawals.names == ["b"]
    assert pool.queued == 0
    first.go.set()
    assert job_a.wait(WAIT) is not None
    wait_until(lambda: pool.threads == 0, "the thread ends")
    assert [name for name, _ in ran] == ["a"]


def test_a_running_call_is_not_withdrawn() -> None:
    """A claimant that gives up after the call started detaches as without a pool."""
    ran: list[tuple[str, str]] = []
    disposal, withdrawals = Disposal(), Withdrawals()
    pool = OffloadPool(1, "pool-test")
    call = Recorder("a", ran)
    job = _pooled(pool, call, disposal, withdrawals)
    assert call.started.wait(WAIT)
    assert job.wait(0.01) is None
    assert not withdrawals.names
    call.go.set()
    assert disposal.called.wait(WAIT)
    assert [o.unwrap() for o in disposal.outcomes] == ["a"]


def test_asyncio_cancel_of_a_queued_call_withdraws_it() -> None:
    ran: list[tuple[str, str]] = []
    disposal, withdrawals = Disposal(), Withdrawals()
    pool = OffloadPool(1, "pool-test")
    first, second = Recorder("a", ran), Recorder("b", ran)

    job_a = _pooled(pool, first, disposal, withdrawals)

    async def main() -> None:
        job = _pooled(pool, second, disposal, withdrawals)
        task = asyncio.create_task(job.wait_async(None))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert withdrawals.names == ["b"]
        assert pool.queued == 0

    asyncio.run(main())
    first.go.set()
    assert job_a.wait(WAIT) is not None
    wait_until(lambda: pool.threads == 0, "the thread ends")
    assert [name for name, _ in ran] == ["a"]


def test_trio_cancel_of_a_queued_call_withdraws_it() -> None:
    ran: list[tuple[str, str]] = []
    disposal, withdrawals = Disposal(), Withdrawals()
    pool = OffloadPool(1, "pool-test")
    first, second = Recorder("a", ran), Recorder("b", ran)

    job_a = _pooled(pool, first, disposal, withdrawals)

    async def main() -> None:
        job = _pooled(pool, second, disposal, withdrawals)
        with trio.move_on_after(0.01):
            await job.wait_async(None)
            pytest.fail("not cancelled")
        assert withdrawals.names == ["b"]
        assert pool.queued == 0

    trio.run(main)
    first.go.set()
    assert job_a.wait(WAIT) is not None
    wait_until(lambda: pool.threads == 0, "the thread ends")
    assert [name for name, _ in ran] == ["a"]
