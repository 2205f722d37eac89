"""The demo's wallet and the checkout race every scenario of ``keyedlock demo`` runs.

A wallet holds :data:`START_BALANCE`. Several checkouts of :data:`AMOUNT`
arrive at once; each reads the balance, does some I/O (a yield to the
scheduler), then charges if the balance it read covers the amount
(:meth:`Wallet.commit`: no re-check). Run one at a time they end with
:func:`expected_outcome`.

A :class:`Scenario` runs the checkouts in one runtime, without or with the
lock (:func:`guarded` gives the lock's context, or one that does nothing),
and returns the :class:`Outcome`; it raises :class:`ScenarioSkipped` when
its runtime is not available here.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

from keyedlock import FileKeyedLock, KeyedLock, LockContext

__all__ = [
    "AMOUNT",
    "START_BALANCE",
    "START_TIMEOUT",
    "Outcome",
    "Scenario",
    "ScenarioSkipped",
    "Wallet",
    "expected_outcome",
    "guarded",
]

START_BALANCE = 100
AMOUNT = 30
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


def expected_outcome(checkouts: int) -> Outcome:
    """What serialized checkouts end with."""
    charges = min(checkouts, START_BALANCE // AMOUNT)
    return Outcome(charges, START_BALANCE - charges * AMOUNT)


def guarded(lock: KeyedLock | FileKeyedLock | None, key: str) -> LockContext | nullcontext[None]:
    """``lock(key)``, or a context that does nothing for the unlocked run.

    Both work with ``with`` in a thread and ``async with`` in a task.
    """
    return lock(key) if lock is not None else nullcontext()
