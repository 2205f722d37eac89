"""Finishing what an interrupt stopped, even when another interrupt lands meanwhile.

An ``except BaseException`` clause of keyedlock finishes or undoes what an
interrupt stopped half-way (a hand-off, a withdrawal, a call to conclude),
then raises the interrupt again. That recovery is Python code too: a second
interrupt (Ctrl-C pressed twice, another signal handler that raises) may land
in it. :func:`complete` runs such a step again until one run of it gets to
its end, and only then raises the interrupt that came last.
"""

from __future__ import annotations

from collections.abc import Callable

from .._ki import internal

__all__ = ["complete"]


@internal
def complete(step: Callable[..., object], *args: object) -> None:
    """Call ``step(*args)`` until one call returns, whatever interrupts land in it; then
    raise the last of them, if any.

    ``step`` must be idempotent: a call after an interrupted one finishes what
    that one began (every recovery step of keyedlock is). An error that is no
    interrupt (an :class:`Exception`) is raised at once, as it is. A signal can
    still land at this function's first instruction and at its loop's jump: one
    instruction each, where the recovery was the whole step.
    """
    interrupt: BaseException | None = None
    while True:
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
