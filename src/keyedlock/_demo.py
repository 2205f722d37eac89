"""``python -m keyedlock demo``: the double-charge race of a wallet checkout.

A wallet holds 100. Several checkouts of 30 arrive at once; each reads the
balance, does some I/O (a yield to the scheduler), then charges if the
balance it read covers the amount. Without a lock every checkout reads 100
before any of them writes: all ten charge (300 taken from a balance of 100)
and, as the last write wins, the balance says 70. With
``klock("wallet:<id>")`` around the read-check-write exactly three checkouts
succeed and the balance ends at 10, in every runtime.

Each runtime is a :class:`Scenario`: a function running the checkouts
without or with the lock and returning the :class:`Outcome`.
:data:`SCENARIOS` lists them in table order; a new runtime (other processes,
other hosts) is one more entry there.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TextIO

from ._keyed import KeyedLock, LockContext, klock

__all__ = [
    "SCENARIOS",
    "Outcome",
    "Scenario",
    "ScenarioSkipped",
    "Wallet",
    "need_trio",
    "run_demo",
]

START_BALANCE = 100
AMOUNT = 30
CHECKOUTS = 10
#: How long a thread "does I/O" between reading and writing the balance.
#: Long against thread start-up jitter, so that unlocked threads reliably
#: all read before any of them writes.
THREAD_IO_SECONDS = 0.005
#: Bound, in seconds, on every wait of the demo's threads (start barrier, joins).
START_TIMEOUT = 10.0


@dataclass
class Wallet:
    """The shared state every checkout reads and writes."""

    balance: int = START_BALANCE
    charges: int = 0

    def commit(self, seen: int, amount: int) -> bool:
        """Charge ``amount`` if the balance ``seen`` earlier covered it (no re-check)."""
        if seen < amount:
            return False
        self.balance = seen - amount
        self.charges += 1
        return True


@dataclass(frozen=True)
class Outcome:
    """The end state of one scenario run."""

    charges: int
    balance: int


class ScenarioSkipped(Exception):
    """A scenario cannot run here; the message says how to enable it."""


@dataclass(frozen=True)
class Scenario:
    """One row pair of the table: a runtime, run without and with the lock.

    ``run(locked, checkouts)`` performs ``checkouts`` concurrent checkouts on
    a fresh :class:`Wallet` and returns its :class:`Outcome`. ``prepare``,
    if given, runs once before the timed runs (imports, pools); it raises
    :class:`ScenarioSkipped` if the runtime is not available here.
    """

    runtime: str
    run: Callable[[bool, int], Outcome]
    prepare: Callable[[], None] | None = None
    #: One line printed under the table when the runtime's name needs explaining.
    note: str = ""


def _guard(lock: KeyedLock | None, key: str) -> LockContext | nullcontext[None]:
    """``lock(key)``, or a context that does nothing for the unlocked run.

    Both work with ``with`` in a thread and ``async with`` in a task.
    """
    return lock(key) if lock is not None else nullcontext()


# -- threads -------------------------------------------------------------------


def run_threads(locked: bool, checkouts: int) -> Outcome:
    """``checkouts`` threads, each ``with klock(key):`` around read, I/O, write."""
    wallet = Wallet()
    lock = klock if locked else None
    start = threading.Barrier(checkouts)

    def checkout() -> None:
        start.wait(START_TIMEOUT)
        with _guard(lock, "wallet:alice"):
            seen = wallet.balance
            time.sleep(THREAD_IO_SECONDS)
            wallet.commit(seen, AMOUNT)

    threads = [threading.Thread(target=checkout) for _ in range(checkouts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(START_TIMEOUT + checkouts)
    return Outcome(wallet.charges, wallet.balance)


# -- asyncio -------------------------------------------------------------------


def run_asyncio(locked: bool, checkouts: int) -> Outcome:
    """``checkouts`` asyncio tasks, each ``async with klock(key):`` around read, await, write."""
    wallet = Wallet()
    lock = klock if locked else None

    async def checkout() -> None:
        async with _guard(lock, "wallet:alice"):
            seen = wallet.balance
            await asyncio.sleep(0)  # yield to the loop, as real I/O would
            wallet.commit(seen, AMOUNT)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(checkouts):
                tg.create_task(checkout())

    asyncio.run(main())
    return Outcome(wallet.charges, wallet.balance)


# -- trio ----------------------------------------------------------------------


def need_trio() -> None:
    """Import trio ahead of the timed run; skip the scenario if it is not installed."""
    try:
        importlib.import_module("trio")
    except ImportError:
        raise ScenarioSkipped("trio is not installed (pip install 'keyedlock[trio]')") from None


def run_trio(locked: bool, checkouts: int) -> Outcome:
    """``checkouts`` trio tasks, each ``async with klock(key):`` around read, await, write."""
    import trio
    import trio.lowlevel

    wallet = Wallet()
    lock = klock if locked else None

    async def checkout() -> None:
        async with _guard(lock, "wallet:alice"):
            seen = wallet.balance
            await trio.lowlevel.checkpoint()  # yield to the scheduler, as real I/O would
            wallet.commit(seen, AMOUNT)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(checkouts):
                nursery.start_soon(checkout)

    trio.run(main)
    return Outcome(wallet.charges, wallet.balance)


# -- all three at once -----------------------------------------------------------


def run_mixed(locked: bool, checkouts: int) -> Outcome:
    """Threads, an asyncio loop and a trio run charging one wallet through one lock.

    The checkouts are split across plain threads, asyncio tasks (in a loop
    in its own thread) and trio tasks (in a trio run in its own thread); the
    same ``klock("wallet:alice")`` excludes all of them from each other.
    """
    import trio

    wallet = Wallet()
    lock = klock if locked else None
    n_async = checkouts // 3
    n_trio = checkouts // 3
    n_threads = checkouts - n_async - n_trio
    start = threading.Barrier(n_threads + 2)

    def thread_checkout() -> None:
        start.wait(START_TIMEOUT)
        with _guard(lock, "wallet:alice"):
            seen = wallet.balance
            time.sleep(THREAD_IO_SECONDS)
            wallet.commit(seen, AMOUNT)

    async def asyncio_checkout() -> None:
        async with _guard(lock, "wallet:alice"):
            seen = wallet.balance
            await asyncio.sleep(THREAD_IO_SECONDS)
            wallet.commit(seen, AMOUNT)

    async def asyncio_main() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(n_async):
                tg.create_task(asyncio_checkout())

    async def trio_checkout() -> None:
        async with _guard(lock, "wallet:alice"):
            seen = wallet.balance
            await trio.sleep(THREAD_IO_SECONDS)
            wallet.commit(seen, AMOUNT)

    async def trio_main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(n_trio):
                nursery.start_soon(trio_checkout)

    def asyncio_thread() -> None:
        start.wait(START_TIMEOUT)
        asyncio.run(asyncio_main())

    def trio_thread() -> None:
        start.wait(START_TIMEOUT)
        trio.run(trio_main)

    workers = [threading.Thread(target=thread_checkout) for _ in range(n_threads)]
    workers.append(threading.Thread(target=asyncio_thread))
    workers.append(threading.Thread(target=trio_thread))
    for w in workers:
        w.start()
    for w in workers:
        w.join(START_TIMEOUT + checkouts)
    return Outcome(wallet.charges, wallet.balance)


#: The runtimes of the table, in order. Append a :class:`Scenario` to add one.
SCENARIOS: list[Scenario] = [
    Scenario("threads", run_threads),
    Scenario("asyncio", run_asyncio),
    Scenario("trio", run_trio, prepare=need_trio),
    Scenario(
        "all three",
        run_mixed,
        prepare=need_trio,
        note="all three: threads, an asyncio loop and a trio run charging one wallet at once",
    ),
]


# -- the table -------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    runtime: str
    lock: str
    outcome: Outcome | None
    expected: Outcome
    millis: float
    note: str = ""

    @property
    def correct(self) -> bool:
        return self.outcome == self.expected


def expected_outcome(checkouts: int) -> Outcome:
    """What serialized checkouts end with."""
    charges = min(checkouts, START_BALANCE // AMOUNT)
    return Outcome(charges, START_BALANCE - charges * AMOUNT)


def _rows(scenarios: list[Scenario], checkouts: int) -> Iterator[_Row]:
    expected = expected_outcome(checkouts)
    for scenario in scenarios:
        if scenario.prepare is not None:
            try:
                scenario.prepare()
            except ScenarioSkipped as skipped:
                yield _Row(scenario.runtime, "-", None, expected, 0.0, f"skipped: {skipped}")
                continue
        for locked in (False, True):
            t0 = time.perf_counter()
            outcome = scenario.run(locked, checkouts)
            millis = (time.perf_counter() - t0) * 1000
            label = "keyedlock" if locked else "none"
            yield _Row(scenario.runtime, label, outcome, expected, millis)


_HEADER = ("runtime", "lock", "charges", "balance", "expected", "correct?", "time")


def _cells(row: _Row) -> tuple[str, ...]:
    out = row.outcome
    assert out is not None
    return (
        row.runtime,
        row.lock,
        str(out.charges),
        str(out.balance),
        str(row.expected.balance),
        "yes" if row.correct else "NO",
        f"{row.millis:.1f} ms",
    )


def run_demo(
    out: TextIO, *, checkouts: int = CHECKOUTS, scenarios: list[Scenario] | None = None
) -> int:
    """Run every scenario without and with the lock, print the table; 0 if the lock held."""
    if checkouts < 1:
        raise ValueError(f"checkouts must be >= 1, got {checkouts}")
    expected = expected_outcome(checkouts)
    print("keyedlock demo: the double-charge race of a wallet checkout", file=out)
    print(
        f"balance {START_BALANCE}, {checkouts} concurrent checkouts of {AMOUNT} each: "
        "read the balance, do I/O, charge if the balance read covers the amount.",
        file=out,
    )
    print(
        f"Run one at a time they make {expected.charges} charge(s) "
        f"and leave a balance of {expected.balance}.",
        file=out,
    )
    print(file=out)

    chosen = scenarios if scenarios is not None else SCENARIOS
    rows = list(_rows(chosen, checkouts))
    table = [_cells(r) for r in rows if r.outcome is not None]
    widths = [max(len(cells[i]) for cells in [_HEADER, *table]) for i in range(len(_HEADER))]
    widths[0] = max(widths[0], *(len(r.runtime) for r in rows))
    right = {2, 3, 4, 6}  # numbers align right

    def line(cells: tuple[str, ...]) -> str:
        parts = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    print(line(_HEADER), file=out)
    print(line(tuple("-" * w for w in widths)), file=out)
    for row in rows:
        if row.outcome is None:
            print(f"{row.runtime.ljust(widths[0])}  {row.note}", file=out)
        else:
            print(line(_cells(row)), file=out)

    print(file=out)
    ran = {r.runtime for r in rows if r.outcome is not None}
    notes = [s.note for s in chosen if s.note and s.runtime in ran]
    for note in notes:
        print(note, file=out)
    if notes:
        print(file=out)
    unlocked_wrong = [r for r in rows if r.lock == "none" and not r.correct]
    locked_rows = [r for r in rows if r.lock == "keyedlock"]
    locked_wrong = [r for r in locked_rows if not r.correct]
    if unlocked_wrong:
        print(
            f"Without a lock, {len(unlocked_wrong)} of "
            f"{sum(r.lock == 'none' for r in rows)} runs charged more than the balance allowed.",
            file=out,
        )
    if locked_wrong:
        runtimes = ", ".join(r.runtime for r in locked_wrong)
        print(f"With keyedlock the result was WRONG in: {runtimes}", file=out)
        return 1
    print(
        f"With keyedlock all {len(locked_rows)} runs were correct: "
        'klock("wallet:alice") ran the checkouts one at a time.',
        file=out,
    )
    return 0
