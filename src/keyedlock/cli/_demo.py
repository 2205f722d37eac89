"""``python -m keyedlock demo``: the double-charge race of a wallet checkout.

A wallet holds 100. Several checkouts of 30 arrive at once; each reads the
balance, does some I/O (a yield to the scheduler), then charges if the
balance it read covers the amount. Without a lock a checkout reads the
balance before others write it: more checkouts charge than the balance
allows, and a later write overwrites an earlier one (with ten checkouts,
usually all ten charge and the balance says 70; with more, the runs differ).
With ``klock("wallet:<id>")`` around the read-check-write exactly three
checkouts succeed and the balance ends at 10, in every runtime.

The runtimes: threads, asyncio tasks, trio tasks, all three at once in one
process (``_demo_inprocess``), and separate processes (``_demo_processes``:
the balance lives in a file that forked worker processes read and write, and
the lock is a :class:`~keyedlock.FileKeyedLock` on a lock file beside it, as
``klock`` only excludes the callers of one process). The wallet and the race
they all run are in ``_demo_wallet``.

Each runtime is a :class:`Scenario`: a function running the checkouts
without or with the lock and returning the :class:`Outcome`.
:data:`SCENARIOS` lists them in table order; a new runtime (other hosts, say)
is one more entry there. This module runs them and prints the report: the
race and its one-line fix, the table of outcomes, and why the unlocked runs
went wrong, told from the figures of each.
"""

from __future__ import annotations

import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ._demo_inprocess import need_trio, run_asyncio, run_mixed, run_threads, run_trio
from ._demo_processes import need_processes, run_processes
from ._demo_wallet import (
    AMOUNT,
    START_BALANCE,
    Outcome,
    Scenario,
    ScenarioSkipped,
    expected_outcome,
)
from ._output import Writer

__all__ = ["CHECKOUTS", "SCENARIOS", "run_demo"]

#: Concurrent checkouts per run, unless ``--checkouts`` says otherwise.
CHECKOUTS = 10


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


def _code(out: Writer) -> None:
    """The race and its one-line fix, side by side."""
    left = ["without a lock:", "", *_RACE]
    right = ["with keyedlock, one line more:", "", _FIX, *(f"    {line}" for line in _RACE)]
    width = max(len(line) for line in left) + 4
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ""
        b = right[i] if i < len(right) else ""
        print(f"    {a.ljust(width)}{b}".rstrip(), file=out)


def _say(out: Writer, text: str, *, indent: str = "") -> None:
    """Print a paragraph, wrapped to the width of a terminal (never inside a `code span`).

    ``indent`` starts the first line; the lines after it are indented two more columns.
    """
    glued = re.sub(r"`[^`]*`", lambda code: code.group().replace(" ", "\0"), text)
    wrapped = textwrap.fill(
        glued, _WIDTH, initial_indent=indent, subsequent_indent=indent + "  " if indent else ""
    )
    print(wrapped.replace("\0", " "), file=out)


#: Why a checkout without a lock can go wrong, true of any run.
_WHY = (
    "Why: without a lock a checkout can read the balance before another one writes it; "
    "both charge against the same balance and the later write overwrites the earlier "
    "(a lost update)."
)


def _figures(outcome: Outcome, checkouts: int) -> str:
    """What the figures of one wrong unlocked run show; every statement follows from them.

    A checkout that charges writes the balance it read minus :data:`AMOUNT`, and the
    balance only ever goes down: a final balance of ``START_BALANCE - k * AMOUNT`` reflects
    ``k`` charges, and the other charges were overwritten (lost updates).
    """
    charges, balance = outcome.charges, outcome.balance
    charged = charges * AMOUNT
    if charges == checkouts:
        who = {1: "the checkout charged", 2: "both checkouts charged"}.get(
            checkouts, f"all {checkouts} checkouts charged"
        )
        text = f"{who}, {charged} against a balance of {START_BALANCE}."
    else:
        text = (
            f"{charges} of the {checkouts} checkouts charged, {charged} against a balance of "
            f"{START_BALANCE} (the other {checkouts - charges} read a balance below {AMOUNT})."
        )
    reflected, rest = divmod(START_BALANCE - balance, AMOUNT)
    if rest or not 0 < reflected < charges:
        return f"{text} The balance ended at {balance}."
    lost = charges - reflected
    text += (
        f" The balance ended at {balance}, which reflects only {_plural(reflected, 'charge')}: "
        f"{lost} of the {charges} charges left no trace in it (lost updates)."
    )
    if reflected == 1:
        text += (
            f" The last write wins: it came from a checkout that read {START_BALANCE} before "
            f"any charge was written, and its {START_BALANCE - AMOUNT} overwrote all the others."
        )
    return text


def _lost_updates(out: Writer, rows: list[_Row], checkouts: int) -> None:
    """Why the unlocked runs went wrong, then the figures of each (runs alike share a line)."""
    _say(out, _WHY + " In these runs:")
    runtimes: dict[Outcome, list[str]] = {}
    for row in rows:
        if row.lock == "none" and row.outcome is not None and not row.correct:
            runtimes.setdefault(row.outcome, []).append(row.runtime)
    for outcome, names in runtimes.items():
        _say(out, f"{', '.join(names)}: {_figures(outcome, checkouts)}", indent="  ")


def run_demo(
    out: Writer, *, checkouts: int = CHECKOUTS, scenarios: list[Scenario] | None = None
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
    unlocked = [r for r in rows if r.lock == "none" and r.outcome is not None]
    unlocked_wrong = [r for r in unlocked if not r.correct]
    locked_rows = [r for r in rows if r.lock == "keyedlock"]
    locked_wrong = [r for r in locked_rows if not r.correct]
    if unlocked_wrong:
        over = sum(
            1 for r in unlocked_wrong if r.outcome and r.outcome.charges * AMOUNT > START_BALANCE
        )
        wrong = len(unlocked_wrong)
        if over == wrong:
            went = "charged more than the balance allowed"
        elif over == 0:
            went = "left a wrong balance"
        else:
            went = (
                f"went wrong: {over} charged more than the balance allowed, "
                f"{wrong - over} left a wrong balance"
            )
        print(f"Without a lock, {wrong} of {len(unlocked)} runs {went}.", file=out)
        _lost_updates(out, rows, checkouts)
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
