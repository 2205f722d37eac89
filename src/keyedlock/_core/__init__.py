"""Runtime-free state machines: nothing here parks or wakes a caller itself.

The core never imports asyncio, trio or a runtime adapter (a test checks it).
This module is its package-internal API: the rest of keyedlock imports these
names from here, and uses tables only through their methods.
"""

from __future__ import annotations

from ._complete import claim, complete
from ._flighttable import MISS, FlightTable
from ._hold import (
    ABORTED,
    CANCELLED,
    GRANTED,
    IDLE,
    RELEASED,
    WAITING,
    Hold,
    Record,
    WaitQueue,
    decided,
    fresh_copy,
    outcome_of,
    queue_full_error,
    reacquire_error,
    released_error,
    state_of,
)
from ._keyhold import BAD_EXIT, ENTERED, EXITED, NEW, REUSE, KeyHold
from ._keytable import KeyTable, guard_is_owned

__all__ = [
    "ABORTED",
    "BAD_EXIT",
    "CANCELLED",
    "ENTERED",
    "EXITED",
    "GRANTED",
    "IDLE",
    "MISS",
    "NEW",
    "RELEASED",
    "REUSE",
    "WAITING",
    "FlightTable",
    "Hold",
    "KeyHold",
    "KeyTable",
    "Record",
    "WaitQueue",
    "claim",
    "complete",
    "decided",
    "fresh_copy",
    "guard_is_owned",
    "outcome_of",
    "queue_full_error",
    "reacquire_error",
    "released_error",
    "state_of",
]
