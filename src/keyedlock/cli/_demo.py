"""``python -m keyedlock demo``: the double-charge race of a wallet checkout.

A wallet holds 100. Several checkouts of 30 arrive at once; each reads the
balance, does some I/O (a yield to the scheduler), then charges if the
balance it read covers the amount. Without a lock every checkout reads 100
before any of them writes: all ten charge (300 taken from a balance of 100)
and, as the last write wins, the balance says 70. With
``klock("wallet:<id>")`` around the read-check-write exactly three checkouts
succeed and the balance ends at 10, in every runtime.

The runtimes: threads, asyncio tasks, trio tasks, all three at once in one
process, and separate processes. In the processes row the balance lives in a
file that forked worker processes read and write, and the lock is a
:class:`~keyedlock.FileKeyedLock` on a lock file beside it (``klock`` only
excludes the callers of one process).

Each runtime is a :class:`Scenario`: a function running the checkouts
without or with the lock and returning the :class:`Outcome`.
:data:`SCENARIOS` lists them in table order; a new runtime (other hosts, say)
is one more entry there.
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import os
import re
import shlex
import tempfile
import textwrap
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from keyedlock import FileKeyedLock, KeyedLock, LockContext, klock

if TYPE_CHECKING:
    import ctypes
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Barrier

__all__ = [
    "SCENARIOS",
    "Outcome",
    "Scenario",
    "ScenarioSkipped",
    "Wallet",
    "install_hint",
    "need_processes",
    "need_trio",
    "run_demo",
    "source_checkout",
]

START_BALANCE = 100
AMOUNT = 30
CHECKOUTS = 10
#: How long a thread "does I/O" between reading and writing the balance.
#: Long against thread start-up jitter, so that unlocked threads reliably
#: all read before any of them writes.
THREAD_IO_SECONDS = 0.005
#: How long a worker process "does I/O" between reading and writing the balance
#: file. Long against the spread of the processes' wake-ups from the start
#: barrier, so that unlocked processes reliably all read before any of them writes.
PROCESS_IO_SECONDS = 0.01
#: At most this many worker processes; more checkouts are split between them.
MAX_PROCESSES = 10
#: Bound, in seconds, on every wait of the demo's threads and processes
#: (start barrier, joins).
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


def _guard(lock: KeyedLock | FileKeyedLock | None, key: str) -> LockContext | nullcontext[None]:
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


def source_checkout(start: Path) -> Path | None:
    """The root of the keyedlock source tree that ``start`` lies in, or None.

    The nearest of ``start`` and its parents holding a ``pyproject.toml`` of
    the project named keyedlock.
    """
    for folder in (start, *start.parents):
        try:
            with open(folder / "pyproject.toml", "rb") as f:
                project = tomllib.load(f).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(project, dict) and project.get("name") == "keyedlock":
            return folder
    return None


def install_hint(extra: str, *, cwd: Path | None = None, package: Path | None = None) -> str:
    """The command that installs keyedlock's optional dependencies ``extra``.

    From a source checkout (the working directory ``cwd`` is in one, or the
    package was imported from one: ``package``, this package's folder) it
    installs that checkout: ``pip install ".[trio]"`` at its root. Elsewhere
    it names both the released package and the checkout form.
    """
    cwd = Path.cwd() if cwd is None else cwd
    package = Path(__file__).resolve().parent if package is None else package
    root = source_checkout(cwd) or source_checkout(package)
    if root is None:
        return f"pip install 'keyedlock[{extra}]', or in a clone: pip install \".[{extra}]\""
    if root == cwd:
        return f'pip install ".[{extra}]"'
    return "pip install " + shlex.quote(f"{root}[{extra}]")


def need_trio() -> None:
    """Import trio ahead of the timed run; skip the scenario if it is not installed."""
    try:
        importlib.import_module("trio")
    except ImportError:
        raise ScenarioSkipped(f"trio is not installed ({install_hint('trio')})") from None


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


# -- processes -------------------------------------------------------------------


def need_processes() -> None:
    """Skip the scenario without the ``fork`` start method or without :class:`FileKeyedLock`.

    :class:`FileKeyedLock` needs Linux (open file description locks); on other
    platforms constructing one raises NotImplementedError and the row says so.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ScenarioSkipped("needs the 'fork' start method, which this platform lacks")
    try:
        importlib.import_module("multiprocessing.synchronize")  # for the start barrier
    except ImportError as exc:
        raise ScenarioSkipped(f"multiprocessing has no barrier here: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="keyedlock-demo-") as tmp:
        try:
            lock = FileKeyedLock(os.path.join(tmp, "keys.lock"))
        except NotImplementedError as exc:
            raise ScenarioSkipped(f"FileKeyedLock is not available here: {exc}") from None
        del lock  # closes the lock file before its directory goes


def _read_balance(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read())


def _write_balance(path: str, balance: int) -> None:
    # Write a new file and rename it over the old one: a reader sees the old
    # balance or the new one, never a half-written file.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{balance}\n")
    os.replace(tmp, path)


def _process_checkouts(
    wallet: str,
    user: str,
    lock: FileKeyedLock | None,
    start: Barrier,
    charged: ctypes.Array[ctypes.c_byte],
    slots: range,
) -> None:
    """One worker process: its checkouts, one after another, on the balance file.

    ``charged[slot]`` is set to 1 for each checkout of ``slots`` that charged
    (each slot belongs to one process: the tally itself never races).
    """
    start.wait(START_TIMEOUT)
    for slot in slots:
        with _guard(lock, f"wallet:{user}"):
            seen = _read_balance(wallet)
            time.sleep(PROCESS_IO_SECONDS)  # the I/O between read and write
            if seen >= AMOUNT:
                _write_balance(wallet, seen - AMOUNT)
                charged[slot] = 1


def run_processes(locked: bool, checkouts: int) -> Outcome:
    """Forked processes charging one balance file, ``with lock(key):`` a FileKeyedLock.

    One process per checkout, up to :data:`MAX_PROCESSES`; beyond that the
    checkouts are split between them. The balance is a file in a temporary
    directory and the lock a :class:`FileKeyedLock` on a lock file in the
    same directory. Every process is joined; one still running at the
    deadline is killed.
    """
    ctx = multiprocessing.get_context("fork")
    n_procs = min(checkouts, MAX_PROCESSES)
    with tempfile.TemporaryDirectory(prefix="keyedlock-demo-") as tmp:
        wallet = os.path.join(tmp, "balance")
        _write_balance(wallet, START_BALANCE)
        lock = FileKeyedLock(os.path.join(tmp, "keys.lock")) if locked else None
        start = ctx.Barrier(n_procs)
        charged = ctx.RawArray("b", checkouts)  # zeroed; one slot per checkout
        workers: list[BaseProcess] = [
            ctx.Process(
                target=_process_checkouts,
                args=(wallet, "alice", lock, start, charged, range(i, checkouts, n_procs)),
                name=f"keyedlock-demo-checkout-{i}",
                daemon=True,
            )
            for i in range(n_procs)
        ]
        started: list[BaseProcess] = []
        try:
            for w in workers:
                w.start()
                started.append(w)
            # Locked, the checkouts run one at a time: about checkouts * PROCESS_IO_SECONDS.
            deadline = time.monotonic() + START_TIMEOUT + 2 * checkouts * PROCESS_IO_SECONDS
            for w in started:
                w.join(max(0.0, deadline - time.monotonic()))
        finally:
            for w in started:
                if w.is_alive():
                    w.kill()
                w.join(START_TIMEOUT)
            del lock  # closes the lock file before its directory goes
        failed = {w.name: w.exitcode for w in workers if w.exitcode != 0}
        if failed:
            raise RuntimeError(f"checkout processes failed (exit codes): {failed}")
        return Outcome(sum(charged), _read_balance(wallet))


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
    Scenario(
        "processes",
        run_processes,
        prepare=need_processes,
        note=(
            "processes: forked processes charging one balance file, "
            "locked with a FileKeyedLock on a lock file beside it"
        ),
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


#: The checkout every row runs, without a lock and with one (printed side by side).
_RACE = (
    "seen = wallet.balance",
    "io()  # others run meanwhile",
    f"if seen >= {AMOUNT}:",
    f"    wallet.balance = seen - {AMOUNT}",
)
_FIX = 'with klock(f"wallet:{user}"):'
#: Paragraphs are wrapped to this many columns.
_WIDTH = 88


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _code(out: TextIO) -> None:
    """The race and its one-line fix, side by side."""
    left = ["without a lock:", "", *_RACE]
    right = ["with keyedlock, one line more:", "", _FIX, *(f"    {line}" for line in _RACE)]
    width = max(len(line) for line in left) + 4
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"    {a.ljust(width)}{b}".rstrip(), file=out)


def _say(out: TextIO, text: str) -> None:
    """Print a paragraph, wrapped to the width of a terminal (never inside a `code span`)."""
    glued = re.sub(r"`[^`]*`", lambda code: code.group().replace(" ", "\0"), text)
    print(textwrap.fill(glued, _WIDTH).replace("\0", " "), file=out)


def _lost_updates(rows: list[_Row], checkouts: int) -> str:
    """Why the unlocked runs went wrong, with the figures of one that did."""
    all_read_first = Outcome(checkouts, START_BALANCE - AMOUNT)
    if checkouts > 1 and any(r.lock == "none" and r.outcome == all_read_first for r in rows):
        n = checkouts
        return (
            f"Why {n} charges left {START_BALANCE - AMOUNT}: every checkout read {START_BALANCE} "
            f"before any of them wrote, so each one charged and set the balance to "
            f"{START_BALANCE - AMOUNT} ({START_BALANCE} minus {AMOUNT}). The last write wins: "
            f"{n * AMOUNT} was charged "
            f"against a balance of {START_BALANCE}, and {n - 1} of the {n} charges left no "
            "trace in the balance (lost updates)."
        )
    return (
        "Why: without a lock a checkout can read the balance before another one writes it; "
        "both charge against the same balance and the later write overwrites the earlier "
        "(a lost update)."
    )


def run_demo(
    out: TextIO, *, checkouts: int = CHECKOUTS, scenarios: list[Scenario] | None = None
) -> int:
    """Run every scenario without and with the lock, print the table; 0 if the lock held."""
    if checkouts < 1:
        raise ValueError(f"checkouts must be >= 1, got {checkouts}")
    expected = expected_outcome(checkouts)
    print("keyedlock demo: the double-charge race of a wallet checkout", file=out)
    print(file=out)
    _say(
        out,
        f"A wallet holds {START_BALANCE}; {_plural(checkouts, 'checkout')} of {AMOUNT} arrive "
        "at once. Each reads the balance, does I/O, and charges if the balance it read covers "
        "the amount:",
    )
    print(file=out)
    _code(out)
    print(file=out)
    _say(
        out,
        "In asyncio and trio the line is `async with klock(...)`; across processes, "
        "`with lock(...)` on a FileKeyedLock.",
    )
    print(file=out)
    _say(
        out,
        f"Run one at a time the checkouts make {_plural(expected.charges, 'charge')} and leave "
        f"a balance of {expected.balance}. Each runtime, without and with the lock:",
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
    if ran:
        notes.append(
            "time: how long the run took. With the lock the checkouts take turns, so their I/O "
            "pauses add up (threads and processes sleep a few ms in each; asyncio and trio "
            "checkouts only yield to their loop)."
        )
    for note in notes:
        _say(out, note)
    if notes:
        print(file=out)
    unlocked_wrong = [r for r in rows if r.lock == "none" and not r.correct]
    locked_rows = [r for r in rows if r.lock == "keyedlock"]
    locked_wrong = [r for r in locked_rows if not r.correct]
    if unlocked_wrong:
        print(
            f"Without a lock, {len(unlocked_wrong)} of {sum(r.lock == 'none' for r in rows)} "
            "runs charged more than the balance allowed.",
            file=out,
        )
        _say(out, _lost_updates(rows, checkouts))
        print(file=out)
    if locked_wrong:
        runtimes = ", ".join(r.runtime for r in locked_wrong)
        print(f"With keyedlock the result was WRONG in: {runtimes}", file=out)
        return 1
    _say(
        out,
        f"With keyedlock all {len(locked_rows)} runs were correct: "
        'the lock on "wallet:alice" ran the checkouts one at a time.',
    )
    return 0
