"""The manager's records: client processes, their connections, their holds, and the tables.

Each request that takes a key gets a client-chosen serial (unique within its
process); the service tracks every hold of a process (:class:`Proc`) from the
request's arrival until its release, in one of three phases: PENDING (the
request is being served: queued, or granted but not yet reported), LIVE
(granted and reported: the client owns it) and GONE (released). A hold whose
client no longer wants it is marked *void* (see :class:`_VoidAware`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

from ..._core import GRANTED, WAITING, FlightTable, Hold, KeyTable
from ..._ki import internal
from ._protocol import NAME_LIMIT

__all__ = [
    "GONE",
    "LIVE",
    "PENDING",
    "Conn",
    "FlightRecordTable",
    "LockRecordTable",
    "Proc",
    "RemoteHold",
    "moot_try",
    "sent_name",
]

PENDING: Final = 0
LIVE: Final = 1
GONE: Final = 2


def sent_name(name: object) -> str | None:
    """An owner's name as a client sent it: a str (cut to NAME_LIMIT characters), else None."""
    return name[:NAME_LIMIT] if isinstance(name, str) else None


@internal
class RemoteHold(Hold):
    """A hold of a client process: the core's Hold plus the server's bookkeeping."""

    __slots__ = ("delivering", "key", "name", "phase", "proc", "serial", "table", "void")

    key: Hashable
    table: KeyTable
    proc: Proc
    serial: int
    phase: int
    void: bool
    #: The owner's thread or task name, as its process gave it (for statistics).
    name: str | None
    #: Granted to a try (no wait), with the reply on its way: its client may have given
    #: up on the try (an async acquire's first try, past its grace) and asks again, as a
    #: wait, which hands the try on (see moot_try) instead of calling it a re-acquire.
    delivering: bool

    def __init__(
        self,
        proc: Proc,
        owner: int,
        serial: int,
        table: KeyTable,
        key: Hashable,
        name: str | None = None,
    ):
        super().__init__((proc.pid, owner))
        self.name = name
        self.proc = proc
        self.serial = serial
        self.table = table
        self.key = key
        self.phase = PENDING
        self.void = False
        self.delivering = False
        # Not WAITING: a withdrawal before the hold is queued changes nothing.
        self._state = GRANTED

    def drop(self) -> None:
        """Under the manager's mutex: leave the bookkeeping (the caller releases it)."""
        self.phase = GONE
        self.proc.holds.pop(self.serial, None)


@internal
class _VoidAware(KeyTable):
    """A table that refuses to keep a void hold queued.

    A hold is registered (under the server mutex) before its thread queues
    it in the core. If it becomes void in between, the canceller's
    withdrawal finds it not yet queued; the check after queueing closes that
    window: whichever of the two withdraws it while it is WAITING wakes it.
    """

    __slots__ = ()

    def enqueue(self, key: Hashable, hold: Hold, wake: Callable[[], bool]) -> bool:
        if super().enqueue(key, hold, wake):
            return True
        if isinstance(hold, RemoteHold) and hold.void and self.withdraw(key, hold) == WAITING:
            wake()
        return False


class LockRecordTable(_VoidAware):
    __slots__ = ()


class FlightRecordTable(_VoidAware, FlightTable):
    __slots__ = ()


class Proc:
    """A client process: its holds (PENDING and LIVE, by serial) and how it is watched."""

    __slots__ = ("conns", "dead", "holds", "pid", "pidfd", "released")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.holds: dict[int, RemoteHold] = {}
        self.conns = 0
        self.dead = False
        self.pidfd: int | None = None
        #: The tickets of its latest releases by key: a repeat of one changes nothing.
        self.released: deque[int] = deque(maxlen=64)

    def live_hold(self, serial: int, table: KeyTable) -> RemoteHold | None:
        """Its hold ``serial``, if that holds its key of ``table`` now (LIVE)."""
        hold = self.holds.get(serial)
        if hold is None or hold.phase != LIVE or hold.table is not table:
            return None
        return hold


class Conn:
    """The server's view of one client connection."""

    __slots__ = ("cancelled", "granted", "id", "proc")

    def __init__(self, conn_id: int, proc: Proc) -> None:
        self.id = conn_id
        self.proc = proc
        # A cancel that arrived before its request (they travel on two connections).
        self.cancelled: int | None = None
        # The hold the reply being sent grants (LIVE): released if it cannot be delivered.
        self.granted: RemoteHold | None = None


def moot_try(holder: Hold, hold: RemoteHold) -> RemoteHold | None:
    """``holder`` if it is a try of ``hold``'s owner granted with its reply still on its
    way (see :attr:`RemoteHold.delivering`), which ``hold``, a wait or a join of that owner,
    makes moot: the client gave up on the try (an async acquire's first try, past its
    grace) and shut its connection before it asked again, so the reply cannot reach it.
    The key (or the call's lead) then goes on at once, as the failed delivery would have
    it, instead of the owner queueing behind its own try (a re-acquire, which the table
    refuses). None otherwise."""
    if isinstance(holder, RemoteHold) and holder.delivering and holder._owner == hold._owner:
        return holder
    return None
