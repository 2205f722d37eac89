"""Stress: every runtime at once hammers a few keys; exclusion, counts and cleanup stay exact.

Threads, two asyncio loops and two trio runs (each in a thread of its own) run random critical
sections on three keys through every API, with random timeouts (0 and small), random
cancellations and ``run(on_error="stop")`` failures. Every critical section records its entry
and exit with :func:`time.monotonic_ns`; afterwards no two sections of one key may overlap,
each key's counter (a read-yield-write) must equal the sections that completed, and no key may
be left behind.

The choices are seeded: the seed is printed (shown on failure) and ``KEYEDLOCK_SEED`` replays
it (the interleaving itself still depends on the scheduler). The default run takes about five
seconds; the ``slow`` variant runs for minutes with ``KEYEDLOCK_STRESS=long``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import anyio
import anyio.lowlevel
import pytest
import trio

from keyedlock import Aborted, KeyedLock, LockTimeout

from .support import WAIT, Threads

KEYS = ("k0", "k1", "k2")
TIMEOUTS = (None, None, 0, 0.0002, 0.002)
CANCEL_AFTER = (0.0001, 0.0005, 0.002)
THREADS = 3
LOOPS = 2
TRIO_RUNS = 2
TASKS_PER_RUNTIME = 3
P_FAIL = 0.1
P_CANCEL = 0.15


class Boom(Exception):
    """A failure of the work under the key (``run(on_error="stop")`` aborts the queue)."""


@dataclass
class Journal:
    """What one worker saw; only that worker writes it."""

    runtime: str
    intervals: list[tuple[str, int, int]] = field(default_factory=list)
    completed: Counter[str] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)


@dataclass
class Arena:
    """The shared state of one stress run."""

    lock: KeyedLock
    deadline: float
    seed: int
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KEYS, 0))
    journals: list[Journal] = field(default_factory=list)

    def journal(self, runtime: str) -> Journal:
        journal = Journal(runtime)
        self.journals.append(journal)
        return journal

    def rng(self, name: str) -> random.Random:
        return random.Random(f"{self.seed}:{name}")


# -- thread workers ----------------------------------------------------------------------------


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

    while time.monotonic() < arena.deadline:
        key = rng.choice(KEYS)
        timeout = rng.choice(TIMEOUTS)
        fail = rng.random() < P_FAIL
        op = rng.choice(("with", "acquire", "run", "guard", "non-blocking"))
        try:
            if op == "with":
                with lock(key, timeout=timeout):
                    section(key, False)
            elif op == "acquire":
                if lock.acquire(key, timeout=timeout):
                    try:
                        section(key, False)
                    finally:
                        lock.release(key)
                else:
                    journal.outcomes["timeout"] += 1
            elif op == "run":
                lock.run_sync(key, section, key, fail, timeout=timeout, on_error="stop")
            elif op == "guard":
                lock.guard("{0}", timeout=timeout, on_error="stop")(section)(key, fail)
            elif lock.acquire(key, blocking=False):
                try:
                    section(key, False)
                finally:
                    lock.release(key)
            else:
                journal.outcomes["busy"] += 1
        except LockTimeout:
            journal.outcomes["timeout"] += 1
        except Aborted:
            journal.outcomes["aborted"] += 1
        except Boom:
            journal.outcomes["failed"] += 1
        else:
            journal.outcomes["ok"] += 1


# -- asyncio and trio workers ------------------------------------------------------------------

#: Runs ``fn()`` but cancels it after some seconds; True if it was cancelled.
Within = Callable[[Callable[[], Awaitable[None]], float], Awaitable[bool]]


async def within_asyncio(fn: Callable[[], Awaitable[None]], seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await fn()
    except LockTimeout:
        raise
    except TimeoutError:
        return True
    return False


async def within_trio(fn: Callable[[], Awaitable[None]], seconds: float) -> bool:
    with trio.move_on_after(seconds) as scope:
        await fn()
    return scope.cancelled_caught


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

    async def one(key: str, timeout: float | None, fail: bool, op: str) -> None:
        if op == "async with":
            async with lock(key, timeout=timeout):
                await section(key, False)
        elif op == "acquire_async":
            if await lock.acquire_async(key, timeout=timeout):
                try:
                    await section(key, False)
                finally:
                    lock.release(key)
            else:
                journal.outcomes["timeout"] += 1
        elif op == "run":
            await lock.run(key, section, key, fail, timeout=timeout, on_error="stop")
        elif op == "guard":
            await lock.guard("{0}", timeout=timeout, on_error="stop")(section)(key, fail)
        elif lock.acquire(key, blocking=False):
            try:
                await section(key, False)
            finally:
                lock.release(key)
        else:
            journal.outcomes["busy"] += 1

    while time.monotonic() < arena.deadline:
        key = rng.choice(KEYS)
        timeout = rng.choice(TIMEOUTS)
        fail = rng.random() < P_FAIL
        op = rng.choice(("async with", "acquire_async", "run", "guard", "non-blocking"))
        try:
            if rng.random() < P_CANCEL:
                seconds = rng.choice(CANCEL_AFTER)
                if await within(partial(one, key, timeout, fail, op), seconds):
                    journal.outcomes["cancelled"] += 1
                    continue
            else:
                await one(key, timeout, fail, op)
        except LockTimeout:
            journal.outcomes["timeout"] += 1
        except Aborted:
            journal.outcomes["aborted"] += 1
        except Boom:
            journal.outcomes["failed"] += 1
        else:
            journal.outcomes["ok"] += 1


def asyncio_runtime(arena: Arena, name: str) -> None:
    async def main() -> None:
        await asyncio.gather(
            *(
                task_worker(arena, f"{name}-{i}", "asyncio", within_asyncio)
                for i in range(TASKS_PER_RUNTIME)
            )
        )

    asyncio.run(main())


def trio_runtime(arena: Arena, name: str) -> None:
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i in range(TASKS_PER_RUNTIME):
                nursery.start_soon(task_worker, arena, f"{name}-{i}", "trio", within_trio)

    trio.run(main)


# -- the run and its checks --------------------------------------------------------------------


def stress_seed() -> int:
    chosen = os.environ.get("KEYEDLOCK_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


def run_stress(seconds: float, threads: Threads) -> None:
    seed = stress_seed()
    print(f"keyedlock stress: seed={seed} (KEYEDLOCK_SEED={seed} replays it), {seconds} s")
    arena = Arena(KeyedLock(), time.monotonic() + seconds, seed)
    started = [
        *(threads.start(partial(thread_worker, arena, f"thread-{i}")) for i in range(THREADS)),
        *(threads.start(partial(asyncio_runtime, arena, f"loop-{i}")) for i in range(LOOPS)),
        *(threads.start(partial(trio_runtime, arena, f"trio-{i}")) for i in range(TRIO_RUNS)),
    ]
    for handle in started:
        handle.result(timeout=seconds + WAIT)  # re-raises a worker's unexpected exception

    context = f"(seed={seed})"
    lock = arena.lock
    assert len(lock) == 0, f"keys left behind {context}"
    assert all(lock.waiters(key) == 0 for key in KEYS), context

    intervals: dict[str, list[tuple[int, int]]] = {key: [] for key in KEYS}
    for journal in arena.journals:
        for key, start, end in journal.intervals:
            intervals[key].append((start, end))
    for key, spans in intervals.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two holders of {key!r} at once {context}"

    for key in KEYS:
        completed = sum(journal.completed[key] for journal in arena.journals)
        assert arena.counters[key] == completed, f"lost updates on {key!r} {context}"

    totals: dict[str, Counter[str]] = {}
    for journal in arena.journals:
        totals.setdefault(journal.runtime, Counter()).update(journal.outcomes)
    print(f"keyedlock stress outcomes: {totals}")
    for runtime in ("thread", "asyncio", "trio"):
        assert totals[runtime]["ok"] > 0, f"{runtime} workers never got a key {context}"


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
def test_stress(threads: Threads) -> None:
    run_stress(2.5, threads)


LONG = os.environ.get("KEYEDLOCK_STRESS") == "long"
LONG_SECONDS = 300.0 if LONG else 30.0


@pytest.mark.slow
@pytest.mark.timeout(LONG_SECONDS + 120)
@pytest.mark.usefixtures("switch_interval")
def test_stress_long(threads: Threads) -> None:
    run_stress(LONG_SECONDS, threads)
