"""Group ``cluster``: keyed locks shared through Redis, against the Redis locks users pick.

Scenarios (all against one Valkey/Redis server the group starts on loopback):

* uncontended acquire+release in one process: ``RedisKeyedLock`` against a ``SET NX PX``
  plus compare-and-delete script written inline (the floor), redis-py's ``Lock``,
  python-redis-lock and pottery's ``Redlock`` with one master; and the server commands
  (round trips) each pays per acquire+release;
* process-to-process hand-off latency (median, p90);
* 8 processes on one key: throughput, and how FIFO the service is (the worst wait in queue
  positions: how many later arrivals were served first);
* renewal cost: round trips per renewal period with 1 to 1,000 keys held.

Child processes are forked (``multiprocessing`` with ``fork``); each makes its own client
or lock after the fork, and every child is joined, or killed if it hangs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import math
import multiprocessing
import statistics
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from multiprocessing.connection import Connection
from time import monotonic_ns, perf_counter_ns
from typing import Any, Final

import pottery
import redis
import redis.connection
import redis_lock
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
    format_rate,
    format_ratio,
)

from keyedlock._scopes._redis import Link
from keyedlock.redis import RedisKeyedLock

from ._redis_server import redis_server
from ._redis_waits import bisect_overtakes, wait_blocked

KEY: Final = "user:42"
LEASE: Final = 10.0

#: Labels shared by the scenarios (ratios refer to cases by label).
OURS: Final = "RedisKeyedLock"
FLOOR: Final = "SET NX PX + compare-and-delete"
REDISPY: Final = "redis-py Lock"
REDISPY_FAST: Final = "redis-py Lock sleep=0.001"
PRL: Final = "python-redis-lock"
POTTERY: Final = "pottery Redlock (1 master)"

#: Targets: hand-off median (ns), throughput ratio against redis-py's Lock, uncontended ratio
#: against the floor, round trips.
HANDOFF_LIMIT_NS: Final = 1_000_000
THROUGHPUT_LIMIT: Final = 5.0
FLOOR_LIMIT: Final = 1.3
ROUND_TRIPS_LIMIT: Final = 2

_FORK: Final = multiprocessing.get_context("fork")
_REPLY_TIMEOUT: Final = 120.0
_JOIN_TIMEOUT: Final = 10.0

_CAD: Final = (
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
)

Measure = Callable[[int], int]


# -- the locks ---------------------------------------------------------------------


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class _Handle:
    """One process's use of a lock: acquire (blocking), release, and close when done."""

    acquire: Callable[[], object]
    release: Callable[[], object]
    close: Callable[[], object] = _nothing


#: Called in the process that uses the lock, with the server's URL.
Opener = Callable[[str], _Handle]


def _ours(url: str) -> _Handle:
    lock = RedisKeyedLock(url, prefix="bench:", lease=LEASE)
    return _Handle(partial(lock.acquire, KEY), partial(lock.release, KEY))


def _floor(url: str) -> _Handle:
    """The least a leased lock costs: ``SET NX PX`` to take, a compare-and-delete to give
    back (it cannot wait: the scenarios that wait leave it out)."""
    client = redis.Redis.from_url(url)
    release = client.register_script(_CAD)
    name = "bench-floor"
    token = uuid.uuid4().hex

    def acquire() -> None:
        if not client.set(name, token, nx=True, px=int(LEASE * 1000)):
            raise RuntimeError("the floor's key is taken: it cannot wait")

    return _Handle(acquire, partial(release, keys=[name], args=[token]), client.close)


def _redispy(sleep: float) -> Opener:
    def open_(url: str) -> _Handle:
        client = redis.Redis.from_url(url)
        lock = client.lock(f"bench-redis-py-{sleep}", timeout=LEASE, sleep=sleep)
        return _Handle(lock.acquire, lock.release, client.close)

    return open_


def _prl(url: str) -> _Handle:
    client = redis.Redis.from_url(url)
    lock = redis_lock.Lock(client, "bench-prl", expire=int(LEASE))
    return _Handle(lock.acquire, lock.release, client.close)


def _pottery(url: str) -> _Handle:
    client = redis.Redis.from_url(url)
    lock = pottery.Redlock(key="bench-pottery", masters={client}, auto_release_time=LEASE)
    return _Handle(lock.acquire, lock.release, client.close)


@dataclass(frozen=True)
class _Contender:
    """A lock of the scenarios: how a blocked acquire waits, and hand-off repetitions
    (full run, quick run), fewer for the locks that poll."""

    label: str
    opener: Opener
    waits: str
    reps: tuple[int, int] = (300, 45)
    polls: bool = False


def _waiting_contenders() -> list[_Contender]:
    slow = (15, 3)
    return [
        _Contender(OURS, _ours, "wake list (BLPOP), FIFO queue"),
        _Contender(REDISPY, _redispy(0.1), "polls every 100 ms", slow, True),
        _Contender(REDISPY_FAST, _redispy(0.001), "polls every 1 ms", (100, 15), True),
        _Contender(PRL, _prl, "signal list (BLPOP)"),
        _Contender(POTTERY, _pottery, "polls, 0-200 ms at random", slow, True),
    ]


# -- child processes ---------------------------------------------------------------


def _child_main(body: Callable[[Connection], object], conn: Connection) -> None:
    try:
        result = body(conn)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


class _Child:
    """A forked process running ``body(conn)``; it reports with :func:`_tell`."""

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
        if kill:
            self.process.kill()
        self.process.join(_JOIN_TIMEOUT)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _tell(conn: Connection, value: object = None) -> None:
    conn.send(("ok", value))


@contextlib.contextmanager
def _forked(*bodies: Callable[[Connection], object]) -> Iterator[list[_Child]]:
    children: list[_Child] = []
    failed = True
    try:
        for body in bodies:
            children.append(_Child(body))  # noqa: PERF401 - reaped even if a fork fails
        yield children
        failed = False
    finally:
        for child in children:
            child.reap(kill=failed)


@dataclass(frozen=True)
class _Served:
    """A scenario whose cases need the server: it is started around the run."""

    template: TimedScenario
    cases: Callable[[str], Sequence[Case]]
    extra: Callable[[str, ScenarioResult, Settings], None] | None = None

    @property
    def name(self) -> str:
        return self.template.name

    @property
    def title(self) -> str:
        return self.template.title

    def run(self, settings: Settings) -> ScenarioResult:
        with redis_server() as url:
            scenario = dataclasses.replace(self.template, cases=self.cases(url))
            result = scenario.run(settings)
            if self.extra is not None:
                self.extra(url, result, settings)
        return result


# -- 1. uncontended ----------------------------------------------------------------


def _loop(opener: Opener, url: str) -> Measure:
    def measure(n: int) -> int:
        handle = opener(url)
        acquire, release = handle.acquire, handle.release
        try:
            acquire()  # connected (outside the timing)
            release()
            start = perf_counter_ns()
            for _ in range(n):
                acquire()
                release()
            return perf_counter_ns() - start
        finally:
            handle.close()

    return measure


def _ours_with(url: str) -> Measure:
    def measure(n: int) -> int:
        lock = RedisKeyedLock(url, prefix="bench-with:", lease=LEASE)
        with lock(KEY):  # connected (outside the timing)
            pass
        start = perf_counter_ns()
        for _ in range(n):
            with lock(KEY):
                pass
        return perf_counter_ns() - start

    return measure


OURS_WITH: Final = "RedisKeyedLock, with"
UNCONTENDED: Final = (
    (OURS_WITH, None),
    (OURS, _ours),
    (FLOOR, _floor),
    (REDISPY, _redispy(0.1)),
    (PRL, _prl),
    (POTTERY, _pottery),
)


def _uncontended_cases(url: str) -> list[Case]:
    return [
        Case(label, _ours_with(url) if opener is None else _loop(opener, url))
        for label, opener in UNCONTENDED
    ]


def _commands_per_acquire(url: str, result: ScenarioResult, settings: Settings) -> None:
    """The commands each case sends per acquire+release: with no pipelining, each is one
    round trip (counted in the client, as redis-py sends them)."""
    n = settings.size(200, 50)
    rows = []
    counts: dict[str, float] = {}
    for label, opener in UNCONTENDED:
        if opener is None:
            lock = RedisKeyedLock(url, prefix="bench-with:", lease=LEASE)
            handle = _Handle(_nothing, _nothing)
            one = partial(_with_once, lock)
        else:
            handle = opener(url)
            one = partial(_acquire_release, handle)
        try:
            for _ in range(5):  # connected, scripts loaded
                one()
            with _counting_sends() as sent:
                for _ in range(n):
                    one()
        finally:
            handle.close()
        counts[label] = len(sent) / n
        rows.append([label, f"{counts[label]:.2f}"])
    result.tables.append(Table(["case", "round trips per acquire+release"], rows, frozenset({1})))
    for label in (OURS_WITH, OURS):
        passed = counts[label] <= ROUND_TRIPS_LIMIT
        result.checks.append(
            Check(
                result.name,
                f"{label}: round trips per acquire+release",
                f"{counts[label]:.2f}",
                f"<= {ROUND_TRIPS_LIMIT}",
                passed,
            )
        )
    result.data["round_trips_per_acquire"] = counts


def _with_once(lock: RedisKeyedLock) -> None:
    with lock(KEY):
        pass


def _acquire_release(handle: _Handle) -> None:
    handle.acquire()
    handle.release()


@contextlib.contextmanager
def _counting_sends() -> Iterator[list[None]]:
    """Count what redis-py's connections send (each send: one command, or one pipeline)."""
    sent: list[None] = []
    connection: Any = redis.connection.AbstractConnection
    original = connection.send_packed_command

    def counting(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(None)
        original(self, command, check_health)

    connection.send_packed_command = counting
    try:
        yield sent
    finally:
        connection.send_packed_command = original


def _uncontended_scenario() -> _Served:
    return _Served(
        TimedScenario(
            name="uncontended",
            title="Uncontended acquire+release, one process",
            description=(
                f"One process acquires and releases one key in a loop, nobody else using "
                f"it. {OURS_WITH}: `with lock(key): pass`; {OURS}: `lock.acquire(key)` then "
                f"`lock.release(key)`. {FLOOR}: `SET key token NX PX` then a Lua "
                "compare-and-delete (`EVALSHA`), written inline: the least a leased lock "
                f"costs (two round trips). {REDISPY}: `client.lock(name)`; {PRL}: "
                f"`redis_lock.Lock`; {POTTERY}: `Redlock(masters={{client}})`, acquire "
                f"then release. Lease {LEASE:g} s for all. The round-trips table counts "
                "the commands each case sends per acquire+release (no pipelining: one "
                "round trip each)."
            ),
            cases=[],
            ratios=[
                Ratio(OURS_WITH, (FLOOR,), FLOOR_LIMIT, short="with vs floor"),
                Ratio(OURS, (FLOOR,), FLOOR_LIMIT, short="acquire/release vs floor"),
                Ratio(OURS, (REDISPY,)),
                Ratio(OURS, (PRL,)),
                Ratio(OURS, (POTTERY,)),
            ],
            ops=2_000,
            quick_ops=300,
            unit="acquire",
        ),
        _uncontended_cases,
        _commands_per_acquire,
    )


# -- 2. hand-off latency -----------------------------------------------------------


def _handoffs(contender: _Contender, url: str, reps: int, warmup: int) -> list[int]:
    """Latencies (ns) of ``reps`` hand-offs from this process to a forked one (as the host
    group's: the waiter is asleep in its acquire when this process reads the clock and
    releases; it reads the clock as soon as its acquire returns)."""
    total = warmup + reps
    opener = contender.opener

    def waiter(conn: Connection) -> None:
        handle = opener(url)
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

    observer = (
        RedisKeyedLock(url, prefix="bench:", lease=LEASE) if contender.label == OURS else None
    )
    latencies: list[int] = []
    with _forked(waiter) as (child,):
        handle = opener(url)
        try:
            for i in range(total):
                handle.acquire()
                child.conn.send(None)
                child.expect()
                wait_blocked(child.pid)
                if observer is not None:  # ours: also its place in the queue is taken
                    deadline = time.monotonic() + _REPLY_TIMEOUT
                    while observer.waiters(KEY) < 1 and time.monotonic() < deadline:
                        time.sleep(50e-6)
                released = monotonic_ns()
                handle.release()
                got: int = child.expect()
                if i >= warmup:
                    latencies.append(got - released)
            child.expect()
        finally:
            handle.close()
    return latencies


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.3f} ms"


@dataclass(frozen=True)
class HandoffScenario:
    """Process-to-process hand-off latency per lock: median and p90."""

    name: str = "handoff"
    title: str = "Hand-off latency, process to process"

    def run(self, settings: Settings) -> ScenarioResult:
        contenders = _waiting_contenders()
        samples: dict[str, list[int]] = {c.label: [] for c in contenders}
        with redis_server() as url:
            for round_no in range(settings.repeats):
                for i in range(len(contenders)):
                    contender = contenders[(round_no + i) % len(contenders)]
                    reps = math.ceil(settings.size(*contender.reps) / settings.repeats)
                    gc.collect()
                    gc.disable()
                    try:
                        samples[contender.label] += _handoffs(
                            contender, url, reps, warmup=0 if contender.polls else 1
                        )
                    finally:
                        gc.enable()
        medians = {label: statistics.median(values) for label, values in samples.items()}
        result = ScenarioResult(
            self.name,
            self.title,
            (
                "Process A holds the key; process B (forked) is blocked in its acquire. A "
                "reads CLOCK_MONOTONIC and releases; B reads it as soon as its acquire "
                "returns. Latency: B's time minus A's. Before each release A waits until "
                "B is asleep in the acquire (state S in /proc), then 1 ms more; for "
                f"{OURS} also until B's place in the queue shows on the server. The locks "
                "that poll hand off only at B's next try; they get fewer repetitions."
            ),
        )
        rows = [
            [
                c.label,
                c.waits,
                str(len(samples[c.label])),
                _ms(medians[c.label]),
                _ms(_p90(samples[c.label])),
                _ms(min(samples[c.label])),
                _ms(max(samples[c.label])),
            ]
            for c in contenders
        ]
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
        result.bars.append(
            Bar(
                f"{self.name}: {OURS} median / {budget}",
                ours / HANDOFF_LIMIT_NS,
                1.0,
                False,
                passed,
            )
        )
        for label in (REDISPY, REDISPY_FAST, PRL, POTTERY):
            ratio = ours / medians[label]
            text = format_ratio(ratio) if ratio >= 0.1 else f"{ratio:.2g}x"
            what = f"{OURS} vs {label}, median hand-off, time"
            result.checks.append(Check(self.name, what, text, "report", None))
        result.data = {"latency_ns": samples, "median_ns": medians, "limit_ns": HANDOFF_LIMIT_NS}
        return result


def _p90(values: list[int]) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=10, method="inclusive")[8]


# -- 3. eight processes on one key -------------------------------------------------

PROCESSES: Final = 8


def _crowd(contender: _Contender, url: str, seconds: float, think: float) -> dict[str, Any]:
    """``PROCESSES`` forked processes on one key for ``seconds``: each acquires, records its
    arrival and grant times (CLOCK_MONOTONIC), releases, then works ``think`` seconds
    outside the lock; the acquisitions, in grant order, with their arrivals."""

    def work(conn: Connection) -> list[tuple[int, int]]:
        handle = contender.opener(url)
        try:
            handle.acquire()  # connected, scripts loaded
            handle.release()
            _tell(conn)  # ready
            start_at: int = conn.recv()
            while monotonic_ns() < start_at:
                time.sleep(0.0005)
            end = start_at + int(seconds * 1e9)
            seen = []
            while True:
                arrived = monotonic_ns()
                if arrived >= end:
                    break
                handle.acquire()
                granted = monotonic_ns()
                handle.release()
                seen.append((arrived, granted))
                if think:
                    time.sleep(think)
            return seen
        finally:
            handle.close()

    with _forked(*(work for _ in range(PROCESSES))) as children:
        for child in children:
            child.expect()
        start_at = monotonic_ns() + 100_000_000
        for child in children:
            child.conn.send(start_at)
        outcomes = [child.expect() for child in children]
    # Only what was granted within the window counts (a waiter may get the lock late).
    end = start_at + int(seconds * 1e9)
    acquisitions = sorted(
        (granted, arrived, n)
        for n, seen in enumerate(outcomes)
        for arrived, granted in seen
        if granted < end
    )
    per_process = [sum(1 for _, granted in seen if granted < end) for seen in outcomes]
    overtakes = bisect_overtakes([arrived for _, arrived, _ in acquisitions])
    return {
        "acquisitions": len(acquisitions),
        "per_process": per_process,
        "throughput": len(acquisitions) / seconds,
        "worst_overtakes": max(overtakes, default=0),
        "mean_overtakes": statistics.fmean(overtakes) if overtakes else 0.0,
    }


@dataclass(frozen=True)
class CrowdScenario:
    """Eight processes on one key: throughput and FIFO, as tight loops or with work outside."""

    think: float
    name: str = "eight-processes"
    title: str = "Eight processes on one key"

    def run(self, settings: Settings) -> ScenarioResult:
        seconds = 2.0 if not settings.quick else 0.5
        rounds = max(1, settings.repeats // 5)
        contenders = [
            c for c in _waiting_contenders() if c.label in (OURS, REDISPY, REDISPY_FAST, PRL)
        ]
        runs: dict[str, list[dict[str, Any]]] = {c.label: [] for c in contenders}
        with redis_server() as url:
            for round_no in range(rounds):
                for i in range(len(contenders)):
                    contender = contenders[(round_no + i) % len(contenders)]
                    runs[contender.label].append(_crowd(contender, url, seconds, self.think))
        outside = (
            f"{self.think * 1e3:g} ms of work outside the lock"
            if self.think
            else "no work outside the lock"
        )
        result = ScenarioResult(
            self.name,
            self.title + (" (work outside the lock)" if self.think else " (tight loop)"),
            (
                f"{PROCESSES} forked processes share one key for {seconds:g} s ({rounds} "
                "rounds, the lock order rotating): each reads CLOCK_MONOTONIC (its arrival), "
                "acquires, reads it again (its grant), releases, and then does "
                f"{outside}. Throughput: acquisitions per second of all the processes "
                "together, granted within the window (median of the rounds). FIFO: for each "
                "acquisition, how many "
                "processes that arrived after it were served before it (0 for every "
                "acquisition is strict FIFO); the worst over the run, and the mean. "
                "Share: the fewest and the most acquisitions one process got. A lock "
                "whose waiters poll lets the process that just released take the key "
                "straight back (the others are asleep between two tries): in a tight "
                "loop that serves mostly one process at a time, fast but unfair (see "
                "its worst wait and share); FIFO hands every acquisition to another "
                "process, one wake-up each. With work outside the lock, the releaser "
                "cannot take it back at once and polling costs what it costs."
            ),
        )
        rows = []
        medians: dict[str, float] = {}
        for contender in contenders:
            done = runs[contender.label]
            medians[contender.label] = statistics.median(r["throughput"] for r in done)
            shares = [count for r in done for count in r["per_process"]]
            rows.append(
                [
                    contender.label,
                    format_rate(medians[contender.label]),
                    str(max(r["worst_overtakes"] for r in done)),
                    f"{statistics.fmean(r['mean_overtakes'] for r in done):.2f}",
                    f"{min(shares)} - {max(shares)}",
                ]
            )
        result.tables.append(
            Table(
                ["lock", "acquisitions/s", "worst wait (queue positions)", "mean", "share"],
                rows,
                frozenset({1, 2, 3}),
            )
        )
        ratio = medians[OURS] / medians[REDISPY]
        passed = ratio >= THROUGHPUT_LIMIT
        what = f"{OURS} vs {REDISPY}, throughput"
        target = f">= {THROUGHPUT_LIMIT:.2f}x"
        result.checks.append(Check(self.name, what, format_ratio(ratio), target, passed))
        result.bars.append(
            Bar(f"{self.name}: {OURS} vs {REDISPY}", ratio, THROUGHPUT_LIMIT, True, passed)
        )
        worst = max(r["worst_overtakes"] for r in runs[OURS])
        result.checks.append(
            Check(self.name, f"{OURS}: worst wait in queue positions", str(worst), "report", None)
        )
        for label in (REDISPY_FAST, PRL):
            value = medians[OURS] / medians[label]
            result.checks.append(
                Check(
                    self.name, f"{OURS} vs {label}, throughput", format_ratio(value), "report", None
                )
            )
        result.data = {"runs": runs, "seconds": seconds, "think": self.think}
        return result


# -- 4. renewal cost ---------------------------------------------------------------


@dataclass(frozen=True)
class RenewalScenario:
    """Round trips of the renewal thread per period, with 1 to 1,000 keys held."""

    name: str = "renewal"
    title: str = "Renewal cost"

    def run(self, settings: Settings) -> ScenarioResult:
        lease = 0.3
        hold = 1.5 if not settings.quick else 0.6
        counts = (1, 10, 100, 1000)
        rows = []
        data: dict[str, Any] = {}
        worst = 0.0
        with redis_server() as url:
            for count in counts:
                rounds, calls = _renewal_rounds(url, count, lease, hold)
                periods = hold / (lease / 3)
                per_period = rounds / periods
                worst = max(worst, per_period)
                rows.append(
                    [
                        str(count),
                        f"{periods:.0f}",
                        str(rounds),
                        f"{per_period:.2f}",
                        f"{calls / max(rounds, 1):.0f}",
                    ]
                )
                data[str(count)] = {"rounds": rounds, "calls": calls, "periods": periods}
        result = ScenarioResult(
            self.name,
            self.title,
            (
                f"One process holds N keys of one RedisKeyedLock (lease {lease:g} s: a "
                f"renewal period of {lease / 3 * 1e3:.0f} ms) for {hold:g} s. The renewal "
                "thread's batches are counted (each is one round trip to the server), and "
                "the renew calls in them."
            ),
        )
        result.tables.append(
            Table(
                [
                    "keys held",
                    "periods",
                    "round trips",
                    "round trips per period",
                    "renew calls per round trip",
                ],
                rows,
                frozenset({0, 1, 2, 3, 4}),
            )
        )
        passed = worst <= 1.2  # (a period's edge may fall inside the measurement)
        result.checks.append(
            Check(
                self.name, "round trips per renewal period", f"{worst:.2f}", "<= 1 (+20%)", passed
            )
        )
        result.data = data
        return result


def _renewal_rounds(url: str, count: int, lease: float, hold: float) -> tuple[int, int]:
    """(batches, calls) the renewal thread sent while ``count`` keys were held."""
    lock = RedisKeyedLock(url, prefix=f"bench-renew-{count}:", lease=lease)
    keys = [f"key-{n}" for n in range(count)]
    batches: list[int] = []
    original = Link.run_many

    def counting(
        self: Link, calls: Sequence[Any], wait: float | None = None, *, skip_late: bool = False
    ) -> list[Any]:
        batches.append(len(calls))
        return original(self, calls, wait, skip_late=skip_late)

    for key in keys:
        lock.acquire(key)
    Link.run_many = counting  # type: ignore[method-assign]
    try:
        time.sleep(hold)
    finally:
        Link.run_many = original  # type: ignore[method-assign]
    for key in keys:
        lock.release(key)
    return len(batches), sum(batches)


GROUP = Group(
    name="cluster",
    title="Cluster: Redis",
    description=(
        f"`{OURS}` (the cluster scope: a fair, fenced, leased lock in Lua, waiters woken "
        "by a blocking pop) against the Redis locks users pick: redis-py's `Lock` (default "
        "and `sleep=0.001`), python-redis-lock, pottery's `Redlock` with one master, and a "
        "`SET NX PX` + compare-and-delete written inline (the floor). One Valkey/Redis "
        "server on loopback, started by the group; child processes are forked."
    ),
    scenarios=[
        _uncontended_scenario(),
        HandoffScenario(),
        CrowdScenario(think=0.0),
        CrowdScenario(think=0.001, name="eight-processes-working"),
        RenewalScenario(),
    ],
    order=40,
    packages=("redis", "python-redis-lock", "pottery"),
)
