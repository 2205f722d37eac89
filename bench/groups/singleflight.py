"""Group ``singleflight``: a herd of callers sharing one call, three ways.

Scenarios:

* 1000 asyncio tasks call one key at once; the shared call awaits 10 ms.
  ``flight.do`` against a dict of futures written by hand (two shapes; the
  faster is used) and the PyPI ``singleflight`` package's asyncio class;
* the same herd with a call that only yields once, so that nothing but the
  per-caller cost is left;
* a few threads calling one key with ``do_sync``, against the same baselines
  in their threaded forms.

What a herd costs is the time the event loop is busy: the wall time of the
herd minus the time the loop spends blocked in its selector while the shared
call sleeps. The selector given to the loop adds that time up; the rest of the
loop is asyncio's own ``SelectorEventLoop``, as ``asyncio.run`` would create.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import selectors
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from time import perf_counter_ns

from harness import Bar, Check, Group, ScenarioResult, Settings, Table, format_ns, format_ratio
from singleflight.asynchronous import SingleFlightAsync
from singleflight.basic import SingleFlight as SingleFlightThreads

from keyedlock import SingleFlight

from ._handrolled_flight import AsyncFlight, AsyncFlightShielded, ThreadFlight

KEY = "user:42"

#: Labels shared by the scenarios (ratios refer to cases by label).
OURS = "keyedlock"
HAND_PLAIN = "hand-rolled (await future)"
HAND_SHIELD = "hand-rolled (await shield(future))"
HAND_THREADS = "hand-rolled (dict of futures)"
HAND = (HAND_PLAIN, HAND_SHIELD)
PACKAGE = "singleflight"

CALLERS = 1000
THREADS = 8
CALL_SECONDS = 0.01
TARGET = 1.2

#: One single-flight object's call for KEY, taking the shared function: the
#: object's method with KEY bound by ``functools.partial`` (the same C-level
#: indirection for every case, whatever the order of its arguments).
AsyncDo = Callable[[Callable[[], Awaitable[int]]], Awaitable[int]]
SyncDo = Callable[[Callable[[], int]], int]


def _package_version() -> str:
    try:
        return metadata.version("singleflight")
    except metadata.PackageNotFoundError:
        return "?"


# -- one herd ----------------------------------------------------------------------


@dataclass(frozen=True)
class Herd:
    """What one herd of callers measured (times in ns)."""

    callers: int
    wall: int  # from the start until the last caller has its value
    idle: int | None  # the loop blocked in its selector meanwhile (asyncio only)
    delivery: int  # from the shared call's return until the last caller has its value
    cpu: int  # CPU time over the same span (the loop's thread; the process for threads)
    calls: int  # how many times the shared call ran
    served: int  # callers that received the herd's value

    @property
    def busy(self) -> int:
        """The wall time minus the loop's idle time (threads: the wall time, none is known)."""
        return self.wall - (self.idle or 0)


class IdleSelector(selectors.DefaultSelector):
    """The platform's default selector, adding up the time the loop blocks in it.

    A call with a zero timeout only polls (the loop has work ready); any other
    call is the loop waiting for a timer or I/O, and its duration is idle time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.idle_ns = 0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return super().select(timeout)
        start = perf_counter_ns()
        try:
            return super().select(timeout)
        finally:
            self.idle_ns += perf_counter_ns() - start


async def _asyncio_herd(do: AsyncDo, selector: IdleSelector, value: int, delay: float) -> Herd:
    """CALLERS tasks ``await do(call)``; ``call`` sleeps ``delay`` s (0: one yield)."""
    loop = asyncio.get_running_loop()
    calls = served = done = 0
    call_end = last = last_cpu = 0
    finished: asyncio.Future[None] = loop.create_future()

    async def call() -> int:
        nonlocal calls, call_end
        calls += 1
        await asyncio.sleep(delay)
        call_end = perf_counter_ns()
        return value

    async def caller() -> None:
        nonlocal served, done, last, last_cpu
        try:
            got = await do(call)
        except BaseException as exc:
            if not finished.done():
                finished.set_exception(exc)
            raise
        served += got == value
        done += 1
        if done == CALLERS:
            last = perf_counter_ns()
            last_cpu = time.thread_time_ns()
            finished.set_result(None)

    # The tasks are created (not run yet) before the clock starts: their first
    # steps, and everything after, are the herd.
    tasks = [loop.create_task(caller()) for _ in range(CALLERS)]
    async with asyncio.timeout(60):
        idle_before = selector.idle_ns
        cpu = time.thread_time_ns()
        start = perf_counter_ns()
        await finished
    idle = selector.idle_ns - idle_before
    await asyncio.gather(*tasks)
    return Herd(CALLERS, last - start, idle, last - call_end, last_cpu - cpu, calls, served)


def _asyncio_measure(make: Callable[[], AsyncDo], delay: float) -> Callable[[int], list[Herd]]:
    """``herds`` herds in a row on one new event loop and one new single-flight object."""

    def measure(herds: int) -> list[Herd]:
        selector = IdleSelector()

        async def main() -> list[Herd]:
            do = make()
            return [await _asyncio_herd(do, selector, i, delay) for i in range(herds)]

        with asyncio.Runner(loop_factory=lambda: asyncio.SelectorEventLoop(selector)) as runner:
            return runner.run(main())

    return measure


def _thread_herd(do: SyncDo, value: int, delay: float) -> Herd:
    """THREADS threads, released by a barrier, each calling ``do(call)`` once."""
    barrier = threading.Barrier(THREADS + 1)
    guard = threading.Lock()
    calls = served = done = 0
    call_end = last = last_cpu = 0

    def call() -> int:
        nonlocal calls, call_end
        with guard:
            calls += 1
        time.sleep(delay)
        call_end = perf_counter_ns()
        return value

    def worker() -> None:
        nonlocal served, done, last, last_cpu
        barrier.wait(timeout=60)
        try:
            got: int | None = do(call)
        finally:
            with guard:
                done += 1
                if done == THREADS:
                    last = perf_counter_ns()
                    last_cpu = time.process_time_ns()
        with guard:
            served += got == value

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    while barrier.n_waiting < THREADS:  # every thread waits at the barrier
        time.sleep(0.0005)
    cpu = time.process_time_ns()
    start = perf_counter_ns()
    barrier.wait(timeout=60)
    for thread in threads:
        thread.join(timeout=60)
        if thread.is_alive():
            raise RuntimeError("a benchmark thread did not finish in 60 s")
    return Herd(THREADS, last - start, None, last - call_end, last_cpu - cpu, calls, served)


def _thread_measure(make: Callable[[], SyncDo], delay: float) -> Callable[[int], list[Herd]]:
    def measure(herds: int) -> list[Herd]:
        do = make()
        return [_thread_herd(do, i, delay) for i in range(herds)]

    return measure


# -- the contenders ----------------------------------------------------------------


def _ours_async() -> AsyncDo:
    return partial(SingleFlight().do, KEY)


def _hand_async() -> AsyncDo:
    return partial(AsyncFlight().do, KEY)


def _hand_shielded_async() -> AsyncDo:
    return partial(AsyncFlightShielded().do, KEY)


def _package_async() -> AsyncDo:
    return partial(SingleFlightAsync().call, key=KEY)  # its signature: call(fn, key, *args)


def _ours_sync() -> SyncDo:
    return partial(SingleFlight().do_sync, KEY)


def _hand_sync() -> SyncDo:
    return partial(ThreadFlight().do, KEY)


def _package_sync() -> SyncDo:
    return partial(SingleFlightThreads().call, key=KEY)


# -- the scenario ------------------------------------------------------------------


@dataclass(frozen=True)
class HerdCase:
    """One contender: ``measure(herds)`` runs that many herds and returns them."""

    label: str
    measure: Callable[[int], list[Herd]]


@dataclass(frozen=True)
class Metric:
    """A figure per caller (or per herd) computed from a measurement's herds."""

    column: str
    of: Callable[[Sequence[Herd]], float]
    unit: str = "ns"


@dataclass(frozen=True)
class HerdRatio:
    """``subject`` over the fastest of ``baselines`` on ``metric`` (lower is better)."""

    subject: str
    baselines: tuple[str, ...]
    metric: Metric
    limit: float | None = None
    short: str = ""


def _per_caller(herds: Sequence[Herd], ns: Callable[[Herd], float]) -> float:
    return sum(ns(h) for h in herds) / sum(h.callers for h in herds)


def _mean(herds: Sequence[Herd], ns: Callable[[Herd], float]) -> float:
    return sum(ns(h) for h in herds) / len(herds)


def _measured(case: HerdCase, herds: int) -> list[Herd]:
    """``case.measure(herds)`` with the cyclic garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        return case.measure(herds)
    finally:
        gc.enable()


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def _us(ns: float) -> str:
    return f"{ns / 1e3:,.1f}"


@dataclass(frozen=True)
class HerdScenario:
    """Herds of callers sharing one call; interleaved rounds as in ``TimedScenario``.

    Each round measures every case once (``herds`` herds each), the order
    rotating by one each round, after one warm-up herd per case. A metric is
    taken over each measurement's herds; the tables give its median over the
    rounds (the per-herd table: medians over all herds), and a ratio is
    computed per round and its median reported. Every herd must run the call
    exactly once and hand its value to every caller: with ``strict_calls``
    anything else stops the run, since the figures would then mean nothing;
    without, it shows as a failed check.
    """

    name: str
    title: str
    description: str
    cases: Sequence[HerdCase]
    metrics: Sequence[Metric]
    ratios: Sequence[HerdRatio]
    herds: int
    quick_herds: int
    delay: float
    strict_calls: bool = True

    def run(self, settings: Settings) -> ScenarioResult:
        herds = settings.size(self.herds, self.quick_herds)
        for case in self.cases:  # warm-up
            self._verify(case, _measured(case, 1))
        samples: dict[str, list[list[Herd]]] = {case.label: [] for case in self.cases}
        count = len(self.cases)
        for round_no in range(settings.repeats):
            for i in range(count):
                case = self.cases[(round_no + i) % count]
                measured = _measured(case, herds)
                self._verify(case, measured)
                samples[case.label].append(measured)

        result = ScenarioResult(self.name, self.title, self.description)
        self._herd_table(result, samples)
        medians = {
            (case.label, metric.column): statistics.median(
                metric.of(rnd) for rnd in samples[case.label]
            )
            for case in self.cases
            for metric in self.metrics
        }
        rows = [
            [case.label, *(_fmt(medians[case.label, m.column], m.unit) for m in self.metrics)]
            for case in self.cases
        ]
        columns = ["case", *(f"{m.column} ({m.unit}, median)" for m in self.metrics)]
        result.tables.append(Table(columns, rows, frozenset(range(1, len(columns)))))
        ratios = self._ratios(result, samples, medians)
        result.data = {
            "herds_per_measurement": herds,
            "repeats": settings.repeats,
            "delay_s": self.delay,
            "herds": {
                label: [[dataclasses.asdict(h) for h in rnd] for rnd in rounds]
                for label, rounds in samples.items()
            },
            "medians": {f"{label}: {column}": v for (label, column), v in medians.items()},
            "ratios": ratios,
        }
        return result

    def _verify(self, case: HerdCase, herds: Sequence[Herd]) -> None:
        if not self.strict_calls:
            return
        for herd in herds:
            if herd.calls != 1 or herd.served != herd.callers:
                raise RuntimeError(
                    f"{self.name}, {case.label}: a herd of {herd.callers} callers ran the "
                    f"call {herd.calls} time(s) and {herd.served} caller(s) got its value"
                )

    def _herd_table(self, result: ScenarioResult, samples: dict[str, list[list[Herd]]]) -> None:
        rows = []
        loop_figures = all(h.idle is not None for rounds in samples.values() for h in rounds[0])
        for case in self.cases:
            herds = [h for rnd in samples[case.label] for h in rnd]
            one_call = sum(h.calls == 1 for h in herds)
            all_served = sum(h.served == h.callers for h in herds)
            row = [case.label, _ms(statistics.median(h.wall for h in herds))]
            if loop_figures:
                row += [
                    _ms(statistics.median(h.idle or 0 for h in herds)),
                    _ms(statistics.median(h.busy for h in herds)),
                ]
            row += [f"{one_call}/{len(herds)}", f"{all_served}/{len(herds)}"]
            rows.append(row)
            callers = herds[0].callers
            good = sum(h.calls == 1 and h.served == h.callers for h in herds)
            result.checks.append(
                Check(
                    self.name,
                    f"{case.label}: herds with one call, all {callers} callers served",
                    f"{good}/{len(herds)}",
                    "all",
                    good == len(herds),
                )
            )
        columns = ["case", "wall (ms)"]
        if loop_figures:
            columns += ["loop idle (ms)", "loop busy (ms)"]
        columns += ["call ran once", "all served"]
        result.tables.append(Table(columns, rows, frozenset(range(1, len(columns)))))

    def _ratios(
        self,
        result: ScenarioResult,
        samples: dict[str, list[list[Herd]]],
        medians: dict[tuple[str, str], float],
    ) -> list[dict[str, object]]:
        rows = []
        data: list[dict[str, object]] = []
        for ratio in self.ratios:
            column = ratio.metric.column
            baseline = min(ratio.baselines, key=lambda label: medians[label, column])
            pairs = zip(samples[ratio.subject], samples[baseline], strict=True)
            per_round = [ratio.metric.of(ours) / ratio.metric.of(base) for ours, base in pairs]
            value = statistics.median(per_round)
            low, high = _quartiles(per_round)
            passed = None if ratio.limit is None else value <= ratio.limit
            target = "report" if ratio.limit is None else f"<= {ratio.limit:.2f}x"
            what = f"{ratio.subject} vs {baseline}, {column}"
            if len(ratio.baselines) > 1:
                what += f" (the faster of {len(ratio.baselines)} baselines)"
            verdict = "-" if passed is None else ("PASS" if passed else "FAIL")
            rows.append([what, format_ratio(value), f"{low:.2f}-{high:.2f}", target, verdict])
            result.checks.append(Check(self.name, what, format_ratio(value), target, passed))
            short = ratio.short or f"{ratio.subject} vs {baseline}"
            result.bars.append(Bar(f"{self.name}: {short}", value, ratio.limit, False, passed))
            data.append(
                {
                    "subject": ratio.subject,
                    "baseline": baseline,
                    "metric": column,
                    "median": value,
                    "per_round": per_round,
                    "limit": ratio.limit,
                    "passed": passed,
                }
            )
        result.tables.append(
            Table(
                ["comparison", "ratio (median)", "IQR of rounds", "target", "result"],
                rows,
                frozenset({1, 2}),
            )
        )
        return data


def _fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return _ms(value)
    if unit == "us":
        return _us(value)
    return format_ns(value)


# -- the metrics -------------------------------------------------------------------


def _overhead(herds: Sequence[Herd]) -> float:
    return _per_caller(herds, lambda h: h.busy)


def _naive(delay: float) -> Callable[[Sequence[Herd]], float]:
    return lambda herds: _per_caller(herds, lambda h: h.wall - delay * 1e9)


def _cpu(herds: Sequence[Herd]) -> float:
    return _per_caller(herds, lambda h: h.cpu)


def _arrival(herds: Sequence[Herd]) -> float:
    return _per_caller(herds, lambda h: h.busy - h.delivery)


def _delivery(herds: Sequence[Herd]) -> float:
    return _per_caller(herds, lambda h: h.delivery)


OVERHEAD = Metric("overhead/caller", _overhead)
CPU = Metric("CPU/caller", _cpu)
ARRIVAL = Metric("arrival/caller", _arrival)
DELIVERY = Metric("delivery/caller", _delivery)


def _asyncio_cases(delay: float) -> list[HerdCase]:
    return [
        HerdCase(OURS, _asyncio_measure(_ours_async, delay)),
        HerdCase(HAND_PLAIN, _asyncio_measure(_hand_async, delay)),
        HerdCase(HAND_SHIELD, _asyncio_measure(_hand_shielded_async, delay)),
        HerdCase(PACKAGE, _asyncio_measure(_package_async, delay)),
    ]


_CASES_TEXT = (
    f"The cases: `{OURS}` is `await SingleFlight().do(key, call)`; "
    f"`{HAND_PLAIN}` and `{HAND_SHIELD}` are the dict of futures written by hand "
    "(bench/groups/_handrolled_flight.py: the first caller creates an "
    "`asyncio.Future`, runs the call, sets the result and deletes the entry; the "
    "others await the future, directly or through `asyncio.shield`, which keeps a "
    "cancelled follower from cancelling the others, as keyedlock does); "
    f"`{PACKAGE}` is the PyPI package `singleflight` {_package_version()}, its "
    "asyncio class: `await singleflight.asynchronous.SingleFlightAsync().call(call, "
    "key=key)` (signature `call(fn, key, *args, **kwargs)`; `key` must be a `str`, "
    "`fn` an async function). Every case is called through `functools.partial` "
    "binding the key. One new single-flight object and one new event loop per "
    "measurement."
)

_METHOD_TEXT = (
    "**Overhead** is the time the event loop is busy: the herd's wall time (from "
    "just before the first caller runs, the tasks already created, until the last "
    "caller has its value) minus the time the loop spends blocked in its selector, "
    "which is the shared call's sleep and the timer's lateness. The loop is "
    "asyncio's `SelectorEventLoop` given a selector that adds up the time of every "
    "`select()` with a non-zero timeout; polls with a zero timeout count as busy. "
    "This removes the sleep, timer jitter included, for every case alike, and keeps "
    "everything else: each caller's entry and parking, the call's start, the "
    "wake-ups and each caller's return. *overhead/caller* divides it by the "
    "callers. *(wall - call)/caller* is the plain (wall - 10 ms) / callers, the "
    "per-caller overhead as the callers see it; it is kinder than the overhead, "
    "since the callers that arrive after the first one park while the call's 10 ms "
    "run (their cost hides in the sleep, up to 10 ms of it), and it includes the "
    "timer's lateness: epoll waits in whole milliseconds, and on the machine of this "
    "page the wait ends on a 2 ms tick (a loop that starts its 10 ms wait after 1.9 ms "
    "of arrivals wakes at 12 ms, one that starts it after 2.1 ms at 10 ms), so this "
    "figure moves in steps, and a faster arrival can show a longer wall time. The 1.2x "
    "target applies to both. keyedlock's followers await one shared future too, but "
    "in the overhead it also pays for each caller's way in (its ticket, the key and "
    "owner checks, its place in arrival order with threads and other loops) and for "
    "keeping followers apart (a cancelled caller leaves alone, the call and the others "
    "go on: the herd then gives each follower a future of its own), which the plain "
    "dict of futures does not do (one cancelled follower cancels the shared future "
    "for all); the shielded version, which does keep followers apart, is reported "
    "beside it. "
    "*CPU/caller* is the loop thread's CPU time over the same span, a cross-check "
    "of the overhead. *arrival* is the overhead until the call returns (every "
    "caller entering and parking, the call's start); *delivery* is the rest, from "
    "the call's return until every caller has its value."
)


def _asyncio_scenario() -> HerdScenario:
    naive = Metric("(wall - call)/caller", _naive(CALL_SECONDS))
    return HerdScenario(
        name="asyncio-herd",
        title=f"{CALLERS} asyncio callers of one key, the call awaits 10 ms",
        description=(
            f"{CALLERS} asyncio tasks call one key at once; the shared call does "
            "`await asyncio.sleep(0.01)` and returns a value. Every herd must run the "
            f"call exactly once and give all {CALLERS} callers its value (the run stops "
            "otherwise). " + _CASES_TEXT + " " + _METHOD_TEXT
        ),
        cases=_asyncio_cases(CALL_SECONDS),
        metrics=[OVERHEAD, naive, CPU, ARRIVAL, DELIVERY],
        ratios=[
            HerdRatio(OURS, HAND, naive, TARGET, short=f"{OURS} vs hand-rolled, wall - call"),
            HerdRatio(OURS, HAND, OVERHEAD, TARGET, short=f"{OURS} vs hand-rolled"),
            HerdRatio(OURS, (PACKAGE,), OVERHEAD),
            HerdRatio(OURS, (HAND_SHIELD,), OVERHEAD),
            HerdRatio(OURS, HAND, CPU, short=f"{OURS} vs hand-rolled, CPU"),
        ],
        herds=10,
        quick_herds=4,
        delay=CALL_SECONDS,
    )


def _asyncio_instant_scenario() -> HerdScenario:
    return HerdScenario(
        name="asyncio-herd-instant",
        title=f"{CALLERS} asyncio callers of one key, the call only yields",
        description=(
            "As asyncio-herd, but the shared call does `await asyncio.sleep(0)` (one "
            "yield, so every caller arrives while it runs) and returns: the loop is "
            "never idle, and the wall time is the per-caller cost alone. " + _CASES_TEXT
        ),
        cases=_asyncio_cases(0.0),
        metrics=[OVERHEAD, CPU, ARRIVAL, DELIVERY],
        ratios=[
            HerdRatio(OURS, HAND, OVERHEAD, short=f"{OURS} vs hand-rolled, no sleep"),
            HerdRatio(OURS, (PACKAGE,), OVERHEAD, short=f"{OURS} vs {PACKAGE}, no sleep"),
        ],
        herds=10,
        quick_herds=4,
        delay=0.0,
    )


def _thread_scenario() -> HerdScenario:
    naive = Metric("(wall - call)/caller", _naive(CALL_SECONDS), "us")
    cpu = Metric("CPU/caller", _cpu, "us")
    delivery = Metric("delivery", lambda herds: _mean(herds, lambda h: h.delivery), "us")
    return HerdScenario(
        name="thread-herd",
        title=f"{THREADS} threads calling one key, the call sleeps 10 ms",
        description=(
            f"{THREADS} threads, released together by a barrier, call one key; the "
            "shared call does `time.sleep(0.01)`. "
            f"`{OURS}` is `SingleFlight().do_sync(key, call)`; `{HAND_THREADS}` is a "
            "dict of `concurrent.futures.Future` under a `threading.Lock`, written by "
            f"hand; `{PACKAGE}` is `singleflight.basic.SingleFlight().call(call, key=key)`. "
            "Without an event loop the idle time cannot be taken out, so the figures "
            "are the wall time less the sleep, the CPU time of the process, and "
            "*delivery*: from the call's return until the last thread has the value "
            "(the threads wake one after another, each taking the GIL). A thread "
            "arriving after the call ended would start a second call; that is "
            "reported as a failed check rather than stopping the run."
        ),
        cases=[
            HerdCase(OURS, _thread_measure(_ours_sync, CALL_SECONDS)),
            HerdCase(HAND_THREADS, _thread_measure(_hand_sync, CALL_SECONDS)),
            HerdCase(PACKAGE, _thread_measure(_package_sync, CALL_SECONDS)),
        ],
        metrics=[naive, cpu, delivery],
        ratios=[
            HerdRatio(OURS, (HAND_THREADS,), cpu, short=f"{OURS} vs hand-rolled, threads"),
            HerdRatio(OURS, (HAND_THREADS,), delivery),
            HerdRatio(OURS, (PACKAGE,), cpu, short=f"{OURS} vs {PACKAGE}, threads"),
        ],
        herds=10,
        quick_herds=3,
        delay=CALL_SECONDS,
        strict_calls=False,
    )


GROUP = Group(
    name="singleflight",
    title="Single-flight",
    description=(
        "`flight.do(key, fn)` with a herd of callers on one key, against the "
        "single-flight written by hand (a dict of futures) and the PyPI "
        "`singleflight` package."
    ),
    scenarios=[_asyncio_scenario(), _asyncio_instant_scenario(), _thread_scenario()],
    order=20,
    packages=("singleflight",),
)
