"""Offload: a blocking call in a helper thread, awaited cancellably; exactly one party (the
claimant or ``dispose``) ends up with its outcome, whatever the timing."""

from __future__ import annotations

import asyncio
import threading

import pytest
import trio
import trio.testing

from keyedlock._runtime import Finished, Offload

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
