"""Finishing what an interrupt stopped, even when another interrupt lands meanwhile.

An ``except BaseException`` clause of keyedlock finishes or undoes what an
interrupt stopped half-way (a hand-off, a withdrawal, a call to conclude),
then raises the interrupt again. That recovery is Python code too: a second
interrupt (Ctrl-C pressed twice, another signal handler that raises) may land
in it. :func:`complete` runs such a step again until one run of it gets to
its end (twice at most: a third interrupt stops it), and only then raises
the interrupt that came last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from .._ki import internal

__all__ = ["claim", "complete"]

K = TypeVar("K")
V = TypeVar("V")


#: How many times ``complete`` runs a step at most. The interrupt after that (the third,
#: counting the one that made the recovery start) is raised at once: Ctrl-C pressed again
#: stops a step that blocks (on a manager that does not answer, say).
RUNS: Final = 2


@internal
def complete(step: Callable[..., object], *args: object) -> None:
    """Call ``step(*args)`` until one call returns, whatever interrupts land in it (at most
    RUNS calls); then raise the last of them, if any.

    ``step`` must be idempotent: a call after an interrupted one finishes what
    that one began (every recovery step of keyedlock is). An error that is no
    interrupt (an :class:`Exception`) is raised at once, as it is. A signal can
    still land at this function's first instruction, right after a step returned
    (the step is then run again, harmlessly) and at its loop's jump: one
    instruction each, where the recovery was the whole step.
    """
    interrupt: BaseException | None = None
    for _ in range(RUNS):
        try:
            step(*args)
        except Exception:
            raise
        except BaseException as exc:  # interrupted again: the step starts over
            interrupt = exc
            continue
        break
    if interrupt is not None:
        raise interrupt


def claim(records: dict[K, V], claims: dict[K, V], owner: K) -> V | None:
    """``owner``'s record, moved from ``records`` to ``claims`` in one step (no call in it:
    no signal splits it), or the one an interrupted earlier run of the same recovery step
    claimed there; None if there is neither.

    For a recovery step that must act on a record once it took it away from
    the others (the renewal thread, another thread's release): the step deletes
    its claim from ``claims`` once it has acted, so that a run of it again
    after an interrupt (see :func:`complete`) finishes what the first began.
    """
    record = claims.get(owner)
    if record is None:
        try:
            record = records[owner]
            del records[owner]
            claims[owner] = record
        except KeyError:
            return None
    return record
