"""Stress: every runtime at once hammers a few keys; exclusion, order, counts, cleanup stay exact.

Workers (three threads, and three tasks in each of two asyncio loops and two trio runs, each in a
thread of its own) loop over random operations until the deadline:

- critical sections on three keys through every API, with random timeouts (0 and small), random
  cancellations and ``run(on_error="stop")`` failures. A section is a read-yield-write of the
  key's counter and records its entry and exit with :func:`time.monotonic_ns`;
- single-flight calls on two keys (``do_sync`` / ``do_sync_ex`` in threads, ``do`` / ``do_ex``
  with sync or async functions in tasks, cancelled at random), whose functions do a little
  work, fail now and then and record when they ran; now and then a worker forgets a key.

Meanwhile the test thread runs ordered rounds on keys of their own, with waiters in new
threads, an asyncio loop and a trio run, each started only once the previous one is seen
queued (``waiters()``), so that the order is defined:

- FIFO: the test thread holds the key while the waiters queue; some time out or are cancelled
  in the middle of the queue. After the release the others must get the key in queue order;
- abort: the same queue behind ``run_sync(..., on_error="stop")`` whose function fails: exactly
  the waiters still queued raise ``Aborted`` caused by that failure, none runs, and a caller
  right after finds the key free;
- takeover: a single-flight leader and its followers; leaders are cancelled (tasks) or
  interrupted (threads) one after another, and each time the earliest remaining follower must
  take over; the last leader's value or error reaches every follower left.

Checks afterwards: no two sections of one key overlap; each counter equals the sections that
completed; the orders of the rounds; every flight function ran at most once per caller, two
calls of one key never ran at once unless a ``forget`` came between them, every caller got the
value or the error (same type) of a call of its key that ended while it waited, or its own as
the leader, with the ``shared`` flag as documented; ``len(lock) == 0`` and ``len(flight) ==
0``; every worker thread and task, and every waiter of the rounds, ended within a bound.

The choices are seeded: the seed is printed, with a summary line of the counts, and
``KEYEDLOCK_SEED`` replays it (the interleaving itself still depends on the scheduler). Each run
happens twice: with the interpreter's thread switch interval and switching every microsecond.
The default run takes about five seconds; the ``slow`` variant runs for minutes with
``KEYEDLOCK_STRESS=long`` (``KEYEDLOCK_STRESS_SECONDS`` sets its length).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import queue
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio

from keyedlock import Aborted, KeyedLock, LockTimeout, SingleFlight

from .drivers import _Gate, _TaskGate, _ThreadGate
from .singleflight.flight_support import wait_followers
from .support import (
    LONG_STRESS,
    WAIT,
    AsyncioThread,
    Handle,
    RuntimeThread,
    TaskCancelled,
    Threads,
    TrioThread,
    table_of,
    wait_waiters,
)

KEYS = ("k0", "k1", "k2")
FLIGHT_KEYS = ("f0", "f1")
#: Keys of the ordered rounds, which the random workers never touch.
FIFO_KEY = "fifo"
TAKEOVER_KEY = "takeover"
TIMEOUTS = (None, None, 0, 0.0002, 0.002)
CANCEL_AFTER = (0.0001, 0.0005, 0.002)
#: How long a single-flight function works (0: it only yields).
FLIGHT_WORK = (0, 0, 0, 0.0001, 0.0005)
THREADS = 3
LOOPS = 2
TRIO_RUNS = 2
TASKS_PER_RUNTIME = 3
P_FAIL = 0.1
P_CANCEL = 0.15
P_FORGET = 0.01
THREAD_OPS = ("with", "acquire", "run", "guard", "non-blocking", "flight", "flight")
TASK_OPS = ("async with", "acquire_async", "run", "guard", "non-blocking", "flight", "flight")
RUNTIMES = ("thread", "asyncio", "trio")
#: The timeouts of the rounds' waiters: none or one that never expires (the waiters that stay),
#: and short ones that expire while the waiter is queued.
ROUND_TIMEOUTS = (None, 60.0)
ROUND_SHORT_TIMEOUTS = (0.0005, 0.002)
#: What becomes of a waiter of a round: it stays, it times out while queued, or (a task) it is
#: cancelled while queued.
WAITER_FATES = ("stay", "stay", "stay", "timeout")
TASK_WAITER_FATES = (*WAITER_FATES, "cancel")


class Boom(Exception):
    """A failure of the work under the key (``run(on_error="stop")`` aborts the queue)."""


class FlightBoom(Exception):
    """A failing single-flight function; ``args`` say which run failed."""


class Interrupt(BaseException):
    """Stands for a KeyboardInterrupt in a thread's single-flight function: not an outcome."""


#: What a single-flight function returns: (key, run id, the caller that ran it).
Ran = tuple[str, int, int]


@dataclass
class FlightRun:
    """One run of a single-flight function."""

    key: str
    run: int
    caller: int
    start: int
    end: int = 0
    outcome: str = "cancelled"  # or "value", "error"


@dataclass
class FlightCall:
    """One ``do`` / ``do_sync`` call, as its caller saw it."""

    key: str
    caller: int
    start: int
    end: int = 0
    got: tuple[Any, ...] | None = None  # the Ran value, or the FlightBoom's args; None: cancelled
    error: bool = False
    shared: bool | None = None  # do_ex / do_sync_ex only


@dataclass
class Journal:
    """What one worker saw; only that worker writes it."""

    runtime: str
    intervals: list[tuple[str, int, int]] = field(default_factory=list)
    completed: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    flight_calls: list[FlightCall] = field(default_factory=list)
    flight_runs: list[FlightRun] = field(default_factory=list)
    forgets: list[tuple[str, int, int]] = field(default_factory=list)
    finished: bool = False


@dataclass
class Arena:
    """The shared state of one stress run."""

    lock: KeyedLock
    flight: SingleFlight
    deadline: float
    seed: int
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    journals: list[Journal] = field(default_factory=list)
    callers: Iterator[int] = field(default_factory=itertools.count)
    runs: Iterator[int] = field(default_factory=itertools.count)

    def journal(self, runtime: str) -> Journal:
        journal = Journal(runtime)
        self.journals.append(journal)
        return journal

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")


def forget_now(arena: Arena, journal: Journal, rng: random.Random) -> None:
    key = rng.choice(FLIGHT_KEYS)
    start = time.monotonic_ns()
    arena.flight.forget(key)
    journal.forgets.append((key, start, time.monotonic_ns()))


# -- thread workers ----------------------------------------------------------------------------


def thread_flight(arena: Arena, journal: Journal, rng: random.Random, key: str) -> str:
    caller = next(arena.callers)
    fail = rng.random() < P_FAIL
    work = rng.choice(FLIGHT_WORK)
    ex = rng.random() < 0.5

    def fn() -> Ran:
        run = FlightRun(key, next(arena.runs), caller, time.monotonic_ns())
        journal.flight_runs.append(run)
        try:
            time.sleep(work)
            if fail:
                run.outcome = "error"
                raise FlightBoom(key, run.run, caller)
            run.outcome = "value"
            return (key, run.run, caller)
        finally:
            run.end = time.monotonic_ns()

    record = FlightCall(key, caller, time.monotonic_ns())
    journal.flight_calls.append(record)
    try:
        if ex:
            result = arena.flight.do_sync_ex(key, fn)
            record.got, record.shared = result.value, result.shared
        else:
            record.got = arena.flight.do_sync(key, fn)
    except FlightBoom as exc:
        record.got, record.error = exc.args, True
        return "flight-error"
    finally:
        record.end = time.monotonic_ns()
    return "flight"


def thread_worker(arena: Arena, name: str) -> None:
    rng = arena.rng(name)
    journal = arena.journal("thread")
    lock = arena.lock

    def section(key: str, fail: bool) -> None:
        start = time.monotonic_ns()
        try:
            value = arena.counters[key]
            if rng.random() < 0.5:
                time.sleep(0)
            arena.counters[key] = value + 1
            journal.completed[key] += 1
            if fail:
                raise Boom
        finally:
            journal.intervals.append((key, start, time.monotonic_ns()))

    def one(key: str, timeout: float | None, fail: bool, op: str) -> str:
        if op == "with":
            with lock(key, timeout=timeout):
                section(key, False)
        elif op == "acquire":
            if not lock.acquire(key, timeout=timeout):
                return "timeout"
            try:
                section(key, False)
            finally:
                lock.release(key)
        elif op == "run":
            lock.run_sync(key, section, key, fail, timeout=timeout, on_error="stop")
        elif op == "guard":
            lock.guard("{0}", timeout=timeout, on_error="stop")(section)(key, fail)
        elif op == "flight":
            return thread_flight(arena, journal, rng, rng.choice(FLIGHT_KEYS))
        elif lock.acquire(key, blocking=False):
            try:
                section(key, False)
            finally:
                lock.release(key)
        else:
            return "busy"
        return "ok"

    while time.monotonic() < arena.deadline:
        key = rng.choice(KEYS)
        timeout = rng.choice(TIMEOUTS)
        fail = rng.random() < P_FAIL
        op = rng.choice(THREAD_OPS)
        if rng.random() < P_FORGET:
            forget_now(arena, journal, rng)
        try:
            outcome = one(key, timeout, fail, op)
        except LockTimeout:
            outcome = "timeout"
        except Aborted:
            outcome = "aborted"
        except Boom:
            outcome = "failed"
        journal.outcomes[outcome] += 1
    journal.finished = True


# -- asyncio and trio workers ------------------------------------------------------------------

#: Runs ``fn()`` but cancels it after some seconds: its outcome, or None if it was cancelled.
Within = Callable[[Callable[[], Awaitable[str]], float], Awaitable[str | None]]


async def within_asyncio(fn: Callable[[], Awaitable[str]], seconds: float) -> str | None:
    try:
        async with asyncio.timeout(seconds):
            return await fn()
    except LockTimeout:
        raise
    except TimeoutError:
        return None


async def within_trio(fn: Callable[[], Awaitable[str]], seconds: float) -> str | None:
    with trio.move_on_after(seconds):
        return await fn()
    return None


async def task_flight(arena: Arena, journal: Journal, rng: random.Random, key: str) -> str:
    caller = next(arena.callers)
    fail = rng.random() < P_FAIL
    work = rng.choice(FLIGHT_WORK)
    ex = rng.random() < 0.5

    def sync_fn() -> Ran:
        run = FlightRun(key, next(arena.runs), caller, time.monotonic_ns())
        journal.flight_runs.append(run)
        try:
            if fail:
                run.outcome = "error"
                raise FlightBoom(key, run.run, caller)
            run.outcome = "value"
            return (key, run.run, caller)
        finally:
            run.end = time.monotonic_ns()

    async def async_fn() -> Ran:
        run = FlightRun(key, next(arena.runs), caller, time.monotonic_ns())
        journal.flight_runs.append(run)
        try:
            if work:
                await anyio.sleep(work)
            else:
                await anyio.lowlevel.checkpoint()
            if fail:
                run.outcome = "error"
                raise FlightBoom(key, run.run, caller)
            run.outcome = "value"
            return (key, run.run, caller)
        finally:
            run.end = time.monotonic_ns()

    fn: Callable[[], Any] = sync_fn if rng.random() < 0.3 else async_fn
    record = FlightCall(key, caller, time.monotonic_ns())
    journal.flight_calls.append(record)
    try:
        if ex:
            result = await arena.flight.do_ex(key, fn)
            record.got, record.shared = result.value, result.shared
        else:
            record.got = await arena.flight.do(key, fn)
    except FlightBoom as exc:
        record.got, record.error = exc.args, True
        return "flight-error"
    finally:
        record.end = time.monotonic_ns()
    return "flight"


async def task_worker(arena: Arena, name: str, runtime: str, within: Within) -> None:
    rng = arena.rng(name)
    journal = arena.journal(runtime)
    lock = arena.lock

    async def section(key: str, fail: bool) -> None:
        start = time.monotonic_ns()
        try:
            value = arena.counters[key]
            if rng.random() < 0.5:
                await anyio.lowlevel.checkpoint()
            arena.counters[key] = value + 1
            journal.completed[key] += 1
            if fail:
                raise Boom
        finally:
            journal.intervals.append((key, start, time.monotonic_ns()))

    async def one(key: str, timeout: float | None, fail: bool, op: str) -> str:
        if op == "async with":
            async with lock(key, timeout=timeout):
                await section(key, False)
        elif op == "acquire_async":
            if not await lock.acquire_async(key, timeout=timeout):
                return "timeout"
            try:
                await section(key, False)
            finally:
                lock.release(key)
        elif op == "run":
            await lock.run(key, section, key, fail, timeout=timeout, on_error="stop")
        elif op == "guard":
            await lock.guard("{0}", timeout=timeout, on_error="stop")(section)(key, fail)
        elif op == "flight":
            return await task_flight(arena, journal, rng, rng.choice(FLIGHT_KEYS))
        elif lock.acquire(key, blocking=False):
            try:
                await section(key, False)
            finally:
                lock.release(key)
        else:
            return "busy"
        return "ok"

    while time.monotonic() < arena.deadline:
        key = rng.choice(KEYS)
        timeout = rng.choice(TIMEOUTS)
        fail = rng.random() < P_FAIL
        op = rng.choice(TASK_OPS)
        if rng.random() < P_FORGET:
            forget_now(arena, journal, rng)
        outcome: str | None
        try:
            if rng.random() < P_CANCEL:
                outcome = await within(
                    partial(one, key, timeout, fail, op), rng.choice(CANCEL_AFTER)
                )
                if outcome is None:
                    outcome = "cancelled"
            else:
                outcome = await one(key, timeout, fail, op)
        except LockTimeout:
            outcome = "timeout"
        except Aborted:
            outcome = "aborted"
        except Boom:
            outcome = "failed"
        journal.outcomes[outcome] += 1
    journal.finished = True


def asyncio_runtime(arena: Arena, name: str) -> None:
    async def main() -> None:
        await asyncio.gather(
            *(
                task_worker(arena, f"{name}-{i}", "asyncio", within_asyncio)
                for i in range(TASKS_PER_RUNTIME)
            )
        )
        left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert not left, f"tasks left behind on {name}: {left}"

    asyncio.run(main())


def trio_runtime(arena: Arena, name: str) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(TASKS_PER_RUNTIME):
                nursery.start_soon(task_worker, arena, f"{name}-{i}", "trio", within_trio)

    trio.run(main)


# -- ordered rounds (the test thread) ----------------------------------------------------------

#: What a waiter or a participant of a round reports: its fate and what came with it.
Outcome = tuple[str, Any]


def lock_waiter_sync(
    lock: KeyedLock, key: str, api: str, timeout: float | None, granted: list[int], index: int
) -> Outcome:
    """A thread queueing for ``key``; records ``index`` in ``granted`` once it holds it."""
    try:
        if api == "with":
            with lock(key, timeout=timeout):
                granted.append(index)
        elif api == "acquire":
            if not lock.acquire(key, timeout=timeout):
                return ("timeout", None)
            try:
                granted.append(index)
            finally:
                lock.release(key)
        else:
            lock.run_sync(key, granted.append, index, timeout=timeout)
    except LockTimeout:
        return ("timeout", None)
    except Aborted as exc:
        return ("aborted", exc.__cause__)
    return ("ok", None)


async def lock_waiter_async(
    lock: KeyedLock, key: str, api: str, timeout: float | None, granted: list[int], index: int
) -> Outcome:
    """An asyncio or trio task queueing for ``key``; as :func:`lock_waiter_sync`."""
    try:
        if api == "async with":
            async with lock(key, timeout=timeout):
                granted.append(index)
        elif api == "acquire_async":
            if not await lock.acquire_async(key, timeout=timeout):
                return ("timeout", None)
            try:
                granted.append(index)
            finally:
                lock.release(key)
        elif api == "run":
            await lock.run(key, granted.append, index, timeout=timeout)
        else:

            async def record(index: int) -> None:
                granted.append(index)

            await lock.guard(key, timeout=timeout)(record)(index)
    except LockTimeout:
        return ("timeout", None)
    except Aborted as exc:
        return ("aborted", exc.__cause__)
    return ("ok", None)


@dataclass
class Waiter:
    index: int
    runtime: str
    fate: str  # "stay", "timeout" (expires while queued) or "cancel" (tasks only)
    handle: Handle[Outcome]


@dataclass
class Participant:
    """A caller of a takeover round; ``command`` tells its function how to end if it leads."""

    index: int
    runtime: str
    fate: str  # "stay" or "cancel" (a task cancelled while it follows)
    gate: _Gate
    handle: Handle[Outcome] | None = None
    command: str = ""

    def end_lead(self, command: str) -> None:
        self.command = command
        self.gate.open()


def lead(participant: Participant, round_id: int) -> tuple[int, int]:
    """How a takeover round's function ends, once its gate opened."""
    if participant.command == "interrupt":
        raise Interrupt(round_id, participant.index)
    if participant.command == "error":
        raise FlightBoom(round_id, participant.index)
    return (round_id, participant.index)


def flight_participant_sync(
    flight: SingleFlight, participant: Participant, round_id: int, led: queue.Queue[int]
) -> Outcome:
    def fn() -> tuple[int, int]:
        led.put(participant.index)
        participant.gate.wait_sync()
        return lead(participant, round_id)

    try:
        result = flight.do_sync_ex(TAKEOVER_KEY, fn)
    except Interrupt:
        return ("interrupted", None)
    except FlightBoom as exc:
        return ("error", exc.args)
    return ("value", (result.value, result.shared))


async def flight_participant_async(
    flight: SingleFlight, participant: Participant, round_id: int, led: queue.Queue[int]
) -> Outcome:
    async def fn() -> tuple[int, int]:
        led.put(participant.index)
        with anyio.fail_after(WAIT):
            await participant.gate.wait_async()
        return lead(participant, round_id)

    try:
        result = await flight.do_ex(TAKEOVER_KEY, fn)
    except FlightBoom as exc:
        return ("error", exc.args)
    return ("value", (result.value, result.shared))


class Rounds:
    """The ordered rounds, run by the test thread while the workers hammer the other keys."""

    def __init__(
        self, arena: Arena, threads: Threads, aio: AsyncioThread, trio_thread: TrioThread
    ) -> None:
        self.arena = arena
        self.lock = arena.lock
        self.flight = arena.flight
        self.threads = threads
        self.runtimes: dict[str, RuntimeThread] = {"asyncio": aio, "trio": trio_thread}
        self.rng = arena.rng("rounds")
        self.counts: Counter[str] = Counter()
        self.violations: list[str] = []
        self.handles: list[Handle[Outcome]] = []
        self.serial = 0

    def violation(self, what: str) -> None:
        self.violations.append(f"round {self.serial}: {what}")

    def run(self) -> None:
        kinds = ["fifo", "abort", "takeover"]
        self.rng.shuffle(kinds)  # one of each first, whatever the deadline
        while kinds or time.monotonic() < self.arena.deadline:
            kind = kinds.pop() if kinds else self.rng.choice(("fifo", "abort", "takeover"))
            self.serial += 1
            self.counts[f"{kind}_rounds"] += 1
            if kind == "fifo":
                self.fifo_round()
            elif kind == "abort":
                self.abort_round()
            else:
                self.takeover_round()
        unfinished = [h for h in self.handles if not h.finished.is_set()]
        if unfinished:
            self.violations.append(f"round waiters still running: {unfinished}")

    # -- lock rounds ---------------------------------------------------------------------

    def start_waiter(
        self, runtime: str, timeout: float | None, granted: list[int], index: int
    ) -> Handle[Outcome]:
        rng = self.rng
        if runtime == "thread":
            api = rng.choice(("with", "acquire", "run_sync"))
            body = partial(lock_waiter_sync, self.lock, FIFO_KEY, api, timeout, granted, index)
            handle: Handle[Outcome] = self.threads.start(body, "round-waiter")
        else:
            api = rng.choice(("async with", "acquire_async", "run", "guard"))
            coro = partial(lock_waiter_async, self.lock, FIFO_KEY, api, timeout, granted, index)
            handle = self.runtimes[runtime].submit(coro, f"round-waiter-{index}")
        self.handles.append(handle)
        return handle

    def queue_waiters(self, granted: list[int]) -> list[Waiter]:
        """With ``FIFO_KEY`` held: queue waiters one after another, some of which withdraw."""
        lock = self.lock
        rng = self.rng
        waiters = []
        live = 0
        for index in range(rng.randint(2, 6)):
            runtime = rng.choice(RUNTIMES)
            fate = rng.choice(WAITER_FATES if runtime == "thread" else TASK_WAITER_FATES)
            short = fate == "timeout"
            timeout = rng.choice(ROUND_SHORT_TIMEOUTS if short else ROUND_TIMEOUTS)
            waiter = Waiter(
                index, runtime, fate, self.start_waiter(runtime, timeout, granted, index)
            )
            waiters.append(waiter)
            self.counts["operations"] += 1
            if short:  # it queues behind the others, times out and leaves without a trace
                if waiter.handle.result() != ("timeout", None):
                    self.violation(f"waiter {index} did not time out")
                self.counts["timeouts"] += 1
                if lock.waiters(FIFO_KEY) != live:
                    self.violation("a timed-out waiter left a trace in the queue")
            else:
                live += 1
                wait_waiters(lock, FIFO_KEY, live)
        cancelled = [w for w in waiters if w.fate == "cancel"]
        rng.shuffle(cancelled)
        for waiter in cancelled:
            waiter.handle.cancel()
            waiter.handle.wait()
            live -= 1
            wait_waiters(lock, FIFO_KEY, live)
            self.counts["cancellations"] += 1
        return waiters

    def check_waiter_outcomes(self, waiters: list[Waiter], staying: Outcome) -> None:
        for waiter in waiters:
            if waiter.fate == "cancel":
                try:
                    outcome = waiter.handle.result()
                except TaskCancelled:
                    continue
                self.violation(f"cancelled waiter {waiter.index} ended with {outcome}")
            elif waiter.fate == "stay":
                outcome = waiter.handle.result()
                if outcome[0] != staying[0] or outcome[1] is not staying[1]:
                    self.violation(f"waiter {waiter.index} ended with {outcome}, not {staying}")

    def fifo_round(self) -> None:
        lock = self.lock
        granted: list[int] = []
        if not lock.acquire(FIFO_KEY, blocking=False):
            self.violation("the FIFO key is busy at the start of a round")
            return
        try:
            waiters = self.queue_waiters(granted)
        finally:
            lock.release(FIFO_KEY)
        self.check_waiter_outcomes(waiters, ("ok", None))
        expected = [w.index for w in waiters if w.fate == "stay"]
        if granted != expected:
            self.violation(f"granted in the order {granted}, queued in the order {expected}")
        self.counts["acquisitions"] += len(granted)

    def abort_round(self) -> None:
        lock = self.lock
        granted: list[int] = []
        waiters: list[Waiter] = []
        boom = Boom(f"round {self.serial}")

        def fail_with_a_queue() -> None:
            waiters.extend(self.queue_waiters(granted))
            raise boom

        try:
            lock.run_sync(FIFO_KEY, fail_with_a_queue, timeout=0, on_error="stop")
        except Boom as exc:
            if exc is not boom:
                self.violation(f"run_sync raised {exc!r}, not its function's failure")
        else:
            self.violation("run_sync swallowed its function's failure")
        if lock.locked(FIFO_KEY) or lock.waiters(FIFO_KEY):
            self.violation("the key is not free right after the abort")
        if lock.acquire(FIFO_KEY, blocking=False):  # a caller arriving now starts fresh
            lock.release(FIFO_KEY)
        else:
            self.violation("a caller right after the abort found the key busy")
        self.check_waiter_outcomes(waiters, ("aborted", boom))
        if granted:
            self.violation(f"aborted waiters ran: {granted}")
        self.counts["aborts"] += sum(w.fate == "stay" for w in waiters)
        self.counts["failures"] += 1

    # -- single-flight takeover round ----------------------------------------------------

    def takeover_round(self) -> None:
        flight = self.flight
        rng = self.rng
        round_id = self.serial
        led: queue.Queue[int] = queue.Queue()
        parts: list[Participant] = []

        def join(index: int) -> Participant:
            runtime = rng.choice(RUNTIMES)
            fate = "cancel" if index and runtime != "thread" and rng.random() < 0.25 else "stay"
            if runtime == "thread":
                part = Participant(index, runtime, fate, _ThreadGate())
                body = partial(flight_participant_sync, flight, part, round_id, led)
                part.handle = self.threads.start(body, "takeover")
            else:
                host = self.runtimes[runtime]
                part = Participant(index, runtime, fate, _TaskGate(host))
                coro = partial(flight_participant_async, flight, part, round_id, led)
                part.handle = host.submit(coro, f"takeover-{index}")
            self.handles.append(part.handle)
            parts.append(part)
            self.counts["operations"] += 1
            return part

        join(0)
        if led.get(timeout=WAIT) != 0:
            self.violation("the first caller did not lead")
        for index in range(1, rng.randint(3, 6)):
            join(index)
            wait_followers(flight, TAKEOVER_KEY, index)
        live = [p for p in parts[1:] if p.fate == "stay"]
        for part in parts:
            if part.fate == "cancel":
                assert part.handle is not None
                part.handle.cancel()
                part.handle.wait()
                self.counts["cancellations"] += 1
        wait_followers(flight, TAKEOVER_KEY, len(live))

        chain = [parts[0]]
        for _ in range(rng.randint(0, len(live))):
            leader = chain[-1]
            if leader.runtime == "thread":
                leader.end_lead("interrupt")
                self.counts["interrupts"] += 1
            else:
                assert leader.handle is not None
                leader.handle.cancel()
                self.counts["cancellations"] += 1
            took_over = led.get(timeout=WAIT)
            taker = next(p for p in parts if p.index == took_over)
            if taker is not live[0]:
                self.violation(f"caller {took_over} took over, not the earliest {live[0].index}")
            if taker in live:
                live.remove(taker)
            chain.append(taker)
            self.counts["takeovers"] += 1

        final = chain[-1]
        command = rng.choice(("value", "value", "error"))
        final.end_lead(command)
        for part in parts:  # a follower that runs its function by mistake must not hang
            if part not in chain:
                part.end_lead(command)
        value = (round_id, final.index)
        ended: Outcome = ("error", value) if command == "error" else ("value", (value, bool(live)))
        for part in parts:
            assert part.handle is not None
            outcome: Outcome
            try:
                outcome = part.handle.result()
            except TaskCancelled:
                outcome = ("cancelled", None)
            want: Outcome
            if part is final:
                want = ended
            elif part in chain:
                want = ("interrupted", None) if part.runtime == "thread" else ("cancelled", None)
            elif part.fate == "cancel":
                want = ("cancelled", None)
            else:
                want = ("error", value) if command == "error" else ("value", (value, True))
            if outcome != want:
                self.violation(f"takeover caller {part.index} ended with {outcome}, not {want}")
        if not led.empty():
            self.violation("a follower ran its function although a leader was running")
        if flight.in_flight(TAKEOVER_KEY):
            self.violation("the takeover key is still in flight after its round")
        self.counts["flight_calls"] += len(chain)
        self.counts["flight_shares"] += len(live)


# -- the run and its checks --------------------------------------------------------------------


def check_sections(arena: Arena, violations: list[str]) -> None:
    intervals: dict[str, list[tuple[int, int]]] = {key: [] for key in KEYS}
    for journal in arena.journals:
        for key, start, end in journal.intervals:
            intervals[key].append((start, end))
    for key, spans in intervals.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            if start < end:
                violations.append(f"two holders of {key!r} at once")
    for key in KEYS:
        completed = sum(journal.completed[key] for journal in arena.journals)
        if arena.counters[key] != completed:
            violations.append(f"lost updates on {key!r}: {arena.counters[key]} != {completed}")


def check_flights(arena: Arena, violations: list[str]) -> tuple[int, int]:
    """The single-flight checks of the random phase; returns (function runs, shares)."""
    runs = {r.run: r for journal in arena.journals for r in journal.flight_runs}
    calls = {c.caller: c for journal in arena.journals for c in journal.flight_calls}
    ran = Counter(r.caller for r in runs.values())
    violations.extend(f"caller {c} ran its function {n} times" for c, n in ran.items() if n > 1)

    shares: Counter[int] = Counter()
    for call in calls.values():
        if not call.end:
            violations.append(f"flight caller {call.caller} never returned")
        if call.got is None:
            continue  # cancelled
        key, run_id, leader = call.got
        run = runs.get(run_id)
        if run is None or run.key != call.key or key != call.key or run.caller != leader:
            violations.append(f"flight caller {call.caller} got {call.got}, not from its key")
            continue
        if run.outcome != ("error" if call.error else "value"):
            violations.append(f"flight caller {call.caller} got {call.got}; it ended {run.outcome}")
        if leader == call.caller:
            continue
        shares[run_id] += 1
        if call.shared is False:
            violations.append(f"follower {call.caller} got shared=False")
        # It joined before the call ended (its leader returned after that) and got the
        # outcome after the function ended.
        if not call.start <= calls[leader].end or not run.end <= call.end:
            violations.append(f"follower {call.caller} got {call.got} from a call outside its wait")
    for run in runs.values():
        if not run.end:
            violations.append(f"flight run {run.run} never ended")
        own = calls.get(run.caller)
        if own is None:
            violations.append(f"flight run {run.run} of an unknown caller")
        elif run.outcome != "cancelled":
            if own.got is None or tuple(own.got) != (run.key, run.run, run.caller):
                violations.append(f"leader {run.caller} did not get its own run {run.run}")
            elif own.shared is False and shares[run.run]:
                violations.append(f"leader {run.caller} said shared=False, others got it")

    # Two calls of one key never run at once, unless a forget detached the older one: some
    # forget ended after the earlier caller arrived and started before the later run.
    forgets = [f for journal in arena.journals for f in journal.forgets]
    for key in FLIGHT_KEYS:
        key_forgets = [(start, end) for k, start, end in forgets if k == key]
        active: list[FlightRun] = []
        for run in sorted((r for r in runs.values() if r.key == key), key=lambda r: r.start):
            active = [a for a in active if a.end > run.start]
            for other in active:
                arrived = min(calls[other.caller].start, calls[run.caller].start)
                if not any(s <= run.start and e >= arrived for s, e in key_forgets):
                    violations.append(f"runs {other.run} and {run.run} of {key!r} at once")
            active.append(run)
    return len(runs), sum(shares.values())


def stress_seed() -> int:
    chosen = os.environ.get("KEYEDLOCK_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


def run_stress(
    seconds: float, threads: Threads, aio: AsyncioThread, trio_thread: TrioThread
) -> None:
    seed = stress_seed()
    switch = sys.getswitchinterval()
    print(
        f"\nkeyedlock stress: seed={seed} (KEYEDLOCK_SEED={seed} replays it), {seconds} s, "
        f"switch interval {switch:g} s"
    )
    arena = Arena(KeyedLock(), SingleFlight(), time.monotonic() + seconds, seed)
    started = [
        *(threads.start(partial(thread_worker, arena, f"thread-{i}")) for i in range(THREADS)),
        *(threads.start(partial(asyncio_runtime, arena, f"loop-{i}")) for i in range(LOOPS)),
        *(threads.start(partial(trio_runtime, arena, f"trio-{i}")) for i in range(TRIO_RUNS)),
    ]
    rounds = Rounds(arena, threads, aio, trio_thread)
    rounds.run()
    for handle in started:
        handle.result(timeout=seconds + WAIT)  # re-raises a worker's unexpected exception

    violations = list(rounds.violations)
    lock = arena.lock
    if len(lock) or any(lock.waiters(key) for key in (*KEYS, FIFO_KEY)):
        violations.append(f"keys left behind: {len(lock)}")
    if len(arena.flight) or table_of(arena.flight).results:
        violations.append(f"calls left in flight: {len(arena.flight)}")
    if not all(journal.finished for journal in arena.journals):
        violations.append("a worker did not finish its loop")
    if len(arena.journals) != THREADS + (LOOPS + TRIO_RUNS) * TASKS_PER_RUNTIME:
        violations.append("a worker never started")
    for handle in threads.started:  # every worker and waiter thread, joined within a bound
        handle.thread.join(WAIT)
        if handle.thread.is_alive():
            violations.append(f"thread {handle.name} is still running")
    check_sections(arena, violations)
    runs, shares = check_flights(arena, violations)

    totals: dict[str, Counter[str]] = {}
    for journal in arena.journals:
        totals.setdefault(journal.runtime, Counter()).update(journal.outcomes)
    every: Counter[str] = sum(totals.values(), Counter())
    for runtime in RUNTIMES:
        if not totals[runtime]["ok"]:
            violations.append(f"{runtime} workers never got a key")
        if not totals[runtime]["flight"]:
            violations.append(f"{runtime} workers never got a single-flight value")
    counts = rounds.counts
    forgets = sum(len(journal.forgets) for journal in arena.journals)
    print(f"keyedlock stress outcomes: {totals}")
    print(
        f"keyedlock stress summary: seed={seed} seconds={seconds:g} switchinterval={switch:g}"
        f" operations={every.total() + counts['operations'] + forgets}"
        f" acquisitions={sum(arena.counters.values()) + counts['acquisitions']}"
        f" timeouts={every['timeout'] + counts['timeouts']} busy={every['busy']}"
        f" cancellations={every['cancelled'] + counts['cancellations']}"
        f" aborts={every['aborted'] + counts['aborts']}"
        f" failures={every['failed'] + every['flight-error'] + counts['failures']}"
        f" flight_calls={runs + counts['flight_calls']}"
        f" flight_shares={shares + counts['flight_shares']}"
        f" takeovers={counts['takeovers']} interrupts={counts['interrupts']} forgets={forgets}"
        f" rounds={counts['fifo_rounds']}/{counts['abort_rounds']}/{counts['takeover_rounds']}"
        f" violations={len(violations)}"
    )
    assert not violations, f"(seed={seed}) " + "\n".join(violations[:20])


@pytest.fixture(params=["default", "tiny"], ids=["switch-default", "switch-1us"])
def switch_interval(request: pytest.FixtureRequest) -> Iterator[None]:
    """Run once with the interpreter's thread switch interval, once switching every 1 us."""
    previous = sys.getswitchinterval()
    if request.param == "tiny":
        sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@pytest.mark.usefixtures("switch_interval")
def test_stress(threads: Threads, asyncio_thread: AsyncioThread, trio_thread: TrioThread) -> None:
    run_stress(2.5, threads, asyncio_thread, trio_thread)


LONG_SECONDS = float(os.environ.get("KEYEDLOCK_STRESS_SECONDS", 80 if LONG_STRESS else 20))


@pytest.mark.slow
@pytest.mark.timeout(LONG_SECONDS + 120)
@pytest.mark.usefixtures("switch_interval")
def test_stress_long(
    threads: Threads, asyncio_thread: AsyncioThread, trio_thread: TrioThread
) -> None:
    run_stress(LONG_SECONDS, threads, asyncio_thread, trio_thread)
