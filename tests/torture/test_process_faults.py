"""Process faults for the host scopes: SIGKILL a holder, a waiter or a single-flight leader.

Worker processes (forked) increment one counter file under one key, each increment a
read-yield-write; the test is their controller: it drives them over pipes and picks, at random
but seeded, which worker to kill and in which state:

- a **holder** inside its critical section, after it read the counter (its increment is lost
  and must not count) or after it wrote it (its increment counts);
- a **waiter** blocked waiting for the key: seen blocked in the kernel's lock wait for
  :class:`~keyedlock.FileKeyedLock`, counted in the manager's queue for
  :class:`~keyedlock.multiprocessing.KeyedLockManager`;
- a **single-flight leader** mid-call (manager only): inside its function, holding the key or
  not.

A victim is killed only once it has reported, or the kernel or the manager shows, that it is
in that state: no ordering rests on a sleep. Each increment is acknowledged to the controller
after its write, and a victim is only ever killed where it cannot be between a write and its
acknowledgement, so the expected counter is exact: the number of acknowledgements. After each
kill the survivors must proceed: the delay from the kill to the next acquisition (a dead
holder), to the dead waiter's withdrawal, or to the start of the call that takes over (a dead
leader) is measured, printed and must stay under :data:`HANDOFF_BOUND`. The kernel frees a dead
process's file locks as it exits and the manager watches its clients through pidfds, so both
scopes are expected to take milliseconds. At the end of every round no key may be held, and the
values written must be 1, 2, ... N exactly once each.

Workers use every flavour of the API at random: ``with`` (waiting in the calling thread),
``with`` with a timeout and ``acquire``/``release`` (waiting in a helper thread for the file
scope), and ``async with`` under asyncio and trio.

The choices are seeded: the seed is printed and ``KEYEDLOCK_SEED`` replays it (the
interleaving still depends on the scheduler). The default run takes a few seconds; the
``slow`` variant runs many more rounds with ``KEYEDLOCK_STRESS=long``. Every child is killed
and reaped when a test ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import random
import signal
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import anyio.lowlevel
import pytest
import trio

from keyedlock import FileKeyedLock
from keyedlock._scopes import key_offset
from keyedlock.multiprocessing import KeyedLockManager, KeyedLockProxy, SingleFlightProxy

try:
    import fcntl
except ImportError:  # not POSIX: the module is skipped
    F_OFD_SETLKW = -1
else:
    F_OFD_SETLKW = getattr(fcntl, "F_OFD_SETLKW", -1)

pytestmark = [
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="OFD locks, pidfds and /proc (Linux)"
    ),
    # The workers are forked while helper threads of earlier tests may linger; they only talk
    # to the lock file, the manager and their pipe. Newer Pythons warn about it.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

#: Upper bound, in seconds, of every wait. Never a timing assumption: reaching it means a bug.
WAIT = 10.0
#: The most a survivor may wait after a kill: for the key of a killed holder, for the
#: withdrawal of a killed waiter, for the takeover of a killed leader's call.
HANDOFF_BOUND = 1.0
#: How often the controller looks at state that has no event to wait on (the manager's queue,
#: the kernel's lock waits) while it waits for its workers' messages.
POLL = 0.001

KEY = "counter"
FLIGHT_KEY = "flight"
WORKERS = 4
#: How a worker takes the key: the calling thread waits (``with``), a helper thread waits
#: (``with`` + timeout, ``acquire``), or a task waits (asyncio, trio).
MODES = ("with", "with-timeout", "acquire", "asyncio", "trio")

LONG = os.environ.get("KEYEDLOCK_STRESS") == "long"
DEFAULT_ROUNDS = {"file": 8, "manager": 10}
SLOW_ROUNDS = {"file": 1000, "manager": 1000} if LONG else {"file": 30, "manager": 30}

#: Workers are forked: quick to start, and they inherit the manager's proxies as they are.
FORK = multiprocessing.get_context(
    "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
)

Lock = FileKeyedLock | KeyedLockProxy
Message = tuple[Any, ...]


def torture_seed() -> int:
    chosen = os.environ.get("KEYEDLOCK_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(2**32)


# -- the worker (in a child process) ---------------------------------------------------------


class Worker:
    """A child process's side: runs the controller's commands, reports every step.

    Messages to the controller: ``("wrote", value, acquired_at)`` after each write of the
    counter (the acknowledgement), ``("paused", phase)`` at a pause point (then it waits for
    ``("go",)``), ``("done",)`` after a batch, ``("flight", value, shared, started_at)`` after
    a single-flight call (``started_at``: when its own function started, None if it got
    another caller's value), ``("error", traceback)`` before dying of an exception.
    """

    def __init__(
        self,
        conn: Connection,
        lock: Lock,
        flight: SingleFlightProxy | None,
        counter: Path,
        mode: str,
    ) -> None:
        self.conn = conn
        self.lock = lock
        self.flight = flight
        self.counter = counter
        self.mode = mode

    def send(self, *message: object) -> None:
        self.conn.send(message)

    def serve(self) -> None:
        while True:
            if not self.conn.poll(6 * WAIT):
                raise TimeoutError("no command from the controller")
            try:
                command, *args = self.conn.recv()
            except EOFError:
                return  # the controller is gone
            if command == "inc":
                self.increments(*args)
                self.send("done")
            elif command == "flight":
                self.flight_call(*args)
            elif command == "exit":
                return
            else:
                raise ValueError(f"unknown command {command!r}")

    def pause(self, phase: str) -> None:
        """Tell the controller where we are, and wait for it to say go (or to kill us)."""
        self.send("paused", phase)
        if not self.conn.poll(WAIT):
            raise TimeoutError(f"paused at {phase!r}: no word from the controller")
        reply = self.conn.recv()
        if reply != ("go",):
            raise ValueError(f"expected ('go',), got {reply!r}")

    # The critical section: read, yield, write, acknowledge; a pause after the read or the ack.

    def read(self, pause: str | None) -> int:
        value = int(self.counter.read_text())
        if pause == "read":
            self.pause("read")
        return value

    def write(self, value: int, acquired_at: float, pause: str | None) -> int:
        self.counter.write_text(str(value + 1))
        self.send("wrote", value + 1, acquired_at)
        if pause == "written":
            self.pause("written")
        return value + 1

    def increment_sync(self, pause: str | None) -> int:
        if self.mode == "acquire":
            assert self.lock.acquire(KEY, timeout=WAIT)
            try:
                acquired_at = time.monotonic()
                value = self.read(pause)
                os.sched_yield()  # invite the race the lock prevents
                return self.write(value, acquired_at, pause)
            finally:
                self.lock.release(KEY)
        with self.lock(KEY, timeout=WAIT if self.mode == "with-timeout" else None):
            acquired_at = time.monotonic()
            value = self.read(pause)
            os.sched_yield()
            return self.write(value, acquired_at, pause)

    async def increment_async(self, pause: str | None) -> int:
        async with self.lock(KEY, timeout=WAIT):
            acquired_at = time.monotonic()
            value = self.read(pause)
            await anyio.lowlevel.checkpoint()  # let the other tasks of the loop run
            return self.write(value, acquired_at, pause)

    def increments(self, times: int, pause_at: int | None, phase: str | None) -> None:
        """``times`` increments; the one numbered ``pause_at`` pauses at ``phase``."""

        async def batch() -> None:
            for i in range(times):
                await self.increment_async(phase if i == pause_at else None)

        if self.mode == "asyncio":
            asyncio.run(batch())
        elif self.mode == "trio":
            trio.run(batch)
        else:
            for i in range(times):
                self.increment_sync(phase if i == pause_at else None)

    def flight_call(self, phase: str | None) -> None:
        """Join the single-flight call of FLIGHT_KEY; its function is one increment.

        ``phase``: where the function pauses if this caller runs it ("read" or "written": in
        the critical section; "after": after it, still in the call).
        """
        flight = self.flight
        assert flight is not None
        started: list[float] = []
        in_section = phase if phase != "after" else None

        def fn() -> int:
            started.append(time.monotonic())
            value = self.increment_sync(in_section)
            if phase == "after":
                self.pause("after")
            return value

        async def fn_async() -> int:
            started.append(time.monotonic())
            value = await self.increment_async(in_section)
            if phase == "after":
                self.pause("after")
            return value

        if self.mode == "asyncio":
            result = asyncio.run(flight.do_ex(FLIGHT_KEY, fn_async))
        elif self.mode == "trio":
            result = trio.run(flight.do_ex, FLIGHT_KEY, fn_async)
        else:
            result = flight.do_sync_ex(FLIGHT_KEY, fn)
        self.send("flight", result.value, result.shared, started[0] if started else None)


def worker_main(
    conn: Connection,
    target: str | KeyedLockProxy,
    flight: SingleFlightProxy | None,
    counter: str,
    mode: str,
) -> None:
    """A worker process: ``target`` is the lock file's path, or the manager's lock proxy."""
    try:
        lock = FileKeyedLock(target) if isinstance(target, str) else target
        Worker(conn, lock, flight, Path(counter), mode).serve()
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        raise


# -- what the kernel shows (file scope) -------------------------------------------------------


def blocked_in_kernel(pid: int, lock_file: os.stat_result) -> bool:
    """True if a thread of ``pid`` is in ``fcntl(fd, F_OFD_SETLKW, ...)`` on the lock file."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
        except OSError:
            continue  # the thread just ended
        # "nr arg0 arg1 ... sp pc" in a system call; "running" or "-1 sp pc" otherwise
        if len(fields) < 4 or fields[0] in ("running", "-1"):
            continue
        if int(fields[2], 16) != F_OFD_SETLKW:
            continue
        try:
            st = os.stat(f"/proc/{pid}/fd/{int(fields[1], 16)}")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (lock_file.st_dev, lock_file.st_ino):
            return True
    return False


def proc_locks() -> str:
    """/proc/locks as one snapshot.

    One read() is one pass over the kernel's lock list with the list locked, as long as
    the text fits the kernel's buffer (a page). Reading on is not: locks are inserted at
    the head of the list, so a second read() after an insertion lists the last entries
    again (a lock and its waiters counted twice). Larger texts are read until two
    readings agree.
    """
    fd = os.open("/proc/locks", os.O_RDONLY)
    try:
        first = os.read(fd, 1 << 16)
        if not os.read(fd, 1 << 16):
            return first.decode()
    finally:
        os.close(fd)
    previous = None
    for _ in range(100):  # pragma: no cover - more locks than a page holds
        text = Path("/proc/locks").read_text()
        if text == previous:
            return text
        previous = text
    raise AssertionError("/proc/locks never held still")  # pragma: no cover


def kernel_locks(lock_file: os.stat_result, offset: int) -> tuple[int, int]:
    """(held, blocked): the OFD locks and lock waits /proc/locks lists on the key's byte."""
    held = blocked = 0
    device = f"{os.major(lock_file.st_dev):02x}:{os.minor(lock_file.st_dev):02x}"
    for line in proc_locks().splitlines():
        words = line.split()
        waiting = "->" in words
        words = [w for w in words if w != "->"]
        # "N: OFDLCK ADVISORY WRITE -1 maj:min:inode start end"
        if len(words) < 8 or words[1] != "OFDLCK":
            continue
        dev, _, inode = words[5].rpartition(":")
        if dev != device or int(inode) != lock_file.st_ino or int(words[6]) != offset:
            continue
        if waiting:
            blocked += 1
        else:
            held += 1
    return held, blocked


def proc_syscall_readable() -> bool:
    try:
        Path("/proc/self/syscall").read_text()
    except OSError:
        return False
    return True


# -- the controller ---------------------------------------------------------------------------


@dataclass
class Proc:
    """The controller's side of one worker."""

    name: str
    process: BaseProcess
    conn: Connection
    mode: str
    busy: bool = False
    paused: str | None = None
    flight: tuple[int, bool, float | None] | None = None

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def send(self, *message: object) -> None:
        self.conn.send(message)

    def command(self, *message: object) -> None:
        self.busy = True
        self.send(*message)

    def go(self) -> None:
        assert self.paused is not None
        self.paused = None
        self.send("go")


@dataclass
class Tally:
    rounds: int = 0
    kills: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    flights: int = 0
    handoffs: list[float] = field(default_factory=list)
    withdrawals: list[float] = field(default_factory=list)
    takeovers: list[float] = field(default_factory=list)


class Arena:
    """The workers of one test, the shared counter, and what the workers reported."""

    def __init__(
        self,
        scope: str,
        seed: int,
        lock: Lock,
        target: str | KeyedLockProxy,
        flight: SingleFlightProxy | None,
        counter: Path,
    ) -> None:
        self.scope = scope
        self.seed = seed
        self.rng = random.Random(f"{seed}:{scope}")
        self.lock = lock
        self.target = target
        self.flight = flight
        self.counter = counter
        counter.write_text("0")
        self.lock_file = os.stat(target) if isinstance(target, str) else None
        self.offset = key_offset(KEY)
        self.live: list[Proc] = []
        self.started: list[Proc] = []
        #: every acknowledged write: (value written, when its writer acquired the key, writer)
        self.writes: list[tuple[int, float, str]] = []
        self.tally = Tally()

    @property
    def context(self) -> str:
        return f"(scope={self.scope}, seed={self.seed}, round={self.tally.rounds})"

    # -- processes ----------------------------------------------------------------------

    def spawn(self) -> Proc:
        mode = self.rng.choice(MODES)
        mine, theirs = FORK.Pipe()
        process: BaseProcess = FORK.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(theirs, self.target, self.flight, str(self.counter), mode),
            daemon=True,
        )
        proc = Proc(f"worker-{len(self.started)}[{mode}]", process, mine, mode)
        self.started.append(proc)
        process.start()
        theirs.close()
        self.live.append(proc)
        self.tally.modes[mode] += 1
        return proc

    def reap(self) -> None:
        """Kill and reap every worker still running (at the end, whatever happened)."""
        for proc in self.started:
            if proc.process.is_alive():
                proc.process.kill()
        for proc in self.started:
            proc.process.join(WAIT)
            proc.conn.close()

    def stop(self) -> None:
        """End the round's workers politely and check they exit cleanly."""
        for proc in self.live:
            proc.send("exit")
        for proc in self.live:
            proc.process.join(WAIT)
            assert proc.process.exitcode == 0, f"{proc.name} exit code {proc.process.exitcode}"

    def kill(self, victim: Proc, kind: str) -> float:
        """SIGKILL ``victim`` and reap it; returns when the signal was sent. Starts a
        replacement, so the number of workers stays the same."""
        self.live.remove(victim)
        killed_at = time.monotonic()
        os.kill(victim.pid, signal.SIGKILL)
        victim.process.join(WAIT)
        assert victim.process.exitcode == -signal.SIGKILL, self.context
        while victim.conn.poll(0):  # what it reported before it died still counts
            try:
                message = victim.conn.recv()
            except EOFError:
                break
            self.handle(victim, message)
        self.tally.kills[kind] += 1
        self.spawn()
        return killed_at

    # -- messages -------------------------------------------------------------------------

    def handle(self, proc: Proc, message: Message) -> None:
        kind = message[0]
        if kind == "wrote":
            self.writes.append((message[1], message[2], proc.name))
        elif kind == "paused":
            proc.paused = message[1]
        elif kind == "done":
            proc.busy = False
        elif kind == "flight":
            proc.flight = (message[1], message[2], message[3])
            proc.busy = False
        elif kind == "error":
            raise AssertionError(f"{proc.name} failed {self.context}:\n{message[1]}")
        else:
            raise AssertionError(f"unexpected message from {proc.name}: {message!r}")

    def pump(self, until: Callable[[], bool], what: str, poll: bool = False) -> None:
        """Handle the workers' messages until ``until()`` (bounded by WAIT).

        ``poll``: ``until`` looks at state no message announces (the manager's queue, the
        kernel's waits); look again every POLL seconds.
        """
        deadline = time.monotonic() + WAIT
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out after {WAIT} s waiting until {what} {self.context}"
                )
            conns: dict[Any, Proc] = {proc.conn: proc for proc in self.live}
            for conn in wait(list(conns), min(left, POLL) if poll else left):
                proc = conns[conn]
                try:
                    message = proc.conn.recv()
                except EOFError:
                    proc.process.join(WAIT)
                    raise AssertionError(
                        f"{proc.name} died unexpectedly (exit code {proc.process.exitcode}) "
                        f"{self.context}"
                    ) from None
                self.handle(proc, message)

    def idle(self, procs: list[Proc]) -> Callable[[], bool]:
        return lambda: not any(proc.busy for proc in procs)

    # -- the state of the key ---------------------------------------------------------------

    def queued(self, procs: list[Proc]) -> Callable[[], bool]:
        """True once every one of ``procs`` waits for the key (the manager: and no other)."""
        lock = self.lock
        if isinstance(lock, KeyedLockProxy):
            return lambda: lock.waiters(KEY) == len(procs)
        lock_file = self.lock_file
        assert lock_file is not None
        return lambda: all(blocked_in_kernel(proc.pid, lock_file) for proc in procs)

    def withdrawn(self, survivors: list[Proc]) -> Callable[[], bool]:
        """True once only ``survivors`` wait for the key (the holder still holds it)."""
        queued = self.queued(survivors)
        lock_file = self.lock_file
        if lock_file is None:
            return queued
        return lambda: queued() and kernel_locks(lock_file, self.offset) == (1, len(survivors))

    def check_kernel(self, held: int, blocked: int) -> None:
        """File scope: the kernel's view of the key's byte, at a moment nothing moves."""
        if self.lock_file is not None:
            seen = kernel_locks(self.lock_file, self.offset)
            assert seen == (held, blocked), f"/proc/locks shows {seen} {self.context}"

    def check(self) -> None:
        """Between rounds: the key is free everywhere; the counter lost nothing."""
        lock = self.lock
        assert not lock.locked(KEY), f"{KEY!r} is still held {self.context}"
        assert lock.waiters(KEY) == 0, self.context
        assert len(lock) == 0, self.context
        if isinstance(lock, FileKeyedLock):
            self.check_kernel(0, 0)
        if self.flight is not None:
            assert len(self.flight) == 0, f"a call is left in flight {self.context}"
            assert not self.flight.in_flight(FLIGHT_KEY), self.context
        assert lock.acquire(KEY, timeout=0), f"{KEY!r} cannot be taken {self.context}"
        lock.release(KEY)
        counter = int(self.counter.read_text())
        assert counter == len(self.writes), (
            f"the counter is {counter}, {len(self.writes)} increments completed {self.context}"
        )
        values = sorted(value for value, _, _ in self.writes)
        assert values == list(range(1, counter + 1)), f"lost or repeated updates {self.context}"

    # -- rounds -----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Every worker increments a few times, all at once: plain contention, no kill."""
        for proc in self.live:
            proc.command("inc", self.rng.randint(1, 5), None, None)
        self.pump(self.idle(self.live), "the warm-up increments are done")

    def hold(self, proc: Proc, phase: str) -> None:
        """Make ``proc`` pause in its critical section (after some increments of its own)."""
        pause_at = self.rng.randrange(3)
        proc.command("inc", pause_at + 1, pause_at, phase)
        self.pump(lambda: proc.paused is not None, f"{proc.name} pauses holding {KEY!r}")
        assert self.lock.locked(KEY), self.context

    def holder_round(self) -> None:
        """Kill the holder while every other worker waits: one of them gets the key."""
        victim, *survivors = self.rng.sample(self.live, len(self.live))
        self.hold(victim, self.rng.choice(("read", "written")))
        mark = len(self.writes)
        for proc in survivors:
            proc.command("inc", self.rng.randint(1, 3), None, None)
        self.pump(self.queued(survivors), "every survivor waits for the key", poll=True)
        self.check_kernel(1, len(survivors))
        killed_at = self.kill(victim, "holder")
        self.pump(self.idle(survivors), "the survivors are done")
        after = self.writes[mark:]
        assert after, self.context
        assert all(at > killed_at for _, at, _ in after), (
            f"a survivor got the key while the holder lived {self.context}"
        )
        handoff = min(at for _, at, _ in after) - killed_at
        self.tally.handoffs.append(handoff)
        assert handoff < HANDOFF_BOUND, f"hand-off took {handoff:.3f} s {self.context}"

    def waiter_round(self) -> None:
        """Kill a queued waiter: it leaves the queue, the others get the key in turn."""
        holder, victim, *survivors = self.rng.sample(self.live, len(self.live))
        self.hold(holder, self.rng.choice(("read", "written")))
        waiting = [victim, *survivors]
        for proc in waiting:
            proc.command("inc", self.rng.randint(1, 3), None, None)
        self.pump(self.queued(waiting), "every waiter waits for the key", poll=True)
        self.check_kernel(1, len(waiting))
        killed_at = self.kill(victim, "waiter")
        # The kernel drops a dead waiter's request as it exits, but the waiters queued behind
        # that request are woken to queue again: look until they are all back, and no other.
        self.pump(self.withdrawn(survivors), "the dead waiter is withdrawn", poll=True)
        withdrawn = time.monotonic() - killed_at
        self.tally.withdrawals.append(withdrawn)
        assert withdrawn < HANDOFF_BOUND, f"withdrawal took {withdrawn:.3f} s {self.context}"
        holder.go()
        self.pump(self.idle([holder, *survivors]), "the holder and the survivors are done")

    def leader_round(self) -> None:
        """Kill a single-flight leader mid-call: the earliest follower takes over."""
        flight = self.flight
        assert flight is not None
        leader, *others = self.rng.sample(self.live, len(self.live))
        followers = others[: self.rng.randint(1, len(others))]
        leader.command("flight", self.rng.choice(("read", "written", "after")))
        self.pump(lambda: leader.paused is not None, f"{leader.name} pauses in its call")
        assert flight.in_flight(FLIGHT_KEY), self.context
        for proc in followers:
            proc.flight = None
            proc.command("flight", None)
        self.pump(
            lambda: flight._waiting(FLIGHT_KEY) == len(followers), "the followers joined", True
        )
        killed_at = self.kill(leader, "leader")
        self.pump(self.idle(followers), "the followers got their result")
        results = [proc.flight for proc in followers]
        ran = [result for result in results if result is not None and result[2] is not None]
        assert len(ran) == 1, f"{len(ran)} followers ran the call {self.context}: {results}"
        value, shared, started_at = ran[0]
        assert started_at is not None
        takeover = started_at - killed_at
        self.tally.takeovers.append(takeover)
        assert 0 < takeover < HANDOFF_BOUND, f"takeover took {takeover:.3f} s {self.context}"
        assert shared == (len(followers) > 1), self.context
        for result in results:
            assert result is not None
            assert result[0] == value, f"followers got different values {self.context}"
            assert result[2] is not None or result[1], self.context
        self.tally.flights += 1

    def run(self, rounds: int) -> None:
        kinds = ["holder", "waiter"] + (["leader"] if self.flight is not None else [])
        plan = self.rng.sample(kinds, len(kinds))
        plan += [self.rng.choice(kinds) for _ in range(max(0, rounds - len(plan)))]
        play = {
            "holder": self.holder_round,
            "waiter": self.waiter_round,
            "leader": self.leader_round,
        }
        for _ in range(WORKERS):
            self.spawn()
        for kind in plan:
            self.tally.rounds += 1
            self.warm_up()
            play[kind]()
            self.check()
        self.stop()
        self.check()

    def report(self) -> str:
        t = self.tally

        def ms(delays: list[float]) -> str:
            if not delays:
                return "-"
            return (
                f"median {statistics.median(delays) * 1e3:.1f} ms, max {max(delays) * 1e3:.1f} ms"
            )

        return (
            f"keyedlock torture ({self.scope}): seed={self.seed}, rounds={t.rounds}, "
            f"killed and survived: holders={t.kills['holder']} waiters={t.kills['waiter']} "
            f"leaders={t.kills['leader']}; increments={len(self.writes)} "
            f"flight calls taken over={t.flights}; worker modes={dict(t.modes)}; "
            f"hand-off after a holder kill: {ms(t.handoffs)}; "
            f"withdrawal of a dead waiter: {ms(t.withdrawals)}; "
            f"takeover of a dead leader's call: {ms(t.takeovers)}"
        )


# -- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manager() -> Iterator[KeyedLockManager]:
    with KeyedLockManager(ctx=FORK) as running:
        yield running


def torture(scope: str, rounds: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    seed = torture_seed()
    print(
        f"\nkeyedlock torture ({scope}): seed={seed} (KEYEDLOCK_SEED={seed} replays it), "
        f"{rounds} rounds, {WORKERS} workers"
    )
    counter = tmp_path / "counter"
    lock: Lock
    target: str | KeyedLockProxy
    flight: SingleFlightProxy | None
    if scope == "file":
        if not proc_syscall_readable():
            pytest.skip("/proc/<pid>/syscall is not readable: cannot see a waiter in the kernel")
        target = str(tmp_path / "keys.lock")
        lock = FileKeyedLock(target)
        flight = None
    else:
        manager: KeyedLockManager = request.getfixturevalue("manager")
        lock = target = manager.KeyedLock()
        flight = manager.SingleFlight()
    arena = Arena(scope, seed, lock, target, flight, counter)
    try:
        arena.run(rounds)
    finally:
        arena.reap()
        print(arena.report())


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scope", ["file", "manager"])
def test_sigkill_holders_waiters_and_leaders(
    scope: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    torture(scope, DEFAULT_ROUNDS[scope], tmp_path, request)


@pytest.mark.slow
@pytest.mark.timeout(1200 if LONG else 240)
@pytest.mark.parametrize("scope", ["file", "manager"])
def test_sigkill_holders_waiters_and_leaders_long(
    scope: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    torture(scope, SLOW_ROUNDS[scope], tmp_path, request)
