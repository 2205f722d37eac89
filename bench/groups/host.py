"""Group ``host``: locks shared by the processes of one host.

Scenarios:

* uncontended acquire+release in one process: ``FileKeyedLock`` against an
  OFD lock and unlock written inline (the floor: two system calls), filelock,
  fasteners, portalocker (its ``Lock`` class and its ``lock`` function) and
  ``multiprocessing.Lock``;
* two processes contending for one lock, a tiny critical section each time
  (which also checks that the lock excludes);
* process-to-process hand-off latency: a process releases, another one,
  blocked in its acquire, gets the lock (median and p90);
* ``KeyedLockManager`` against ``multiprocessing.Manager().Lock()``:
  uncontended in one client, and two client processes contending.

Every file lock has a lock file of its own in a temporary directory. Child
processes are forked (``multiprocessing`` with the ``fork`` start method),
each opens its own handle on the lock (a forked file descriptor would share
its parent's lock), and every child is joined, or killed if it hangs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gc
import math
import mmap
import multiprocessing
import os
import statistics
import struct
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from multiprocessing.managers import SyncManager
from time import monotonic_ns, perf_counter_ns
from typing import Any, Final

import fasteners
import filelock
import portalocker
from harness import (
    Bar,
    Case,
    Check,
    Group,
    Ratio,
    ScenarioResult,
    Settings,
    Table,
    TimedScenario,
    format_ratio,
)

from keyedlock import FileKeyedLock
from keyedlock.multiprocessing import KeyedLockManager, KeyedLockProxy

KEY: Final = "user:42"

#: Labels shared by the scenarios (ratios refer to cases by label).
OURS: Final = "FileKeyedLock"
OURS_EXPLICIT: Final = "FileKeyedLock acquire()/release()"
RAW: Final = "raw OFD lock"
FILELOCK: Final = "filelock.FileLock"
FASTENERS: Final = "fasteners.InterProcessLock"
PORTALOCKER: Final = "portalocker.Lock"
PORTALOCKER_FN: Final = "portalocker.lock()"
MP_LOCK: Final = "multiprocessing.Lock"
MANAGER: Final = "KeyedLockManager"
MP_MANAGER: Final = "Manager().Lock()"

#: Target of the hand-off scenario: FileKeyedLock's median latency, in nanoseconds.
HANDOFF_LIMIT_NS: Final = 300_000

#: How long the parent waits for a child's message, and for its exit, before giving up.
_REPLY_TIMEOUT: Final = 60.0
_JOIN_TIMEOUT: Final = 10.0
#: In the hand-off scenario, how long the waiting process is left blocked before the release.
_SETTLE: Final = 0.001

_FORK: Final = multiprocessing.get_context("fork")

#: ``struct flock`` (Linux, 64-bit ``off_t``): l_type, l_whence, l_start, l_len, l_pid, padding.
_FLOCK: Final = struct.Struct("hhqqi4x")
_RAW_LOCK: Final = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0)
_RAW_UNLOCK: Final = _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 1, 0)

#: The contended critical section's shared state: a counter and the last owner.
_SHARED: Final = struct.Struct("qq")

Measure = Callable[[int], int]
SyncCM = AbstractContextManager[object]


def _open_lock_file(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


# -- what the scenarios need -------------------------------------------------------


class _Env:
    """What a scenario's locks need: a private directory and, on demand, the managers.

    Built by :func:`_environment`, which undoes everything on exit (the
    managers shut down, the directory is removed).
    """

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self.directory = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="keyedlock-bench-host-")
        )
        self._keyed: KeyedLockProxy | None = None
        self._sync: SyncManager | None = None

    def file(self, name: str) -> str:
        """A lock file's path in the directory (nothing is created)."""
        return os.path.join(self.directory, name)

    def keyed_lock(self) -> KeyedLockProxy:
        """A keyed lock of a running KeyedLockManager (started on first use)."""
        if self._keyed is None:
            manager = self._stack.enter_context(KeyedLockManager(ctx=_FORK))
            self._keyed = manager.KeyedLock()
        return self._keyed

    def sync_manager(self) -> SyncManager:
        """A running ``multiprocessing.Manager()`` (started on first use)."""
        if self._sync is None:
            self._sync = self._stack.enter_context(_FORK.Manager())
        return self._sync


@contextlib.contextmanager
def _environment() -> Iterator[_Env]:
    with contextlib.ExitStack() as stack:
        yield _Env(stack)


# -- child processes ---------------------------------------------------------------


def _child_main(body: Callable[[Connection], object], conn: Connection) -> None:
    """In the child: run ``body``; its result (or its traceback) is the last message."""
    try:
        result = body(conn)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


class _Child:
    """A forked process running ``body(conn)``; it reports on ``conn`` with :func:`_tell`."""

    def __init__(self, body: Callable[[Connection], object]) -> None:
        self.conn, child_end = _FORK.Pipe()
        self.process = _FORK.Process(target=_child_main, args=(body, child_end), daemon=True)
        try:
            self.process.start()
        finally:
            child_end.close()

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def expect(self) -> Any:
        """The child's next message; raises if it failed, or stays silent too long."""
        if not self.conn.poll(_REPLY_TIMEOUT):
            raise TimeoutError(f"no word from child process {self.pid} in {_REPLY_TIMEOUT} s")
        try:
            kind, value = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"child process {self.pid} died") from None
        if kind == "error":
            raise RuntimeError(f"child process {self.pid} failed:\n{value}")
        return value

    def reap(self, kill: bool) -> None:
        """Join the child (killed first if ``kill``, or if it does not exit in time)."""
        if kill:
            self.process.kill()
        self.process.join(_JOIN_TIMEOUT)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _tell(conn: Connection, value: object = None) -> None:
    """From a child: one message for :meth:`_Child.expect`."""
    conn.send(("ok", value))


@contextlib.contextmanager
def _forked(*bodies: Callable[[Connection], object]) -> Iterator[list[_Child]]:
    """Fork one child per body; reap them all on exit (killing them if the block failed)."""
    children: list[_Child] = []
    failed = True
    try:
        for body in bodies:  # one at a time: a child is reaped even if the next fork fails
            children.append(_Child(body))  # noqa: PERF401
        yield children
        failed = False
    finally:
        for child in children:
            child.reap(kill=failed)


def _wait_blocked(pid: int) -> None:
    """Return once process ``pid`` is asleep (its acquire has blocked), plus a moment.

    The caller knows that ``pid`` is on its way into a blocking acquire and
    does nothing else: the first time it sleeps (state ``S`` in
    ``/proc/PID/stat``) is in that acquire. The extra moment lets a request
    sent to a manager process be queued there before the release.
    """
    path = f"/proc/{pid}/stat"
    deadline = time.monotonic() + _REPLY_TIMEOUT
    while True:
        try:
            with open(path, "rb") as f:
                stat = f.read()
        except OSError:  # no /proc: the fixed wait alone
            break
        if stat.rsplit(b")", 1)[1].split()[0] == b"S":
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} never blocked in its acquire")
        time.sleep(50e-6)
    time.sleep(_SETTLE)


# -- the locks, for the scenarios with several processes ---------------------------


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class _Handle:
    """One process's use of a lock: acquire, release, and close when done."""

    acquire: Callable[[], object]
    release: Callable[[], object]
    close: Callable[[], object] = _nothing


#: Made in the parent before any fork; called in every process that uses the lock.
Opener = Callable[[], _Handle]

#: Hand-off repetitions (full run, quick run): locks woken by the kernel or a manager,
#: the locks that poll, and portalocker.Lock, which polls slowest.
KERNEL_REPS: Final = (300, 45)
POLL_REPS: Final = (30, 6)
SLOW_POLL_REPS: Final = (15, 3)


@dataclass(frozen=True)
class _Contender:
    """A lock of the multi-process scenarios.

    ``prepare(env)`` runs in the parent, before any fork (a
    ``multiprocessing.Lock`` must exist before it); the opener it returns
    runs in each process. ``waits``: how a blocked acquire waits; ``polls``:
    whether it sleeps between tries. ``reps``: hand-off repetitions (full
    run, quick run), fewer for the locks that poll.
    """

    label: str
    prepare: Callable[[_Env], Opener]
    waits: str
    reps: tuple[int, int] = KERNEL_REPS
    polls: bool = False


def _ours_opener(env: _Env) -> Opener:
    path = env.file("keyedlock.lock")

    def open_() -> _Handle:
        lock = FileKeyedLock(path)
        return _Handle(partial(lock.acquire, KEY), partial(lock.release, KEY))

    return open_


def _raw_opener(env: _Env) -> Opener:
    path = env.file("raw.lock")

    def open_() -> _Handle:
        fd = _open_lock_file(path)
        return _Handle(
            partial(fcntl.fcntl, fd, fcntl.F_OFD_SETLKW, _RAW_LOCK),
            partial(fcntl.fcntl, fd, fcntl.F_OFD_SETLK, _RAW_UNLOCK),
            partial(os.close, fd),
        )

    return open_


def _filelock_opener(env: _Env) -> Opener:
    path = env.file("filelock.lock")

    def open_() -> _Handle:
        lock = filelock.FileLock(path)
        return _Handle(lock.acquire, lock.release)

    return open_


def _fasteners_opener(env: _Env) -> Opener:
    path = env.file("fasteners.lock")

    def open_() -> _Handle:
        lock = fasteners.InterProcessLock(path)
        return _Handle(lock.acquire, lock.release)

    return open_


def _portalocker_opener(env: _Env) -> Opener:
    path = env.file("portalocker.lock")

    def open_() -> _Handle:
        lock = portalocker.Lock(path)
        return _Handle(lock.acquire, lock.release)

    return open_


def _portalocker_fn_opener(env: _Env) -> Opener:
    path = env.file("portalocker-fn.lock")

    def open_() -> _Handle:
        fh = open(path, "a")  # noqa: SIM115 - closed by the handle
        return _Handle(
            partial(portalocker.lock, fh, portalocker.LockFlags.EXCLUSIVE),
            partial(portalocker.unlock, fh),
            fh.close,
        )

    return open_


def _mp_lock_opener(env: _Env) -> Opener:
    lock = _FORK.Lock()  # inherited by the forked children
    return lambda: _Handle(lock.acquire, lock.release)


def _manager_opener(env: _Env) -> Opener:
    klock = env.keyed_lock()
    return lambda: _Handle(partial(klock.acquire, KEY), partial(klock.release, KEY))


def _mp_manager_opener(env: _Env) -> Opener:
    lock = env.sync_manager().Lock()
    return lambda: _Handle(lock.acquire, lock.release)


def _poll_text(seconds: float) -> str:
    return f"polls every {seconds * 1e3:g} ms"


def _file_contenders() -> list[_Contender]:
    filelock_poll = filelock.FileLock(os.devnull).poll_interval
    portalocker_poll = portalocker.Lock(os.devnull).check_interval
    fasteners_poll = "polls (10 ms, then 20, 30 ... 100 ms)"
    return [
        _Contender(OURS, _ours_opener, "kernel wake-up (OFD lock)"),
        _Contender(RAW, _raw_opener, "kernel wake-up (OFD lock)"),
        _Contender(FILELOCK, _filelock_opener, _poll_text(filelock_poll), POLL_REPS, True),
        _Contender(FASTENERS, _fasteners_opener, fasteners_poll, POLL_REPS, True),
        _Contender(
            PORTALOCKER, _portalocker_opener, _poll_text(portalocker_poll), SLOW_POLL_REPS, True
        ),
        _Contender(PORTALOCKER_FN, _portalocker_fn_opener, "kernel wake-up (flock)"),
        _Contender(MP_LOCK, _mp_lock_opener, "kernel wake-up (semaphore)"),
    ]


def _manager_contenders() -> list[_Contender]:
    return [
        _Contender(MANAGER, _manager_opener, "reply from the manager"),
        _Contender(MP_MANAGER, _mp_manager_opener, "reply from the manager"),
    ]


# -- scenarios whose cases need the environment ------------------------------------

#: Per case label, each contended measurement's owner changes per 1,000 acquisitions.
Turns = dict[str, list[float]]
Builder = Callable[[_Env, Turns], Sequence[Case]]


@dataclass(frozen=True)
class _Hosted:
    """A :class:`TimedScenario` whose cases are built, and torn down, around its run.

    ``template`` is the scenario without its cases; ``cases`` builds them in
    a fresh environment (lock files, managers). If the cases record owner
    changes, a table of them is added.
    """

    template: TimedScenario
    cases: Builder

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def title(self) -> str:
        return self.template.title

    def run(self, settings: Settings) -> ScenarioResult:
        turns: Turns = {}
        with _environment() as env:
            scenario = dataclasses.replace(self.template, cases=self.cases(env, turns))
            result = scenario.run(settings)
        if turns:
            rows = [
                [label, f"{statistics.median(values):.1f}", f"{max(values):.1f}"]
                for label, values in turns.items()
            ]
            result.tables.append(
                Table(
                    [
                        "case",
                        "owner changes per 1,000 acquisitions (median)",
                        "max",
                    ],
                    rows,
                    frozenset({1, 2}),
                )
            )
            result.data["owner_changes_per_1000"] = turns
        return result


# -- 1. uncontended, one process ---------------------------------------------------


def _keyed_loop(make: Callable[[], Callable[[str], SyncCM]]) -> Measure:
    """``with locks(KEY): pass``, ``n`` times."""

    def measure(n: int) -> int:
        locks = make()
        start = perf_counter_ns()
        for _ in range(n):
            with locks(KEY):
                pass
        return perf_counter_ns() - start

    return measure


def _explicit_loop(make: Callable[[], FileKeyedLock]) -> Measure:
    """``locks.acquire(KEY)`` then ``locks.release(KEY)``, ``n`` times."""

    def measure(n: int) -> int:
        locks = make()
        acquire = locks.acquire
        release = locks.release
        start = perf_counter_ns()
        for _ in range(n):
            acquire(KEY)
            release(KEY)
        return perf_counter_ns() - start

    return measure


def _bare_loop(make: Callable[[], SyncCM]) -> Measure:
    """``with lock: pass`` on one lock object, ``n`` times."""

    def measure(n: int) -> int:
        lock = make()
        start = perf_counter_ns()
        for _ in range(n):
            with lock:
                pass
        return perf_counter_ns() - start

    return measure


def _raw_loop(path: str) -> Measure:
    """An OFD write lock of one byte, then its unlock, written inline."""

    def measure(n: int) -> int:
        fd = _open_lock_file(path)
        try:
            start = perf_counter_ns()
            for _ in range(n):
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _RAW_LOCK)
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _RAW_UNLOCK)
            return perf_counter_ns() - start
        finally:
            os.close(fd)

    return measure


def _portalocker_fn_loop(path: str) -> Measure:
    """``portalocker.lock(fh, EXCLUSIVE)`` then ``portalocker.unlock(fh)`` on an open file."""

    def measure(n: int) -> int:
        exclusive = portalocker.LockFlags.EXCLUSIVE
        with open(path, "a") as fh:
            start = perf_counter_ns()
            for _ in range(n):
                portalocker.lock(fh, exclusive)
                portalocker.unlock(fh)
            return perf_counter_ns() - start

    return measure


def _uncontended_cases(env: _Env, turns: Turns) -> list[Case]:
    ours = env.file("keyedlock.lock")
    filelock_path = env.file("filelock.lock")
    fasteners_path = env.file("fasteners.lock")
    portalocker_path = env.file("portalocker.lock")
    return [
        Case(OURS, _keyed_loop(lambda: FileKeyedLock(ours))),
        Case(OURS_EXPLICIT, _explicit_loop(lambda: FileKeyedLock(ours))),
        Case(RAW, _raw_loop(env.file("raw.lock"))),
        Case(FILELOCK, _bare_loop(lambda: filelock.FileLock(filelock_path))),
        Case(FASTENERS, _bare_loop(lambda: fasteners.InterProcessLock(fasteners_path))),
        Case(PORTALOCKER, _bare_loop(lambda: portalocker.Lock(portalocker_path))),
        Case(PORTALOCKER_FN, _portalocker_fn_loop(env.file("portalocker-fn.lock"))),
        Case(MP_LOCK, _bare_loop(_FORK.Lock)),
    ]


def _uncontended_scenario() -> _Hosted:
    others = (FASTENERS, PORTALOCKER, PORTALOCKER_FN, MP_LOCK)
    return _Hosted(
        TimedScenario(
            name="uncontended",
            title="Uncontended acquire+release, one process",
            description=(
                f"One process acquires and releases one lock in a loop, nobody else "
                f"using it: `with lock(key): pass` for {OURS}, `lock.acquire(key)` then "
                f"`lock.release(key)` for {OURS_EXPLICIT}, `with lock: pass` for "
                f"filelock, fasteners, `portalocker.Lock` and `multiprocessing.Lock` "
                f"(one lock object reused). {RAW}: "
                "`fcntl.fcntl(fd, fcntl.F_OFD_SETLK, flock)` to lock one byte, then "
                "again to unlock it, written inline on an open file (the floor of "
                f"what {OURS} does: two system calls). `{PORTALOCKER_FN}`: "
                "`portalocker.lock(fh, LockFlags.EXCLUSIVE)` and `portalocker.unlock(fh)` "
                "on a file kept open (flock). filelock, fasteners and `portalocker.Lock` "
                "open the lock file on every acquire and close it on release."
            ),
            cases=[],
            ratios=[
                Ratio(OURS, (RAW,), 2.5),
                Ratio(OURS_EXPLICIT, (RAW,), 2.5),
                Ratio(OURS, (FILELOCK,), 0.05),
                *(Ratio(OURS, (other,)) for other in others),
            ],
            ops=1_500,
            quick_ops=500,
            unit="acquire",
        ),
        _uncontended_cases,
    )


# -- 2. two processes contending ---------------------------------------------------


def _contend_loop(handle: _Handle, count: int, shared: mmap.mmap, me: int) -> int:
    """``count`` times: acquire, bump the shared counter, release; returns the takeovers.

    A takeover is an acquisition right after the other process's (or the
    very first one).
    """
    acquire = handle.acquire
    release = handle.release
    unpack = _SHARED.unpack_from
    pack = _SHARED.pack_into
    takeovers = 0
    for _ in range(count):
        acquire()
        total, last = unpack(shared)
        if last != me:
            takeovers += 1
        pack(shared, 0, total + 1, me)
        release()
    return takeovers


def _contended(contender: _Contender, env: _Env, turns: Turns) -> Measure:
    """Two forked processes, ``n // 2`` acquisitions each, started together."""
    opener = contender.prepare(env)
    record = turns.setdefault(contender.label, [])

    def measure(n: int) -> int:
        count = n // 2
        shared = mmap.mmap(-1, _SHARED.size)  # anonymous and shared with the children
        go_read, go_write = os.pipe()

        def work(me: int, conn: Connection) -> tuple[int, int, int]:
            handle = opener()
            try:
                _tell(conn)  # ready
                os.read(go_read, 1)
                start = monotonic_ns()
                takeovers = _contend_loop(handle, count, shared, me)
                return start, monotonic_ns(), takeovers
            finally:
                handle.close()

        try:
            with _forked(partial(work, 1), partial(work, 2)) as children:
                for child in children:
                    child.expect()
                os.write(go_write, b"go")
                outcomes: list[tuple[int, int, int]] = [child.expect() for child in children]
            total = _SHARED.unpack_from(shared)[0]
        finally:
            os.close(go_read)
            os.close(go_write)
            shared.close()
        if total != 2 * count:
            raise RuntimeError(
                f"{contender.label}: the counter reached {total}, not {2 * count}: "
                "the two processes were in the critical section at once"
            )
        changes = sum(takeovers for _, _, takeovers in outcomes) - 1
        record.append(1000 * changes / (2 * count))
        return max(end for _, end, _ in outcomes) - min(start for start, _, _ in outcomes)

    return measure


def _contended_description(what: str, ops: tuple[int, int]) -> str:
    count = f"{ops[0] // 2:,} ({ops[1] // 2:,} in a quick run)"
    return (
        f"Two forked processes share {what}; each, {count} times: acquire, read a "
        "counter and the last owner from shared memory, write them back (counter + 1, "
        "itself), release. Throughput in acquisitions per second of both together, "
        "from the first process's start to the last one's end (CLOCK_MONOTONIC, "
        "system-wide). Each acquire and release is one call "
        "(`lock.acquire(key)` / `lock.release(key)` for the keyed locks, "
        "`lock.acquire()` / `lock.release()` for the others; for the raw OFD lock, "
        "`F_OFD_SETLKW` then `F_OFD_SETLK` with `F_UNLCK`). The counter must end at "
        "the number of acquisitions (it does, or the run fails). Owner changes: how "
        "often the lock went from one process to the other, per 1,000 acquisitions "
        "(1,000 would be strict alternation; a lock that lets its releaser take it "
        "straight back, or a waiter that sleeps between tries, gives few)."
    )


def _contended_scenario() -> _Hosted:
    ops = (1_000, 400)

    def cases(env: _Env, turns: Turns) -> list[Case]:
        return [Case(c.label, _contended(c, env, turns)) for c in _file_contenders()]

    return _Hosted(
        TimedScenario(
            name="contended",
            title="Two processes contending for one lock",
            description=_contended_description("one lock (one key)", ops),
            cases=[],
            ratios=[
                Ratio(OURS, (RAW,), throughput=True),
                Ratio(OURS, (FILELOCK,), throughput=True),
            ],
            ops=ops[0],
            quick_ops=ops[1],
            unit="acquire",
            throughput=True,
        ),
        cases,
    )


# -- 3. hand-off latency -----------------------------------------------------------


def _handoffs(opener: Opener, reps: int, warmup: int) -> list[int]:
    """Latencies (ns) of ``reps`` hand-offs from this process to a forked one.

    Each time: this process takes the lock, tells the child, which says it is
    about to acquire and blocks; once the child is asleep in the acquire
    (:func:`_wait_blocked`), this process reads CLOCK_MONOTONIC and
    releases; the child reads it as soon as its acquire returns, releases and
    reports. ``warmup`` more hand-offs come first, not counted.
    """
    total = warmup + reps

    def waiter(conn: Connection) -> None:
        handle = opener()
        try:
            for _ in range(total):
                conn.recv()  # the parent holds the lock
                _tell(conn)  # about to acquire
                handle.acquire()
                got = monotonic_ns()
                handle.release()
                _tell(conn, got)
        finally:
            handle.close()

    latencies: list[int] = []
    with _forked(waiter) as (child,):
        handle = opener()
        try:
            for i in range(total):
                handle.acquire()
                child.conn.send(None)
                child.expect()
                _wait_blocked(child.pid)
                released = monotonic_ns()
                handle.release()
                got: int = child.expect()
                if i >= warmup:
                    latencies.append(got - released)
            child.expect()  # finished
        finally:
            handle.close()
    return latencies


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f} ms"


def _ratio_text(value: float) -> str:
    """As ``format_ratio``, with two significant digits for ratios far below 1."""
    return format_ratio(value) if value >= 0.1 else f"{value:.2g}x"


@dataclass(frozen=True)
class HandoffScenario:
    """Process-to-process hand-off latency per lock: median and p90 over many hand-offs."""

    name: str = "handoff"
    title: str = "Hand-off latency, process to process"

    def run(self, settings: Settings) -> ScenarioResult:
        contenders = _file_contenders() + _manager_contenders()
        samples: dict[str, list[int]] = {c.label: [] for c in contenders}
        count = len(contenders)
        with _environment() as env:
            openers = {c.label: c.prepare(env) for c in contenders}
            for round_no in range(settings.repeats):
                for i in range(count):
                    contender = contenders[(round_no + i) % count]
                    reps = math.ceil(settings.size(*contender.reps) / settings.repeats)
                    gc.collect()
                    gc.disable()
                    try:
                        samples[contender.label] += _handoffs(
                            openers[contender.label], reps, warmup=0 if contender.polls else 1
                        )
                    finally:
                        gc.enable()

        def quantile(values: list[int], q: int) -> float:
            if len(values) < 2:
                return values[0]
            return statistics.quantiles(values, n=10, method="inclusive")[q - 1]

        medians = {label: statistics.median(values) for label, values in samples.items()}
        result = ScenarioResult(
            self.name,
            self.title,
            (
                "Process A holds the lock; process B (forked) is blocked in its acquire. "
                "A reads CLOCK_MONOTONIC (system-wide on Linux: `time.monotonic_ns()`) "
                "and releases; B reads it as soon as its acquire returns. Latency: B's "
                "time minus A's. Before each release A waits until B is asleep in the "
                f"acquire (state S in /proc), then {_SETTLE * 1e3:g} ms more. The locks "
                "that poll hand off only at B's next try, so their latency shows their "
                "poll interval; they get few repetitions to keep the run short (the "
                "hand-offs column; in a full run "
                f"{POLL_REPS[0]}, {SLOW_POLL_REPS[0]} for {PORTALOCKER}, against "
                f"{KERNEL_REPS[0]} for the others). Repetitions are split evenly over "
                "the rounds (at least one each), a fresh B per round and lock, the lock "
                "order rotating. Acquire and release as in the contended scenario."
            ),
        )
        rows = []
        for contender in contenders:
            values = samples[contender.label]
            rows.append(
                [
                    contender.label,
                    contender.waits,
                    str(len(values)),
                    _ms(medians[contender.label]),
                    _ms(quantile(values, 9)),
                    _ms(min(values)),
                    _ms(max(values)),
                ]
            )
        result.tables.append(
            Table(
                ["lock", "a waiter", "hand-offs", "median", "p90", "min", "max"],
                rows,
                frozenset({2, 3, 4, 5, 6}),
            )
        )
        ours = medians[OURS]
        passed = ours < HANDOFF_LIMIT_NS
        budget = f"{_ms(HANDOFF_LIMIT_NS)} budget"
        result.checks.append(
            Check(self.name, f"{OURS}: median hand-off", _ms(ours), f"< {budget}", passed)
        )
        # On the chart: the median as a fraction of its budget (the target is 1.0).
        result.bars.append(
            Bar(
                f"{self.name}: {OURS} median / {budget}",
                ours / HANDOFF_LIMIT_NS,
                1.0,
                False,
                passed,
            )
        )
        for subject, baseline in ((OURS, RAW), (OURS, FILELOCK), (MANAGER, MP_MANAGER)):
            ratio = medians[subject] / medians[baseline]
            what = f"{subject} vs {baseline}, median hand-off, time"
            result.checks.append(Check(self.name, what, _ratio_text(ratio), "report", None))
            if ratio >= 0.1:  # the polling locks are orders of magnitude off the chart's scale
                result.bars.append(
                    Bar(f"{self.name}: {subject} vs {baseline}", ratio, None, False, None)
                )
        result.data = {
            "latency_ns": samples,
            "median_ns": medians,
            "limit_ns": HANDOFF_LIMIT_NS,
        }
        return result


# -- 4. the managers ---------------------------------------------------------------


def _manager_uncontended_cases(env: _Env, turns: Turns) -> list[Case]:
    klock = env.keyed_lock()
    lock = env.sync_manager().Lock()
    return [
        Case(MANAGER, _keyed_loop(lambda: klock)),
        Case(MP_MANAGER, _bare_loop(lambda: lock)),
    ]


def _manager_scenario() -> _Hosted:
    return _Hosted(
        TimedScenario(
            name="manager",
            title="Manager locks, uncontended, one client",
            description=(
                "One client process acquires and releases in a loop, through a "
                "manager process: `with klock(key): pass` on "
                "`KeyedLockManager().KeyedLock()`, `with lock: pass` on "
                "`multiprocessing.Manager().Lock()`. Each acquire and each release "
                "is a round trip to the manager."
            ),
            cases=[],
            ratios=[Ratio(MANAGER, (MP_MANAGER,), 1.0)],
            ops=1_000,
            quick_ops=300,
            unit="acquire",
        ),
        _manager_uncontended_cases,
    )


def _manager_contended_scenario() -> _Hosted:
    ops = (1_000, 300)

    def cases(env: _Env, turns: Turns) -> list[Case]:
        return [Case(c.label, _contended(c, env, turns)) for c in _manager_contenders()]

    return _Hosted(
        TimedScenario(
            name="manager-contended",
            title="Manager locks, two client processes contending",
            description=_contended_description("one manager lock (one key)", ops),
            cases=[],
            ratios=[Ratio(MANAGER, (MP_MANAGER,), throughput=True)],
            ops=ops[0],
            quick_ops=ops[1],
            unit="acquire",
            throughput=True,
        ),
        cases,
    )


GROUP = Group(
    name="host",
    title="Host-wide locks",
    description=(
        f"`{OURS}` (Linux OFD byte-range locks on one lock file, one byte per key) "
        "against a raw OFD lock and the file locks users would pick (filelock, "
        "fasteners, portalocker) and `multiprocessing.Lock`; "
        f"`{MANAGER}` against `multiprocessing.Manager().Lock()`. Child processes "
        "are forked; every file lock has its own lock file in a temporary directory."
    ),
    scenarios=[
        _uncontended_scenario(),
        _contended_scenario(),
        HandoffScenario(),
        _manager_scenario(),
        _manager_contended_scenario(),
    ],
    order=30,
    packages=("filelock", "fasteners", "portalocker"),
)
