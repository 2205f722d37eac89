"""Ctrl-C at every point: the scenarios and the sweep behind ``test_interrupt_sweep.py``.

Each scenario runs one operation of a lock or a single-flight group in the main thread (a
``with``, an ``acquire``, a wait, a hand-off, an abort, a shared call; under threads, asyncio and
trio), with helper threads or tasks around it that make the key busy or wait for it. The sweep
runs it once to count the points where CPython can deliver a signal inside keyedlock's code
(see :mod:`.injection`), then once per point with SIGINT delivered there, and after every run
checks that:

- every helper ended (nobody waits forever for a key or a call that nobody will give up),
- the table's guard is free, no key is held and no call is in flight,
- the key can be taken again at once (for the file scope: also by another open file
  description, so the kernel lock is gone too),
- keyedlock's helper threads ended.

Run as ``python -m tests.torture.interrupt_sweep KIND SCENARIO SCOPE SAMPLE SEED``: one
scenario's sweep (or, for SCENARIO ``all``, every scenario of KIND, one after the other) in a
process of its own (a signal delivered from a trace function leaves CPython 3.11's interpreter
state unfit for much else afterwards), printing a JSON list of reports, one per scenario.
SAMPLE is how many points to try per scenario (0: all of them). SCOPE is ``process``,
``file`` or ``manager`` (see :mod:`.manager_sweep`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from keyedlock import Aborted, FileKeyedLock, KeyedLock, SingleFlight
from keyedlock._core import guard_is_owned

from ..support import ThreadHandle, start_thread
from .injection import Injector, Point

#: Bound on every wait of a sweep run: far above what any step takes (milliseconds, traced),
#: so reaching it means something waits forever. Shorter than WAIT, as a stuck run costs it.
BOUND = 3.0

Lock = KeyedLock | FileKeyedLock
KEY = "k"


class Stuck(AssertionError):
    """A helper or the operation itself never finished: something waits forever."""


def is_interrupt(exc: BaseException) -> bool:
    """True for KeyboardInterrupt, or a group of it (trio) with cancellations."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(
            is_interrupt(e) or isinstance(e, (trio.Cancelled, asyncio.CancelledError))
            for e in exc.exceptions
        )
    return False


# -- helpers around the operation -------------------------------------------------------------


def _poll_until(predicate: Callable[[], bool], stop: threading.Event) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate() and not stop.is_set():
        if time.monotonic() > deadline:
            raise Stuck("a helper waited too long for the main caller")
        time.sleep(0.0002)


class Holder:
    """A thread that holds the key until the main caller queues for it (or the scenario ends)."""

    def __init__(self, lock: Lock, *, until_queued: bool = True) -> None:
        self.held = threading.Event()
        self.done = threading.Event()

        def main() -> None:
            assert lock.acquire(KEY, timeout=BOUND)
            self.held.set()
            try:
                if until_queued:
                    _poll_until(lambda: lock.waiters(KEY) > 0, self.done)
                else:
                    if not self.done.wait(BOUND):
                        raise Stuck("the scenario never ended")
            finally:
                lock.release(KEY)

        self.handle = start_thread(main, "holder")
        if not self.held.wait(BOUND):
            self.handle.result(0)

    def finish(self) -> None:
        self.done.set()
        self.handle.result(BOUND)


def start_waiter(lock: Lock) -> ThreadHandle[str]:
    """A thread that waits for the key (it may be aborted: ``on_error="stop"``)."""

    def main() -> str:
        try:
            with lock(KEY, timeout=BOUND):
                return "acquired"
        except Aborted:
            return "aborted"

    return start_thread(main, "waiter")


def wait_queued(lock: Lock, count: int) -> None:
    _poll_until(lambda: lock.waiters(KEY) >= count, threading.Event())


# -- scenarios: locks, threads ----------------------------------------------------------------


def thread_with(lock: Lock, inject: Injector) -> None:
    with inject, lock(KEY):
        pass


def thread_acquire_release(lock: Lock, inject: Injector) -> None:
    with inject:
        if lock.acquire(KEY):
            lock.release(KEY)


def thread_with_waits(lock: Lock, inject: Injector) -> None:
    holder = Holder(lock)
    try:
        with inject, lock(KEY, timeout=BOUND):
            pass
    finally:
        holder.finish()


def thread_acquire_times_out(lock: Lock, inject: Injector) -> None:
    holder = Holder(lock, until_queued=False)
    try:
        with inject:
            assert not lock.acquire(KEY, timeout=0.005)
    finally:
        holder.finish()


def thread_with_hands_off(lock: Lock, inject: Injector) -> None:
    waiters: list[ThreadHandle[str]] = []
    try:
        with inject, lock(KEY), inject.paused():
            waiters.append(start_waiter(lock))
            wait_queued(lock, 1)
    finally:
        for waiter in waiters:
            assert waiter.result(BOUND) == "acquired"


def thread_run_stop_aborts(lock: Lock, inject: Injector) -> None:
    waiters: list[ThreadHandle[str]] = []

    def fails() -> None:
        with inject.paused():
            waiters.extend(start_waiter(lock) for _ in range(2))
            wait_queued(lock, 2)
        raise LookupError("the work failed")

    try:
        with inject:
            try:
                lock.run_sync(KEY, fails, on_error="stop")
            except LookupError:
                pass
            else:
                raise AssertionError("run_sync did not raise the function's error")
    finally:
        for waiter in waiters:
            assert waiter.result(BOUND) in ("aborted", "acquired")


# -- scenarios: locks, asyncio and trio in the main thread ------------------------------------


def run_asyncio(main: Callable[[], Awaitable[None]], inject: Injector) -> None:
    """Run ``main()`` on a new loop in this thread; then let every task left finish (bounded)."""
    loop = asyncio.new_event_loop()

    async def wrapped() -> None:
        await main()

    try:
        try:
            with inject:
                loop.run_until_complete(wrapped())
        finally:
            settle_asyncio(loop)
    finally:
        loop.close()


def settle_asyncio(loop: asyncio.AbstractEventLoop) -> None:
    """Let the tasks an interrupt left behind finish (bounded); re-raise what they raised."""
    pending = asyncio.all_tasks(loop)
    if pending:
        _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=BOUND))
        for task in stuck:
            task.cancel()
        if stuck:
            loop.run_until_complete(asyncio.wait(stuck, timeout=BOUND))
            raise Stuck(f"{len(stuck)} task(s) never finished")
        for task in pending:
            exc = None if task.cancelled() else task.exception()
            if exc is not None and not is_interrupt(exc):
                raise exc
    loop.run_until_complete(loop.shutdown_default_executor())


def run_trio(main: Callable[[], Awaitable[None]], inject: Injector) -> None:
    async def wrapped() -> None:
        await main()

    with inject:
        trio.run(wrapped)


Runner = Callable[[Callable[[], Awaitable[None]], Injector], None]
RUNNERS: dict[str, Runner] = {"asyncio": run_asyncio, "trio": run_trio}


async def sleep0(runtime: str) -> None:
    if runtime == "asyncio":
        await asyncio.sleep(0.0002)
    else:
        await trio.sleep(0.0002)


async def until(predicate: Callable[[], bool], runtime: str) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        if time.monotonic() > deadline:
            raise Stuck("a task waited too long")
        await sleep0(runtime)


class Tasks:
    """Start tasks next to the main one, in asyncio or trio (a nursery given by ``run``)."""

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self.nursery: trio.Nursery | None = None
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, fn: Callable[[], Awaitable[Any]]) -> None:
        async def body() -> None:
            await fn()

        if self.runtime == "asyncio":
            self.tasks.append(asyncio.get_running_loop().create_task(body()))
        else:
            assert self.nursery is not None
            self.nursery.start_soon(body)

    async def run(self, main: Callable[[], Awaitable[None]]) -> None:
        if self.runtime == "asyncio":
            await main()
        else:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await main()


def async_with(runtime: str) -> Callable[[Lock, Injector], None]:
    def scenario(lock: Lock, inject: Injector) -> None:
        async def main() -> None:
            async with lock(KEY):
                pass

        RUNNERS[runtime](main, inject)

    return scenario


def async_with_waits_for_thread(runtime: str) -> Callable[[Lock, Injector], None]:
    def scenario(lock: Lock, inject: Injector) -> None:
        async def main() -> None:
            async with lock(KEY, timeout=BOUND):
                pass

        holder = Holder(lock)
        try:
            RUNNERS[runtime](main, inject)
        finally:
            holder.finish()

    return scenario


def async_with_waits_for_task(runtime: str) -> Callable[[Lock, Injector], None]:
    def scenario(lock: Lock, inject: Injector) -> None:
        tasks = Tasks(runtime)

        async def holder() -> None:
            async with lock(KEY):
                await until(lambda: lock.waiters(KEY) > 0 or done, runtime)

        done = False

        async def main() -> None:
            nonlocal done
            with inject.paused():
                tasks.start(holder)
                await until(lambda: lock.locked(KEY), runtime)
            try:
                async with lock(KEY, timeout=BOUND):
                    pass
            finally:
                done = True

        RUNNERS[runtime](lambda: tasks.run(main), inject)

    return scenario


def async_with_hands_off(runtime: str, to: str) -> Callable[[Lock, Injector], None]:
    def scenario(lock: Lock, inject: Injector) -> None:
        tasks = Tasks(runtime)
        threads: list[ThreadHandle[str]] = []
        got: list[str] = []

        async def waiter() -> None:
            async with lock(KEY, timeout=BOUND):
                got.append("acquired")

        async def main() -> None:
            async with lock(KEY):
                with inject.paused():
                    if to == "thread":
                        threads.append(start_waiter(lock))
                    else:
                        tasks.start(waiter)
                    await until(lambda: lock.waiters(KEY) > 0, runtime)

        try:
            RUNNERS[runtime](lambda: tasks.run(main), inject)
        finally:
            got.extend(handle.result(BOUND) for handle in threads)
        assert got == ["acquired"]

    return scenario


def async_times_out(runtime: str) -> Callable[[Lock, Injector], None]:
    def scenario(lock: Lock, inject: Injector) -> None:
        async def main() -> None:
            assert not await lock.acquire_async(KEY, timeout=0.005)

        holder = Holder(lock, until_queued=False)
        try:
            RUNNERS[runtime](main, inject)
        finally:
            holder.finish()

    return scenario


def async_cancelled_while_waiting(runtime: str) -> Callable[[Lock, Injector], None]:
    """The main task waits for the key; a thread cancels it once it is queued."""

    def scenario(lock: Lock, inject: Injector) -> None:
        holder = Holder(lock, until_queued=False)

        async def main_asyncio() -> None:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task()
            assert task is not None

            def cancel_when_queued() -> None:
                _poll_until(lambda: lock.waiters(KEY) > 0, holder.done)
                loop.call_soon_threadsafe(task.cancel)

            canceller = start_thread(cancel_when_queued, "canceller")
            try:
                try:
                    async with lock(KEY):
                        pass
                except asyncio.CancelledError:
                    pass
                else:
                    raise AssertionError("the waiting task was not cancelled")
            finally:
                holder.done.set()
                canceller.result(BOUND)

        async def main_trio() -> None:
            token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:

                def cancel_when_queued() -> None:
                    _poll_until(lambda: lock.waiters(KEY) > 0, holder.done)
                    token.run_sync_soon(scope.cancel)

                canceller = start_thread(cancel_when_queued, "canceller")
                try:
                    async with lock(KEY):
                        pass
                finally:
                    holder.done.set()
                    canceller.result(BOUND)

        try:
            RUNNERS[runtime](main_asyncio if runtime == "asyncio" else main_trio, inject)
        finally:
            holder.finish()

    return scenario


LOCK_SCENARIOS: dict[str, Callable[[Lock, Injector], None]] = {
    "thread-with": thread_with,
    "thread-acquire-release": thread_acquire_release,
    "thread-with-waits": thread_with_waits,
    "thread-acquire-times-out": thread_acquire_times_out,
    "thread-with-hands-off": thread_with_hands_off,
    "thread-run-stop-aborts": thread_run_stop_aborts,
}
for _rt in ("asyncio", "trio"):
    LOCK_SCENARIOS.update(
        {
            f"{_rt}-with": async_with(_rt),
            f"{_rt}-with-waits-for-thread": async_with_waits_for_thread(_rt),
            f"{_rt}-with-waits-for-task": async_with_waits_for_task(_rt),
            f"{_rt}-with-hands-off-to-task": async_with_hands_off(_rt, "task"),
            f"{_rt}-with-hands-off-to-thread": async_with_hands_off(_rt, "thread"),
            f"{_rt}-acquire-times-out": async_times_out(_rt),
            f"{_rt}-cancelled-while-waiting": async_cancelled_while_waiting(_rt),
        }
    )


# -- checks -----------------------------------------------------------------------------------


def table_of(subject: Any) -> Any:
    """The local table of a lock or a single-flight group."""
    backend = getattr(subject, "_backend", None)
    return backend.table if backend is not None else subject._table


def keyedlock_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("keyedlock-")]


def wait_helper_threads_end() -> None:
    deadline = time.monotonic() + BOUND
    while keyedlock_threads():
        if time.monotonic() > deadline:
            raise Stuck(f"helper threads still running: {keyedlock_threads()}")
        time.sleep(0.001)


def check_lock_clean(lock: Lock, path: str | None) -> None:
    table = table_of(lock)
    assert not guard_is_owned(table._guard), "the guard is still held by this thread"

    def take_guard() -> bool:
        if not table._guard.acquire(timeout=BOUND):
            return False
        table._guard.release()
        return True

    assert start_thread(take_guard, "guard-check").result(BOUND), (
        "the guard is held by another thread"
    )
    wait_helper_threads_end()
    assert len(lock) == 0, f"keys left held: {lock!r}"
    if path is not None:  # (first: taking the key through the lock would unlock its byte)
        other = FileKeyedLock(path)
        assert other.acquire(KEY, timeout=0), "the key's byte is still locked in the kernel"
        other.release(KEY)
    assert start_thread(lambda: lock.acquire(KEY, timeout=0), "take-again").result(BOUND), (
        "the key cannot be taken again"
    )
    lock.release(KEY)
    assert len(lock) == 0


# -- the sweep --------------------------------------------------------------------------------


@dataclass
class Outcome:
    points: int
    tried: int
    #: How many of the tried runs were interrupted (a point the run did not reach is not).
    fired: int
    failures: list[tuple[Point | None, BaseException]]
    #: With a second signal: how many runs got it (their recovery reached its point).
    again: int = 0


#: With a second signal, the points after the first at which it is tried: the first ones of
#: the recovery (a hand-off's or a conclusion's is a few dozen).
RECOVERY_POINTS = 40


def sweep(
    run_once: Callable[[Injector], None], label: str, sample: int, seed: int, twice: bool = False
) -> Outcome:
    """Count the points of ``run_once``, then run it with SIGINT at (a sample of) them;
    ``twice``: with a second SIGINT at one of the RECOVERY_POINTS points after the first.

    A first run warms up: code that runs once per process (the trio adapter, imported and
    protected on first use) must not count as points the runs after it never reach.
    """
    run_once(Injector(None))
    counting = Injector(None)
    run_once(counting)
    points = counting.seen
    seconds: list[int | None] = list(range(1, RECOVERY_POINTS + 1)) if twice else [None]
    targets = [(first, then) for first in range(points) for then in seconds]
    if sample and len(targets) > sample:
        targets = sorted(random.Random(f"{seed}-{label}").sample(targets, sample), key=str)
    failures: list[tuple[Point | None, BaseException]] = []
    fired = again = 0
    for target, then in targets:
        inject = Injector(target, then)
        try:
            run_once(inject)
        except BaseException as exc:
            if not is_interrupt(exc):
                where = inject.fired if inject.again is None else _both(inject)
                failures.append((where, exc))
        fired += inject.fired is not None
        again += inject.again is not None
    return Outcome(points, len(targets), fired, failures, again)


def _both(inject: Injector) -> Point:
    """The point of a run's second signal, named with its first."""
    assert inject.fired is not None
    assert inject.again is not None
    first, second = inject.fired, inject.again
    return Point(first.index, f"{first.function}, then {second}", first.filename, first.line)


# -- single-flight ----------------------------------------------------------------------------


def flight_waiters(sf: SingleFlight) -> int:
    """How many callers wait for the call in flight for KEY (in every process, for the
    manager)."""
    count: int = sf._backend.waiters(KEY)
    return count


def start_follower(sf: SingleFlight) -> ThreadHandle[object]:
    """A thread joining the call for KEY (it may take over and run its own function)."""
    return start_thread(lambda: sf.do_sync(KEY, lambda: "own"), "follower")


def flight_thread_alone(sf: SingleFlight, inject: Injector) -> None:
    with inject:
        assert sf.do_sync(KEY, lambda: "led") == "led"


def flight_thread_leads(fails: bool) -> Callable[[SingleFlight, Injector], None]:
    def scenario(sf: SingleFlight, inject: Injector) -> None:
        followers: list[ThreadHandle[object]] = []

        def call() -> str:
            with inject.paused():
                followers.extend(start_follower(sf) for _ in range(2))
                _poll_until(lambda: flight_waiters(sf) >= 2, threading.Event())
            if fails:
                raise LookupError("the call failed")
            return "led"

        try:
            with inject:
                try:
                    sf.do_sync(KEY, call)
                except LookupError:
                    assert fails
        finally:
            for follower in followers:
                try:
                    assert follower.result(BOUND) in ("led", "own")
                except LookupError:
                    assert fails

    return scenario


class GiveUp(BaseException):
    """What makes a leader give its call up (as an interrupt would): a follower takes over."""


class Leader:
    """A thread leading the call for KEY until the main caller follows (``followers`` wait,
    or ``until()`` is true); then it returns "led", or (``gives_up``) gives the call up so
    that the main caller takes it over."""

    def __init__(
        self,
        sf: SingleFlight,
        gives_up: bool,
        followers: int = 1,
        until: Callable[[], bool] | None = None,
    ) -> None:
        self.done = threading.Event()
        started = threading.Event()
        ready = until if until is not None else lambda: flight_waiters(sf) >= followers

        def leader_call() -> str:
            started.set()
            _poll_until(ready, self.done)
            if gives_up:
                raise GiveUp
            return "led"

        def lead() -> str:
            try:
                return sf.do_sync(KEY, leader_call)
            except GiveUp:
                return "gave up"

        self.gives_up = gives_up
        self.handle = start_thread(lead, "leader")
        if not started.wait(BOUND):
            self.handle.result(0)

    def finish(self) -> None:
        self.done.set()
        assert self.handle.result(BOUND) == ("gave up" if self.gives_up else "led")


def flight_thread_follows(gives_up: bool) -> Callable[[SingleFlight, Injector], None]:
    def scenario(sf: SingleFlight, inject: Injector) -> None:
        leader = Leader(sf, gives_up)
        try:
            with inject:
                assert sf.do_sync(KEY, lambda: "own") in ("led", "own")
        finally:
            leader.finish()

    return scenario


def flight_async_alone(runtime: str) -> Callable[[SingleFlight, Injector], None]:
    def scenario(sf: SingleFlight, inject: Injector) -> None:
        async def main() -> None:
            assert await sf.do(KEY, lambda: "led") == "led"

        RUNNERS[runtime](main, inject)

    return scenario


def flight_async_leads(runtime: str, fails: bool) -> Callable[[SingleFlight, Injector], None]:
    def scenario(sf: SingleFlight, inject: Injector) -> None:
        tasks = Tasks(runtime)
        threads: list[ThreadHandle[object]] = []
        got: list[object] = []

        async def follower() -> None:
            try:
                got.append(await sf.do(KEY, lambda: "own"))
            except LookupError:
                assert fails
                got.append("failed")

        async def call() -> str:
            with inject.paused():
                tasks.start(follower)
                threads.append(start_follower(sf))
                await until(lambda: flight_waiters(sf) >= 2, runtime)
            if fails:
                raise LookupError("the call failed")
            return "led"

        async def main() -> None:
            try:
                assert await sf.do(KEY, call) == "led"
            except LookupError:
                assert fails

        try:
            RUNNERS[runtime](lambda: tasks.run(main), inject)
        finally:
            for handle in threads:
                try:
                    got.append(handle.result(BOUND))
                except LookupError:
                    assert fails
                    got.append("failed")
        assert all(value in ("led", "own", "failed") for value in got)

    return scenario


def flight_async_follows(runtime: str, gives_up: bool) -> Callable[[SingleFlight, Injector], None]:
    def scenario(sf: SingleFlight, inject: Injector) -> None:
        async def main() -> None:
            assert await sf.do(KEY, lambda: "own") in ("led", "own")

        leader = Leader(sf, gives_up)
        try:
            RUNNERS[runtime](main, inject)
        finally:
            leader.finish()

    return scenario


def flight_asyncio_herd(gives_up: bool) -> Callable[[SingleFlight, Injector], None]:
    """The main task follows a thread's call with two other tasks of its loop: three
    followers in one herd (the process scope's asyncio followers)."""

    def scenario(sf: SingleFlight, inject: Injector) -> None:
        got: list[object] = []

        async def follower() -> None:
            got.append(await sf.do(KEY, lambda: "own"))

        async def main() -> None:
            with inject.paused():
                others = [asyncio.get_running_loop().create_task(follower()) for _ in range(2)]
                await until(lambda: flight_waiters(sf) >= 2, "asyncio")
            try:
                got.append(await sf.do(KEY, lambda: "own"))
            finally:  # (interrupted before it joined: the leader must not wait for it)
                leader.done.set()
            await asyncio.wait(others, timeout=BOUND)

        leader = Leader(sf, gives_up, followers=3)
        try:
            RUNNERS["asyncio"](main, inject)
        finally:
            leader.finish()
        assert set(got) <= ({"own"} if gives_up else {"led"}), got

    return scenario


def flight_asyncio_herd_split(gives_up: bool) -> Callable[[SingleFlight, Injector], None]:
    """The main task follows a thread's call in a herd with two other tasks of its loop; the
    first of them is cancelled once the main task waits, which cancels the herd's shared
    future: the main task is woken by a cancellation not its own, the herd splits, and the
    main task waits on (and, if the leader gives up, the other task or it takes over)."""

    def scenario(sf: SingleFlight, inject: Injector) -> None:
        got: list[object] = []
        left = threading.Event()
        leader = Leader(sf, gives_up, until=left.is_set)

        async def follower() -> None:
            got.append(await sf.do(KEY, lambda: "own"))

        async def main() -> None:
            loop = asyncio.get_running_loop()
            with inject.paused():
                leaving = loop.create_task(follower())
                other = loop.create_task(follower())
                await until(lambda: flight_waiters(sf) >= 2, "asyncio")
                leaving.add_done_callback(lambda _: left.set())
                loop.call_soon(leaving.cancel)  # (runs once the main task waits)
            try:
                got.append(await sf.do(KEY, lambda: "own"))
            finally:
                left.set()
            await asyncio.wait([leaving, other], timeout=BOUND)

        try:
            RUNNERS["asyncio"](main, inject)
        finally:
            leader.finish()
        assert set(got) <= ({"own"} if gives_up else {"led"}), got

    return scenario


FLIGHT_SCENARIOS: dict[str, Callable[[SingleFlight, Injector], None]] = {
    "thread-alone": flight_thread_alone,
    "thread-leads": flight_thread_leads(fails=False),
    "thread-leads-and-fails": flight_thread_leads(fails=True),
    "thread-follows": flight_thread_follows(gives_up=False),
    "thread-follows-and-takes-over": flight_thread_follows(gives_up=True),
}
FLIGHT_SCENARIOS["asyncio-herd"] = flight_asyncio_herd(gives_up=False)
FLIGHT_SCENARIOS["asyncio-herd-takes-over"] = flight_asyncio_herd(gives_up=True)
FLIGHT_SCENARIOS["asyncio-herd-split"] = flight_asyncio_herd_split(gives_up=False)
FLIGHT_SCENARIOS["asyncio-herd-split-takes-over"] = flight_asyncio_herd_split(gives_up=True)
for _rt in ("asyncio", "trio"):
    FLIGHT_SCENARIOS.update(
        {
            f"{_rt}-alone": flight_async_alone(_rt),
            f"{_rt}-leads": flight_async_leads(_rt, fails=False),
            f"{_rt}-leads-and-fails": flight_async_leads(_rt, fails=True),
            f"{_rt}-follows": flight_async_follows(_rt, gives_up=False),
            f"{_rt}-follows-and-takes-over": flight_async_follows(_rt, gives_up=True),
        }
    )


def check_flight_clean(sf: SingleFlight) -> None:
    table = table_of(sf)
    assert not guard_is_owned(table._guard), "the guard is still held by this thread"
    wait_helper_threads_end()
    assert len(sf) == 0, f"calls left in flight: {sf!r}"
    herds = getattr(sf._backend, "herds", {})  # (the process scope's asyncio followers)
    assert not herds, f"herds left: {herds!r}"
    fresh = start_thread(lambda: sf.do_sync(KEY, lambda: "fresh"), "fresh-call")
    assert fresh.result(BOUND) == "fresh", "a new call does not run"
    assert len(sf) == 0


# -- running one sweep ------------------------------------------------------------------------


_lock_files = itertools.count(1)


def run_lock_scenario(name: str, scope: str, directory: str) -> Callable[[Injector], None]:
    body = LOCK_SCENARIOS[name]

    def run_once(inject: Injector) -> None:
        lock: Lock
        if scope == "process":
            lock = KeyedLock()
        else:
            lock = FileKeyedLock(os.path.join(directory, f"keys-{next(_lock_files)}.lock"))
        path = lock.path if isinstance(lock, FileKeyedLock) else None
        try:
            body(lock, inject)
        except BaseException as exc:
            if not is_interrupt(exc):
                raise
        check_lock_clean(lock, path)

    return run_once


def run_flight_scenario(name: str) -> Callable[[Injector], None]:
    body = FLIGHT_SCENARIOS[name]

    def run_once(inject: Injector) -> None:
        sf = SingleFlight()
        try:
            body(sf, inject)
        except BaseException as exc:
            if not is_interrupt(exc):
                raise
        check_flight_clean(sf)

    return run_once


def sweep_all(
    kind: str, names: list[str], scope: str, sample: int, seed: int, twice: bool = False
) -> list[Any]:
    """The reports of the sweeps of ``names`` (scenarios of ``kind``) in ``scope``, one after
    the other in this process (in the manager scope, with one manager for all of them)."""
    reports = []
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory())
        if scope == "manager":
            from keyedlock.multiprocessing import KeyedLockManager

            from .manager_sweep import run_manager_scenario

            manager = stack.enter_context(KeyedLockManager())  # never the one interrupted
        for name in names:
            if scope == "manager":
                run_once = run_manager_scenario(kind, name, manager)
            elif kind == "lock":
                run_once = run_lock_scenario(name, scope, directory)
            else:
                run_once = run_flight_scenario(name)
            outcome = sweep(run_once, f"{kind}-{name}-{scope}", sample, seed, twice)
            reports.append(
                {
                    "scenario": name,
                    "points": outcome.points,
                    "tried": outcome.tried,
                    "fired": outcome.fired,
                    "again": outcome.again,
                    "failures": [
                        {"point": str(point), "error": f"{type(exc).__name__}: {exc}"}
                        for point, exc in outcome.failures
                    ],
                }
            )
    return reports


def main(argv: list[str]) -> None:
    kind, name, scope, sample, seed, *twice = argv
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")
    scenarios = LOCK_SCENARIOS if kind == "lock" else FLIGHT_SCENARIOS
    names = sorted(scenarios) if name == "all" else [name]
    reports = sweep_all(kind, names, scope, int(sample), int(seed), twice == ["twice"])
    sys.stdout.write(json.dumps(reports) + "\n")
    sys.stdout.flush()
    os._exit(0)  # helper threads a failed run left stuck must not hold the exit up


if __name__ == "__main__":
    main(sys.argv[1:])
