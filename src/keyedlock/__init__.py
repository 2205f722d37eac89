"""keyedlock: keyed locks and single-flight for threads, asyncio and trio.

::

    from keyedlock import klock

    with klock("wallet:42"):          # threads
        ...

    async with klock("wallet:42"):    # asyncio or trio
        ...
"""

from __future__ import annotations

from ._errors import Abandoned as Abandoned
from ._errors import Aborted as Aborted
from ._errors import KeyedLockError as KeyedLockError
from ._errors import LeaseLost as LeaseLost
from ._errors import LockTimeout as LockTimeout
from ._errors import QueueFull as QueueFull
from ._filelock import FileKeyedLock as FileKeyedLock
from ._lock import KeyedLock as KeyedLock
from ._lock import LockContext as LockContext
from ._lock import klock as klock
from ._singleflight import Result as Result
from ._singleflight import SingleFlight as SingleFlight
from ._singleflight import flight as flight
from ._statistics import FlightStatistics as FlightStatistics
from ._statistics import LockStatistics as LockStatistics
from ._statistics import Owner as Owner

__all__ = [
    "Abandoned",
    "Aborted",
    "FileKeyedLock",
    "FlightStatistics",
    "KeyedLock",
    "KeyedLockError",
    "LeaseLost",
    "LockContext",
    "LockStatistics",
    "LockTimeout",
    "Owner",
    "QueueFull",
    "Result",
    "SingleFlight",
    "flight",
    "klock",
]

__version__ = "0.1.0"
