"""Group ``keyedlock``: the keyed lock against plain locks and hand-written keyed locks.

Scenarios:

* uncontended ``async with`` / ``with`` on one key and on a fresh key each
  time (asyncio, threads), against the runtime's own lock, the hand-written
  dict-of-locks pattern (both usual shapes; the faster is used) and
  ``aiologic.Lock``;
* uncontended ``async with`` under trio against ``trio.Lock``: the default (it
  checkpoints, as trio.Lock does) and ``fast_acquire=True`` (no checkpoint);
* contended hand-off: many tasks (or a few threads) on one key, each holding
  it across a yield;
* memory per held key, and what is left once every key is released.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from time import perf_counter_ns

import aiologic
import trio
from harness import (
    Case,
    Check,
    Group,
    Ratio,
    ScenarioResult,
    Settings,
    Table,
    TimedScenario,
)

from keyedlock import KeyedLock

from ._handrolled import (
    AsyncKeyedLockClass,
    AsyncKeyedLockCM,
    ThreadKeyedLockClass,
    ThreadKeyedLockCM,
)

KEY = "user:42"

#: Labels shared by the scenarios (ratios refer to cases by label).
OURS = "keyedlock"
OURS_FAST = "keyedlock fast_acquire=True"
HAND_CLASS = "hand-rolled (class)"
HAND_CM = "hand-rolled (contextmanager)"
HAND = (HAND_CLASS, HAND_CM)
AIOLOGIC = "aiologic.Lock"

AsyncCM = AbstractAsyncContextManager[object]
SyncCM = AbstractContextManager[object]
Measure = Callable[[int], int]


def _keys(n: int, fresh: bool) -> list[str]:
    """The keys of a loop of ``n``: one key ``n`` times, or ``n`` distinct keys."""
    return [f"user:{i}" for i in range(n)] if fresh else [KEY] * n


# -- uncontended, asyncio --------------------------------------------------------


def _asyncio_keyed(make: Callable[[], Callable[[Hashable], AsyncCM]], fresh: bool) -> Measure:
    """``async with locks(key): pass`` in one asyncio task, ``n`` times."""

    def measure(n: int) -> int:
        keys = _keys(n, fresh)

        async def main() -> int:
            locks = make()
            start = perf_counter_ns()
            for key in keys:
                async with locks(key):
                    pass
            return perf_counter_ns() - start

        return asyncio.run(main())

    return measure


def _asyncio_bare(make: Callable[[], AsyncCM], fresh: bool) -> Measure:
    """``async with lock: pass`` on one lock, over the same loop of keys."""

    def measure(n: int) -> int:
        keys = _keys(n, fresh)

        async def main() -> int:
            lock = make()
            start = perf_counter_ns()
            for _key in keys:
                async with lock:
                    pass
            return perf_counter_ns() - start

        return asyncio.run(main())

    return measure


def _asyncio_uncontended(fresh: bool) -> TimedScenario:
    which = "a fresh key each time" if fresh else "one key"
    suffix = "fresh" if fresh else "same"
    return TimedScenario(
        name=f"asyncio-{suffix}",
        title=f"Uncontended `async with`, asyncio, {which}",
        description=(
            f"One asyncio task acquires and releases {which}, in a loop "
            "(`async with lock(key): pass`). The plain locks have no key: they "
            "reuse one lock over the same loop of keys."
        ),
        cases=[
            Case(OURS, _asyncio_keyed(KeyedLock, fresh)),
            Case("asyncio.Lock", _asyncio_bare(asyncio.Lock, fresh)),
            Case(HAND_CLASS, _asyncio_keyed(AsyncKeyedLockClass, fresh)),
            Case(HAND_CM, _asyncio_keyed(AsyncKeyedLockCM, fresh)),
            Case(AIOLOGIC, _asyncio_bare(aiologic.Lock, fresh)),
        ],
        ratios=[
            Ratio(OURS, ("asyncio.Lock",), 2.5),
            Ratio(OURS, HAND, 0.8, short=f"{OURS} vs hand-rolled"),
            Ratio(OURS, (AIOLOGIC,), 0.5),
        ],
        ops=50_000,
        quick_ops=3_000,
        unit="acquire",
    )


# -- uncontended, threads --------------------------------------------------------


def _thread_keyed(make: Callable[[], Callable[[Hashable], SyncCM]], fresh: bool) -> Measure:
    """``with locks(key): pass`` in this thread, ``n`` times."""

    def measure(n: int) -> int:
        keys = _keys(n, fresh)
        locks = make()
        start = perf_counter_ns()
        for key in keys:
            with locks(key):
                pass
        return perf_counter_ns() - start

    return measure


def _thread_bare(make: Callable[[], SyncCM], fresh: bool) -> Measure:
    """``with lock: pass`` on one lock, over the same loop of keys."""

    def measure(n: int) -> int:
        keys = _keys(n, fresh)
        lock = make()
        start = perf_counter_ns()
        for _key in keys:
            with lock:
                pass
        return perf_counter_ns() - start

    return measure


def _thread_uncontended(fresh: bool) -> TimedScenario:
    which = "a fresh key each time" if fresh else "one key"
    suffix = "fresh" if fresh else "same"
    return TimedScenario(
        name=f"thread-{suffix}",
        title=f"Uncontended `with`, threads, {which}",
        description=(
            f"One thread (no event loop) acquires and releases {which}, in a loop "
            "(`with lock(key): pass`). The plain locks reuse one lock."
        ),
        cases=[
            Case(OURS, _thread_keyed(KeyedLock, fresh)),
            Case("threading.Lock", _thread_bare(threading.Lock, fresh)),
            Case(HAND_CLASS, _thread_keyed(ThreadKeyedLockClass, fresh)),
            Case(HAND_CM, _thread_keyed(ThreadKeyedLockCM, fresh)),
            Case(AIOLOGIC, _thread_bare(aiologic.Lock, fresh)),
        ],
        ratios=[
            Ratio(OURS, ("threading.Lock",)),
            Ratio(OURS, HAND, 0.8, short=f"{OURS} vs hand-rolled"),
            Ratio(OURS, (AIOLOGIC,), 0.8),
        ],
        ops=50_000,
        quick_ops=3_000,
        unit="acquire",
    )


# -- uncontended, trio -----------------------------------------------------------


def _trio_measure(loop: Callable[[list[str]], Awaitable[int]]) -> Measure:
    def measure(n: int) -> int:
        keys = _keys(n, fresh=False)

        async def main() -> int:
            return await loop(keys)

        return trio.run(main)

    return measure


async def _trio_ours(keys: list[str]) -> int:
    locks = KeyedLock()
    start = perf_counter_ns()
    for key in keys:
        async with locks(key):
            pass
    return perf_counter_ns() - start


async def _trio_ours_fast(keys: list[str]) -> int:
    locks = KeyedLock(fast_acquire=True)
    start = perf_counter_ns()
    for key in keys:
        async with locks(key):
            pass
    return perf_counter_ns() - start


async def _trio_lock(keys: list[str]) -> int:
    lock = trio.Lock()
    start = perf_counter_ns()
    for _key in keys:
        async with lock:
            pass
    return perf_counter_ns() - start


async def _trio_checkpoint(keys: list[str]) -> int:
    checkpoint = trio.lowlevel.cancel_shielded_checkpoint
    start = perf_counter_ns()
    for _key in keys:
        await checkpoint()
    return perf_counter_ns() - start


def _trio_uncontended() -> TimedScenario:
    return TimedScenario(
        name="trio",
        title="Uncontended `async with`, trio, one key",
        description=(
            "One trio task acquires and releases one key in a loop. "
            f"`{OURS}` is the default: like trio.Lock, an acquire checkpoints (it "
            "raises Cancelled in a cancelled scope, and yields once after taking a "
            f"free key). `{OURS_FAST}` takes a free key without them (like "
            "asyncio.Lock; for code that measured it needs to). `checkpoint only` is "
            "trio's yield alone, no lock."
        ),
        cases=[
            Case(OURS, _trio_measure(_trio_ours)),
            Case(OURS_FAST, _trio_measure(_trio_ours_fast)),
            Case("trio.Lock", _trio_measure(_trio_lock)),
            Case("checkpoint only", _trio_measure(_trio_checkpoint)),
        ],
        ratios=[
            Ratio(OURS, ("trio.Lock",), 1.1),
            Ratio(OURS_FAST, ("trio.Lock",)),
        ],
        ops=30_000,
        quick_ops=2_000,
        unit="acquire",
    )


# -- contended hand-off ----------------------------------------------------------

TASKS = 100
THREADS = 4


def _asyncio_contended(make: Callable[[], Callable[[], AsyncCM]]) -> Measure:
    """TASKS tasks, each ``async with lock: await asyncio.sleep(0)`` n / TASKS times."""

    def measure(n: int) -> int:
        rounds = max(1, n // TASKS)

        async def main() -> int:
            enter = make()
            go = asyncio.Event()

            async def worker() -> None:
                await go.wait()
                for _ in range(rounds):
                    async with enter():
                        await asyncio.sleep(0)

            tasks = [asyncio.create_task(worker()) for _ in range(TASKS)]
            await asyncio.sleep(0)  # every worker now waits for `go`
            start = perf_counter_ns()
            go.set()
            await asyncio.gather(*tasks)
            return perf_counter_ns() - start

        return asyncio.run(main())

    return measure


def _keyed_async(make: Callable[[], Callable[[Hashable], AsyncCM]]) -> Callable[[], AsyncCM]:
    locks = make()
    return lambda: locks(KEY)


def _bare_async(make: Callable[[], AsyncCM]) -> Callable[[], AsyncCM]:
    lock = make()
    return lambda: lock


def _asyncio_contended_scenario() -> TimedScenario:
    return TimedScenario(
        name="asyncio-contended",
        title=f"Contended hand-off, asyncio, {TASKS} tasks on one key",
        description=(
            f"{TASKS} asyncio tasks on one key, each repeating "
            "`async with lock(key): await asyncio.sleep(0)`; every release hands "
            "the key to a waiting task. Throughput in acquisitions per second."
        ),
        cases=[
            Case(OURS, _asyncio_contended(lambda: _keyed_async(KeyedLock))),
            Case("asyncio.Lock", _asyncio_contended(lambda: _bare_async(asyncio.Lock))),
            Case(HAND_CLASS, _asyncio_contended(lambda: _keyed_async(AsyncKeyedLockClass))),
            Case(HAND_CM, _asyncio_contended(lambda: _keyed_async(AsyncKeyedLockCM))),
            Case(AIOLOGIC, _asyncio_contended(lambda: _bare_async(aiologic.Lock))),
        ],
        ratios=[
            Ratio(OURS, ("asyncio.Lock",), 0.9, throughput=True),
            Ratio(OURS, HAND, throughput=True, short=f"{OURS} vs hand-rolled"),
            Ratio(OURS, (AIOLOGIC,), throughput=True),
        ],
        ops=20_000,
        quick_ops=2_000,
        unit="acquire",
        throughput=True,
    )


def _trio_contended(make: Callable[[], Callable[[], AsyncCM]]) -> Measure:
    """TASKS trio tasks, each ``async with lock: await checkpoint()`` n / TASKS times."""

    def measure(n: int) -> int:
        rounds = max(1, n // TASKS)

        async def main() -> int:
            enter = make()
            go = trio.Event()
            ready = 0
            all_ready = trio.Event()

            async def worker() -> None:
                nonlocal ready
                ready += 1
                if ready == TASKS:
                    all_ready.set()
                await go.wait()
                for _ in range(rounds):
                    async with enter():
                        await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                for _ in range(TASKS):
                    nursery.start_soon(worker)
                await all_ready.wait()
                start = perf_counter_ns()
                go.set()
            return perf_counter_ns() - start

        return trio.run(main)

    return measure


def _trio_contended_scenario() -> TimedScenario:
    return TimedScenario(
        name="trio-contended",
        title=f"Contended hand-off, trio, {TASKS} tasks on one key",
        description=(
            f"{TASKS} trio tasks on one key, each repeating "
            "`async with lock(key): await trio.lowlevel.checkpoint()` (what "
            "`trio.sleep(0)` does)."
        ),
        cases=[
            Case(OURS, _trio_contended(lambda: _keyed_async(KeyedLock))),
            Case("trio.Lock", _trio_contended(lambda: _bare_async(trio.Lock))),
        ],
        ratios=[Ratio(OURS, ("trio.Lock",), 0.9, throughput=True)],
        ops=10_000,
        quick_ops=1_000,
        unit="acquire",
        throughput=True,
    )


#: Yield the GIL and the CPU inside the critical section, so that the other
#: threads run and queue up. (``time.sleep(0)`` would do too, but on Linux it
#: sleeps for the timer slack, 50 us by default, which would swamp the locks.)
_yield_thread: Callable[[], object] = getattr(os, "sched_yield", lambda: time.sleep(0))


def _thread_contended(make: Callable[[], Callable[[], SyncCM]]) -> Measure:
    """THREADS threads, each ``with lock: os.sched_yield()`` n / THREADS times."""

    def measure(n: int) -> int:
        rounds = max(1, n // THREADS)
        enter = make()
        barrier = threading.Barrier(THREADS + 1)

        def worker() -> None:
            barrier.wait(timeout=60)
            for _ in range(rounds):
                with enter():
                    _yield_thread()

        threads = [threading.Thread(target=worker) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        barrier.wait(timeout=60)
        start = perf_counter_ns()
        for thread in threads:
            thread.join(timeout=600)
            if thread.is_alive():
                raise RuntimeError("a benchmark thread did not finish in 600 s")
        return perf_counter_ns() - start

    return measure


def _keyed_sync(make: Callable[[], Callable[[Hashable], SyncCM]]) -> Callable[[], SyncCM]:
    locks = make()
    return lambda: locks(KEY)


def _bare_sync(make: Callable[[], SyncCM]) -> Callable[[], SyncCM]:
    lock = make()
    return lambda: lock


def _thread_contended_scenario() -> TimedScenario:
    return TimedScenario(
        name="thread-contended",
        title=f"Contended hand-off, {THREADS} threads on one key",
        description=(
            f"{THREADS} threads on one key, each repeating "
            "`with lock(key): os.sched_yield()` (the yield releases the GIL, so "
            "the other threads queue up). keyedlock and aiologic.Lock hand the "
            "lock over in FIFO order; threading.Lock (also inside the hand-rolled "
            "pattern) is not fair: the releasing thread may take it straight "
            "back (barging)."
        ),
        cases=[
            Case(OURS, _thread_contended(lambda: _keyed_sync(KeyedLock))),
            Case("threading.Lock", _thread_contended(lambda: _bare_sync(threading.Lock))),
            Case(HAND_CLASS, _thread_contended(lambda: _keyed_sync(ThreadKeyedLockClass))),
            Case(HAND_CM, _thread_contended(lambda: _keyed_sync(ThreadKeyedLockCM))),
            Case(AIOLOGIC, _thread_contended(lambda: _bare_sync(aiologic.Lock))),
        ],
        ratios=[
            Ratio(OURS, ("threading.Lock",), throughput=True),
            Ratio(OURS, HAND, throughput=True, short=f"{OURS} vs hand-rolled"),
            Ratio(OURS, (AIOLOGIC,), 1.0, throughput=True),
        ],
        ops=8_000,
        quick_ops=400,
        unit="acquire",
        throughput=True,
    )


# -- memory ------------------------------------------------------------------------

#: At most this many bytes per held key.
BYTES_PER_KEY_LIMIT = 250
#: "Nothing retained" once the churn is over, give or take allocator noise.
CHURN_SLACK = 1024


@dataclass(frozen=True)
class _Footprint:
    held: int  # bytes allocated while every key is held
    released: int  # bytes still allocated once every key is released
    left: int  # keys the lock still tracks then
    churned: int  # bytes still allocated after as many cycles of other keys


class _Holder:
    """Hold many keys at once, release them, then churn through other keys."""

    def __init__(self, label: str, target: bool) -> None:
        self.label = label
        self.target = target

    def footprint(self, keys: Sequence[str], churn: Sequence[str]) -> _Footprint:
        raise NotImplementedError


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


class _OursThreads(_Holder):
    """``klock.acquire(key)`` for each key in this thread (owner: the thread id)."""

    def footprint(self, keys: Sequence[str], churn: Sequence[str]) -> _Footprint:
        lock = KeyedLock()
        base = _traced()
        for key in keys:
            lock.acquire(key)
        held = _traced() - base
        for key in keys:
            lock.release(key)
        released = _traced() - base
        left = len(lock)
        for key in churn:
            lock.acquire(key)
            lock.release(key)
        return _Footprint(held, released, left, _traced() - base)


class _OursAsyncio(_Holder):
    """``await klock.acquire_async(key)`` for each key in one task (owner: the task)."""

    def footprint(self, keys: Sequence[str], churn: Sequence[str]) -> _Footprint:
        async def main() -> _Footprint:
            lock = KeyedLock()
            base = _traced()
            for key in keys:
                await lock.acquire_async(key)
            held = _traced() - base
            for key in keys:
                lock.release(key)
            released = _traced() - base
            left = len(lock)
            for key in churn:
                await lock.acquire_async(key)
                lock.release(key)
            return _Footprint(held, released, left, _traced() - base)

        return asyncio.run(main())


class _HandThreads(_Holder):
    """The hand-written threaded pattern: entered contexts kept until released."""

    def footprint(self, keys: Sequence[str], churn: Sequence[str]) -> _Footprint:
        lock = ThreadKeyedLockClass()
        holds: list[AbstractContextManager[None] | None] = [None] * len(keys)
        base = _traced()
        for i, key in enumerate(keys):
            hold = lock(key)
            hold.__enter__()
            holds[i] = hold
        held = _traced() - base
        for i, entered in enumerate(holds):
            assert entered is not None
            entered.__exit__(None, None, None)
            holds[i] = None
        released = _traced() - base
        left = len(lock)
        for key in churn:
            with lock(key):
                pass
        return _Footprint(held, released, left, _traced() - base)


class _HandAsyncio(_Holder):
    """The hand-written asyncio pattern: entered contexts kept until released."""

    def footprint(self, keys: Sequence[str], churn: Sequence[str]) -> _Footprint:
        async def main() -> _Footprint:
            lock = AsyncKeyedLockClass()
            holds: list[AbstractAsyncContextManager[None] | None] = [None] * len(keys)
            base = _traced()
            for i, key in enumerate(keys):
                hold = lock(key)
                await hold.__aenter__()
                holds[i] = hold
            held = _traced() - base
            for i, entered in enumerate(holds):
                assert entered is not None
                await entered.__aexit__(None, None, None)
                holds[i] = None
            released = _traced() - base
            left = len(lock)
            for key in churn:
                async with lock(key):
                    pass
            return _Footprint(held, released, left, _traced() - base)

        return asyncio.run(main())


@dataclass(frozen=True)
class MemoryScenario:
    """Bytes per held key (tracemalloc), and what remains after release."""

    name: str = "memory"
    title: str = "Memory per held key"
    keys: int = 10_000
    quick_keys: int = 2_000

    def run(self, settings: Settings) -> ScenarioResult:
        count = settings.size(self.keys, self.quick_keys)
        holders: list[_Holder] = [
            _OursThreads(f"{OURS}, threads (`acquire(key)`)", target=True),
            _OursAsyncio(f"{OURS}, asyncio (`await acquire_async(key)`)", target=True),
            _HandThreads(f"{HAND_CLASS}, threads", target=False),
            _HandAsyncio(f"{HAND_CLASS}, asyncio", target=False),
        ]
        keys = [f"held:{i}" for i in range(count)]
        churn = [f"churn:{i}" for i in range(count)]
        result = ScenarioResult(
            self.name,
            self.title,
            (
                f"{count:,} distinct keys are acquired and held at once, then all "
                "released, then as many other keys are acquired and released one "
                "at a time (churn). tracemalloc counts the bytes allocated since just "
                "before the first acquire (the key strings exist before). "
                "CPython's dict keeps its table when entries are deleted and "
                "resizes it at a later insertion that needs room: that table is "
                "what *after release* shows (the hand-rolled pattern, a dict too, "
                "shows the same), and *after churn* shows it given back."
            ),
        )
        rows = []
        data: dict[str, object] = {}
        for holder in holders:
            holder.footprint(keys[:100], churn[:100])  # warm-up: lazy imports, caches
            gc.collect()
            tracemalloc.start()
            try:
                fp = holder.footprint(keys, churn)
            finally:
                tracemalloc.stop()
            per_key = fp.held / count
            rows.append(
                [
                    holder.label,
                    f"{per_key:.0f}",
                    f"{fp.released:,}",
                    str(fp.left),
                    f"{fp.churned:,}",
                ]
            )
            data[holder.label] = dataclasses.asdict(fp) | {"keys": count}
            if holder.target:
                limit = BYTES_PER_KEY_LIMIT
                result.checks.append(
                    Check(
                        self.name,
                        f"{holder.label}: bytes per held key",
                        f"{per_key:.0f} B",
                        f"<= {limit} B",
                        per_key <= limit,
                    )
                )
                result.checks += [
                    Check(
                        self.name,
                        f"{holder.label}: keys left after release",
                        str(fp.left),
                        "0",
                        fp.left == 0,
                    ),
                    Check(
                        self.name,
                        f"{holder.label}: bytes retained after release",
                        f"{fp.released:,} B",
                        "report",
                        None,
                    ),
                    Check(
                        self.name,
                        f"{holder.label}: bytes retained after the churn",
                        f"{fp.churned:,} B",
                        f"<= {CHURN_SLACK:,} B",
                        fp.churned <= CHURN_SLACK,
                    ),
                ]
        result.tables.append(
            Table(
                [
                    "holder",
                    "bytes/key held",
                    "after release (B)",
                    "keys left",
                    "after churn (B)",
                ],
                rows,
                frozenset({1, 2, 3, 4}),
            )
        )
        result.data = data
        return result


GROUP = Group(
    name="keyedlock",
    title="Keyed lock",
    description=(
        "`klock(key)` against the locks it replaces: the runtime's own lock, "
        "the dict-of-locks pattern written by hand, and aiologic's lock "
        "(one lock for threads and async code alike)."
    ),
    scenarios=[
        _asyncio_uncontended(fresh=False),
        _asyncio_uncontended(fresh=True),
        _thread_uncontended(fresh=False),
        _thread_uncontended(fresh=True),
        _trio_uncontended(),
        _asyncio_contended_scenario(),
        _trio_contended_scenario(),
        _thread_contended_scenario(),
        MemoryScenario(),
    ],
    order=10,
    packages=("trio", "aiologic"),
)
