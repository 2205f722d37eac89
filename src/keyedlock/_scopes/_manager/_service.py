"""The manager's service: its tables, the bookkeeping of every process's holds, the requests.

The manager keeps its state in the same core as every other scope (a
:class:`~keyedlock._core.KeyTable` per lock, a
:class:`~keyedlock._core.FlightTable` per single-flight group). Every
connection is served by a thread of its own, and a request that has to wait
parks that thread with the thread adapter until the core grants, aborts or
withdraws it: a blocking acquire is one request and one reply, whatever
happens in between, and waiters of all processes queue in one FIFO per key.

Bookkeeping (the records are in :mod:`._records`). Every hold of a process
is tracked from its request's arrival until its release, PENDING, LIVE,
then GONE. A hold whose client no longer wants it (a cancel request, or the
process died) is marked *void*: a void hold that is granted anyway is
released by the thread serving it instead of being reported. Every phase
change and every release happens under one mutex, so each hold is released
exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from time import monotonic

from ..._core import (
    ABORTED,
    GRANTED,
    MISS,
    WAITING,
    FlightTable,
    Hold,
    KeyTable,
    fresh_copy,
    outcome_of,
    reacquire_error,
    released_error,
)
from ..._errors import Abandoned, shown_key
from ..._ki import internal
from ..._log import logger
from ..._runtime import wait_thread
from .._abandon import abandoned_error
from ._introspect import Introspection
from ._protocol import Reply
from ._records import (
    GONE,
    LIVE,
    PENDING,
    Conn,
    FlightRecordTable,
    LockRecordTable,
    Proc,
    RemoteHold,
    moot_try,
    sent_name,
)

__all__ = ["Service"]


@internal
class Service(Introspection):
    """The tables and the holds of one manager process, and the requests that change them."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.tables: list[KeyTable] = []
        self.procs: dict[int, Proc] = {}
        self.conns: dict[int, Conn] = {}

    def bury(self, proc: Proc) -> None:
        """``proc`` died: release its LIVE holds, withdraw its queued waits."""
        with self.mutex:
            if proc.dead:
                return
            proc.dead = True
            if self.procs.get(proc.pid) is proc:
                del self.procs[proc.pid]
            freed = []
            for hold in list(proc.holds.values()):
                if hold.phase == LIVE:
                    hold.drop()
                    hold.table.release(hold.key, hold)
                    freed.append(hold.key)
                else:  # PENDING: the thread serving it finishes it (it sees void)
                    self._void(hold)
        if freed:
            logger.warning(
                "process %d ended holding %d key(s) of the manager (%s); "
                "each passed to its next waiter",
                proc.pid,
                len(freed),
                ", ".join(shown_key(key) for key in freed[:10])
                + (", ..." if len(freed) > 10 else ""),
            )

    # -- shared helpers (under the mutex) ---------------------------------------

    @staticmethod
    def _void(hold: RemoteHold) -> None:
        """Under the mutex: nobody wants ``hold`` any more; withdraw it if it is queued."""
        hold.void = True
        if hold.table.withdraw(hold.key, hold) == WAITING:
            hold._wake()

    def _moot(self, holder: Hold, hold: RemoteHold) -> bool:
        """Under the mutex: True if ``holder`` is a try that ``hold`` makes moot (see
        :func:`~._records.moot_try`), handed on now."""
        moot = moot_try(holder, hold)
        if moot is None:
            return False
        if moot.phase == LIVE:
            moot.drop()
            moot.table.release(moot.key, moot)
        return True

    def _register(self, state: Conn, hold: RemoteHold) -> bool:
        """Under the mutex: False if the request was cancelled before it arrived."""
        if state.proc.dead or state.cancelled == hold.serial:
            state.cancelled = None
            return False
        return True

    def _table(self, tid: int) -> KeyTable:
        try:
            return self.tables[tid]
        except (IndexError, TypeError):
            raise ValueError(f"no lock or single-flight object with id {tid!r}") from None

    def _wait(self, hold: RemoteHold, timeout: float | None) -> int:
        """Park this thread until ``hold`` (registered, PENDING) is decided."""
        try:
            return wait_thread(hold.table, hold.key, hold, timeout)
        except BaseException:
            with self.mutex:
                hold.drop()
            raise

    # -- creating objects -----------------------------------------------------

    def new_lock(self, state: Conn, max_waiters: int | None) -> int:
        with self.mutex:
            self.tables.append(LockRecordTable(max_waiters))
            return len(self.tables) - 1

    def new_flight(self, state: Conn, ttl: float) -> int:
        with self.mutex:
            self.tables.append(FlightRecordTable(ttl))
            return len(self.tables) - 1

    # -- locks ----------------------------------------------------------------

    def acquire(
        self,
        state: Conn,
        tid: int,
        key: Hashable,
        owner: int,
        serial: int,
        timeout: float | None,
        name: str | None,
        taken: bool,
    ) -> object:
        """Take ``key``, waiting up to ``timeout`` (None: forever, 0: try once)."""
        table = self._table(tid)
        hold = RemoteHold(state.proc, owner, serial, table, key, sent_name(name))
        hold._watched = taken is True  # (by acquire(): may outlive its owner, see left_held)
        with self.mutex:
            if not self._register(state, hold):
                return Reply.CANCELLED
            holder = table.take(key, hold)
            if holder is not hold and timeout != 0 and self._moot(holder, hold):
                holder = table.take(key, hold)
            if holder is hold:
                hold.phase = LIVE
                hold._since = monotonic()
                state.proc.holds[serial] = hold
                state.granted = hold
                hold.delivering = timeout == 0  # (a try: see RemoteHold.delivering)
                return Reply.GRANTED
            if holder._owner == hold._owner and timeout != 0:
                raise reacquire_error(key)
            if timeout == 0:
                return Reply.BUSY
            state.proc.holds[serial] = hold
        decided = self._wait(hold, timeout)
        with self.mutex:
            if decided == GRANTED:
                state.granted = hold
                return self._granted(hold)
            hold.drop()
            if decided == ABORTED:
                outcome = outcome_of(hold)
                if isinstance(outcome, Abandoned):  # (see left_held)
                    raise fresh_copy(outcome)
                return (Reply.ABORTED, outcome)
            return Reply.CANCELLED if hold.void else Reply.BUSY

    def _granted(self, hold: RemoteHold) -> int:
        """Under the mutex: report a granted PENDING hold, unless it is void."""
        if hold.void:
            if hold.phase != GONE:
                hold.drop()
                hold.table.release(hold.key, hold)
            return Reply.CANCELLED
        if hold.phase == GONE:  # released by release(key) in the meantime
            return Reply.GRANTED
        hold.phase = LIVE
        hold._since = monotonic()
        return Reply.GRANTED

    def release(
        self,
        state: Conn,
        tid: int,
        key: Hashable,
        serial: int | None,
        abort: bytes | None,
        ticket: int | None,
    ) -> None:
        """Release ``key``: the caller's own hold ``serial``, or whoever holds it (None)."""
        table = self._table(tid)
        with self.mutex:
            if serial is None:
                released = state.proc.released
                if ticket is not None and ticket in released:
                    return  # a repeat, after an interrupt, of a release done already
                holder = table.holder(key)
                if holder is None:
                    raise RuntimeError(f"release of key {shown_key(key)}, which is not held")
                if ticket is not None:
                    released.append(ticket)
            else:
                holder = state.proc.live_hold(serial, table)
                if holder is None:
                    raise released_error(key, table.holder(key) is not None)
            assert isinstance(holder, RemoteHold)
            holder.drop()
            table.release(key, holder, abort)

    def left_held(
        self, state: Conn, tid: int, ended: list[tuple[int, str, bool]]
    ) -> list[tuple[str, bool, Hashable]]:
        """The caller's process saw owners end: ``ended`` lists (owner, name, abandon).
        Returns (name, abandon, key) for each key of lock ``tid`` such an owner still holds,
        taken with acquire() (a context's hold is released by its exit, wherever it runs).
        With ``abandon`` (a task's end) each is abandoned (see ``KeyTable.abandon``): it
        stays held, for ``release(key)`` or its process's end to free."""
        table = self._table(tid)
        pid = state.proc.pid
        owners = {(pid, owner): (name, abandon) for owner, name, abandon in ended}
        left: list[tuple[str, bool, Hashable]] = []
        with self.mutex:
            for hold in list(state.proc.holds.values()):  # (one pass for the whole batch)
                seen = owners.get(hold._owner)  # type: ignore[call-overload]
                held_here = hold.phase == LIVE and hold.table is table
                if seen is None or not held_here or not hold._watched:
                    continue
                name, abandon = seen
                if not abandon:
                    left.append((name, False, hold.key))
                elif table.abandon(hold.key, hold, abandoned_error(hold.key, name)):
                    left.append((name, True, hold.key))
        return left

    def cancel(self, state: Conn, conn_id: int, serial: int, give_back: bool) -> None:
        """Withdraw the request ``serial`` sent on the connection ``conn_id``.

        A waiting request is withdrawn (its thread answers CANCELLED, giving
        back a grant that races with this). With ``give_back``, what it was
        already granted is released here and now, reported or not: its
        client will not use it. One that has not arrived yet (it travels on
        another connection) is refused when it does.
        """
        with self.mutex:
            proc = state.proc
            target = self.conns.get(conn_id)
            if target is not None and target.proc is not proc:
                return
            hold = proc.holds.get(serial)
            if hold is None:
                # (a late copy of an older request's cancel keeps the mark of a newer one)
                if target is not None and (target.cancelled or 0) < serial:
                    target.cancelled = serial
            elif hold.phase == PENDING:
                self._void(hold)
                if give_back and hold.table.holder(hold.key) is hold:  # granted, unreported
                    hold.drop()
                    hold.table.release(hold.key, hold)
            elif give_back and hold.phase == LIVE:
                hold.drop()
                hold.table.release(hold.key, hold)

    # -- single-flight ----------------------------------------------------------

    def join(
        self,
        state: Conn,
        fid: int,
        key: Hashable,
        owner: int,
        serial: int,
        wait: bool,
        name: str | None,
    ) -> object:
        """Lead the call for ``key`` or, if ``wait``, wait for its outcome."""
        table = self._table(fid)
        assert isinstance(table, FlightTable)
        if table.ttl:
            kept = table.cached(key, monotonic())
            if kept is not MISS:
                return (Reply.OUTCOME, (False, kept))
        hold = RemoteHold(state.proc, owner, serial, table, key, sent_name(name))
        with self.mutex:
            if not self._register(state, hold):
                return Reply.CANCELLED
            leader = table.take(key, hold)
            if leader is not hold and wait and self._moot(leader, hold):
                leader = table.take(key, hold)
            if leader is hold:
                hold.phase = LIVE
                hold._since = monotonic()
                state.proc.holds[serial] = hold
                state.granted = hold
                hold.delivering = not wait  # (a try: see RemoteHold.delivering)
                return Reply.LEAD
            if leader._owner == hold._owner and wait:  # (as in acquire)
                raise RuntimeError(
                    f"the call for key {shown_key(key)} is being run by this same task or thread; "
                    "joining it from inside would wait for itself forever"
                )
            if not wait:
                return Reply.BUSY
            state.proc.holds[serial] = hold
        decided = self._wait(hold, None)
        with self.mutex:
            if decided == ABORTED:
                hold.drop()
                return (Reply.OUTCOME, outcome_of(hold))
            if decided != GRANTED:
                hold.drop()
                return Reply.CANCELLED
            if hold.void:
                if hold.phase != GONE:
                    hold.drop()
                    table.release(key, hold)  # the next follower takes over
                return Reply.CANCELLED
            # Took over from a leader that gave up (or died).
            if table.ttl:
                kept = table.cached(key, monotonic())
                if kept is not MISS:
                    hold.drop()
                    table.finish(key, hold, (False, kept), MISS, 0.0)
                    return (Reply.OUTCOME, (False, kept))
            hold.phase = LIVE
            hold._since = monotonic()
            state.granted = hold
            return Reply.LEAD

    def _leader(self, state: Conn, table: KeyTable, key: Hashable, serial: int) -> RemoteHold:
        """Under the mutex: the LIVE leader hold ``serial`` of this process, dropped."""
        hold = state.proc.live_hold(serial, table)
        if hold is None:
            raise RuntimeError(f"no call in flight for key {shown_key(key)} is led by this caller")
        hold.drop()
        return hold

    def finish(
        self,
        state: Conn,
        fid: int,
        key: Hashable,
        serial: int,
        is_error: bool,
        payload: bytes,
    ) -> bool:
        """The leader's call ended; True if the outcome went to any follower."""
        table = self._table(fid)
        assert isinstance(table, FlightTable)
        with self.mutex:
            hold = self._leader(state, table, key, serial)
            value: object = MISS if is_error else payload
            return table.finish(key, hold, (is_error, payload), value, monotonic())

    def abandon(self, state: Conn, fid: int, key: Hashable, serial: int) -> None:
        """The leader gave up without an outcome: the earliest follower takes over."""
        table = self._table(fid)
        with self.mutex:
            hold = self._leader(state, table, key, serial)
            table.release(key, hold)

    def forget(self, state: Conn, fid: int, key: Hashable) -> None:
        table = self._table(fid)
        assert isinstance(table, FlightTable)
        with self.mutex:
            table.forget(key)
