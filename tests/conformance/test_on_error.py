"""on_error: "stop" aborts every caller queued when the work fails; "continue" passes the key on."""

from __future__ import annotations

from functools import partial

import anyio
import pytest

from keyedlock import Aborted, KeyedLock, KeyedLockError

from ..drivers import RUNTIMES, VIAS, Agent, Driver, Via
from ..support import WAIT, TaskCancelled, wait_waiters, wait_waiters_async
from .scopes import Scope

RUN_VIAS: tuple[Via, ...] = ("run", "guard")


class Boom(Exception):
    """The failure of the work run under the key."""


class Halt(BaseException):
    """Not an Exception: like KeyboardInterrupt, it is not the work's failure."""


def same_failure(scope: Scope, got: BaseException | None, cause: BaseException) -> bool:
    """``got`` is the holder's ``cause``: the object itself, or for a scope whose waiters live
    in other processes, a copy of it (same type and arguments)."""
    if not scope.remote:
        return got is cause
    return type(got) is type(cause) and got.args == cause.args


def assert_aborted_by(scope: Scope, agent: Agent, cause: BaseException) -> None:
    with pytest.raises(Aborted) as info:
        agent.result()
    assert same_failure(scope, info.value.__cause__, cause)
    assert not agent.entered.is_set()


def test_aborted_is_a_keyed_lock_error() -> None:
    assert issubclass(Aborted, KeyedLockError)


@pytest.mark.parametrize("via", RUN_VIAS)
@pytest.mark.parametrize("holder_runtime", RUNTIMES)
def test_stop_aborts_every_queued_waiter_of_every_runtime(
    drivers: dict[str, Driver], scope: Scope, lock: KeyedLock, holder_runtime: str, via: Via
) -> None:
    boom = Boom("the work failed")
    holder = drivers[holder_runtime].hold(lock, "k", via=via, on_error="stop", fail=boom)
    holder.wait_entered()
    waiters = []
    for runtime in RUNTIMES:
        for waiter_via in VIAS:
            waiters.append(drivers[runtime].hold(lock, "k", via=waiter_via))
            wait_waiters(lock, "k", len(waiters))
    holder.leave()
    with pytest.raises(Boom) as info:
        holder.result()
    assert info.value is boom  # the holder gets its own exception, unchanged
    for waiter in waiters:
        assert_aborted_by(scope, waiter, boom)
    assert len(lock) == 0

    # Callers arriving afterwards start fresh, even with on_error="stop".
    for runtime in RUNTIMES:
        later = drivers[runtime].hold(lock, "k", via=via, on_error="stop")
        later.leave()
        assert later.result() == "left"


def test_stop_aborts_only_the_callers_queued_at_that_moment(
    drivers: dict[str, Driver], scope: Scope, lock: KeyedLock
) -> None:
    boom = Boom()
    thread, asyncio_, trio_ = (drivers[name] for name in RUNTIMES)
    holder = thread.hold(lock, "k", via="run", on_error="stop", fail=boom)
    holder.wait_entered()
    gave_up = asyncio_.hold(lock, "k", timeout=0.01)
    with pytest.raises(TimeoutError):
        gave_up.result()
    queued = trio_.hold(lock, "k")
    wait_waiters(lock, "k", 1)
    holder.leave()
    with pytest.raises(Boom):
        holder.result()
    assert_aborted_by(scope, queued, boom)
    after = asyncio_.hold(lock, "k", timeout=0)
    after.leave()
    assert after.result() == "left"


@pytest.mark.parametrize("via", RUN_VIAS)
def test_stop_without_waiters_frees_the_key(driver: Driver, lock: KeyedLock, via: Via) -> None:
    holder = driver.hold(lock, "k", via=via, on_error="stop", fail=Boom())
    holder.leave()
    with pytest.raises(Boom):
        holder.result()
    assert len(lock) == 0


@pytest.mark.parametrize("via", RUN_VIAS)
def test_stop_after_success_hands_the_key_on(driver: Driver, lock: KeyedLock, via: Via) -> None:
    order: list[int] = []
    holder = driver.hold(lock, "k", via=via, on_error="stop")
    holder.wait_entered()
    waiters = []
    for i in range(3):
        waiters.append(driver.hold(lock, "k", via=via, on_enter=partial(order.append, i)))
        waiters[-1].leave()
        wait_waiters(lock, "k", i + 1)
    holder.leave()
    assert holder.result() == "left"
    for waiter in waiters:
        assert waiter.result() == "left"
    assert order == [0, 1, 2]


@pytest.mark.parametrize("via", VIAS)
def test_continue_passes_the_key_on_after_a_failure(
    driver: Driver, lock: KeyedLock, via: Via
) -> None:
    order: list[int] = []
    boom = Boom()
    holder = driver.hold(lock, "k", via=via, fail=boom)  # on_error="continue" is the default
    holder.wait_entered()
    waiters = []
    for i in range(3):
        waiters.append(driver.hold(lock, "k", via=via, on_enter=partial(order.append, i)))
        waiters[-1].leave()
        wait_waiters(lock, "k", i + 1)
    holder.leave()
    with pytest.raises(Boom) as info:
        holder.result()
    assert info.value is boom
    for waiter in waiters:
        assert waiter.result() == "left"
    assert order == [0, 1, 2]


@pytest.mark.parametrize("via", RUN_VIAS)
def test_explicit_continue(driver: Driver, lock: KeyedLock, via: Via) -> None:
    holder = driver.hold(lock, "k", via=via, on_error="continue", fail=Boom())
    holder.wait_entered()
    waiter = driver.hold(lock, "k", via=via)
    wait_waiters(lock, "k", 1)
    waiter.leave()
    holder.leave()
    with pytest.raises(Boom):
        holder.result()
    assert waiter.result() == "left"


@pytest.mark.parametrize("via", RUN_VIAS)
def test_a_base_exception_does_not_stop(driver: Driver, lock: KeyedLock, via: Via) -> None:
    holder = driver.hold(lock, "k", via=via, on_error="stop", fail=Halt())
    holder.wait_entered()
    waiter = driver.hold(lock, "k", via=via)
    wait_waiters(lock, "k", 1)
    waiter.leave()
    holder.leave()
    with pytest.raises(Halt):
        holder.result()
    assert waiter.result() == "left"


@pytest.mark.parametrize("via", RUN_VIAS)
def test_a_cancelled_holder_does_not_stop(task_driver: Driver, lock: KeyedLock, via: Via) -> None:
    holder = task_driver.hold(lock, "k", via=via, on_error="stop")
    holder.wait_entered()
    waiter = task_driver.hold(lock, "k", via=via)
    wait_waiters(lock, "k", 1)
    waiter.leave()
    holder.cancel()
    with pytest.raises(TaskCancelled):
        holder.result()
    assert waiter.result() == "left"


@pytest.mark.anyio
@pytest.mark.parametrize("via", RUN_VIAS)
async def test_stop_inside_one_event_loop(scope: Scope, lock: KeyedLock, via: Via) -> None:
    boom = Boom()
    inside = anyio.Event()
    release = anyio.Event()
    outcomes: list[BaseException | None] = []

    async def failing() -> None:
        inside.set()
        await release.wait()
        raise boom

    async def holder() -> None:
        guarded = lock.guard("k", on_error="stop")(failing)
        with pytest.raises(Boom):
            await (lock.run("k", failing, on_error="stop") if via == "run" else guarded())

    async def waiter() -> None:
        try:
            async with lock("k"):
                outcomes.append(None)
        except Aborted as exc:
            outcomes.append(exc.__cause__)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await inside.wait()
            for i in range(3):
                tg.start_soon(waiter)
                await wait_waiters_async(lock, "k", i + 1)
            release.set()
    assert len(outcomes) == 3
    assert all(same_failure(scope, outcome, boom) for outcome in outcomes)
