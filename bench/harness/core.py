"""The benchmark model: groups of scenarios, each measuring its cases side by side.

A *group* (one module in ``bench/groups/``) is a list of *scenarios*. A
scenario runs and returns a :class:`ScenarioResult`: tables to print, checks
against targets, and bars for the group's chart. Most scenarios are a
:class:`TimedScenario`: a few *cases* (ours and the baselines) doing the same
work, measured in interleaved rounds, reported as ratios.

Method of a :class:`TimedScenario`, chosen for a small shared machine where
absolute figures drift from minute to minute:

* every case is warmed up once before any measurement;
* then ``repeats`` rounds; each round measures every case once, the order
  rotating by one each round (ABC, BCA, CAB, ...) so that no case always runs
  first or last;
* a case's ``measure(n)`` does its own setup, then times only its loop of
  ``n`` operations with :func:`time.perf_counter_ns`; the cyclic garbage
  collector is off during the call (collected just before);
* a ratio is computed per round from the two cases measured in that round,
  and the median over the rounds is reported (with its interquartile range);
  absolute ns/op are medians too, for reference only.
"""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Bar",
    "Case",
    "Check",
    "Group",
    "Ratio",
    "Scenario",
    "ScenarioResult",
    "Settings",
    "Table",
    "TimedScenario",
    "format_ns",
    "format_rate",
    "format_ratio",
]


@dataclass(frozen=True)
class Settings:
    """How long to measure: a full run, or a short smoke run (``quick``)."""

    quick: bool = False
    repeats: int = 15

    def size(self, full: int, quick: int) -> int:
        """The workload size for this run: ``full`` normally, ``quick`` in a smoke run."""
        return quick if self.quick else full


@dataclass(frozen=True)
class Case:
    """One contender of a scenario.

    ``measure(n)`` sets up, performs ``n`` operations and returns the
    nanoseconds taken by the operations alone (setup and teardown excluded).
    """

    label: str
    measure: Callable[[int], int]


@dataclass(frozen=True)
class Ratio:
    """A comparison of ``subject`` with the fastest of ``baselines``.

    As a time ratio (subject time / baseline time, lower is better), or with
    ``throughput`` as a throughput ratio (subject ops/s / baseline ops/s,
    higher is better). ``limit`` is the target: at most ``limit`` for a time
    ratio, at least ``limit`` for a throughput ratio; None only reports.
    ``short`` names the comparison on the chart.
    """

    subject: str
    baselines: tuple[str, ...]
    limit: float | None = None
    throughput: bool = False
    short: str = ""

    def passes(self, value: float) -> bool:
        """Whether ``value`` meets the target (call only when ``limit`` is set)."""
        assert self.limit is not None
        return value >= self.limit if self.throughput else value <= self.limit

    def target_text(self) -> str:
        if self.limit is None:
            return "report"
        return f"{'>=' if self.throughput else '<='} {self.limit:.2f}x"


@dataclass(frozen=True)
class Check:
    """One measured figure against its target (``passed`` is None: report only)."""

    scenario: str
    what: str
    measured: str
    target: str
    passed: bool | None


@dataclass(frozen=True)
class Bar:
    """One bar of a group's chart: a ratio and its target."""

    label: str
    value: float
    limit: float | None
    higher_is_better: bool
    passed: bool | None


@dataclass(frozen=True)
class Table:
    """A table of text cells; ``numeric`` columns are right-aligned."""

    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    numeric: frozenset[int] = frozenset()


@dataclass
class ScenarioResult:
    """What a scenario reports: tables, checks, chart bars and raw data (JSON)."""

    name: str
    title: str
    description: str
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    data: dict[str, object] = field(default_factory=dict)


class Scenario(Protocol):
    """Anything that runs and reports; :class:`TimedScenario` is the usual one."""

    @property
    def name(self) -> str: ...

    @property
    def title(self) -> str: ...

    def run(self, settings: Settings) -> ScenarioResult: ...


@dataclass(frozen=True)
class Group:
    """A named set of scenarios: one module of ``bench/groups/`` defines one as ``GROUP``.

    ``order`` sorts the groups in the output (lower first); ``packages`` are
    the distributions whose versions the report records.
    """

    name: str
    title: str
    description: str
    scenarios: Sequence[Scenario]
    order: int = 100
    packages: Sequence[str] = ()


def format_ns(ns: float) -> str:
    """Nanoseconds with thousands separators (``12,345``) or one decimal under 100."""
    return f"{ns:.1f}" if ns < 100 else f"{ns:,.0f}"


def format_rate(per_second: float) -> str:
    """Operations per second, compact (``1.23 M/s``)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= scale:
            return f"{per_second / scale:.2f} {suffix}/s"
    return f"{per_second:.0f} /s"


def format_ratio(value: float) -> str:
    return f"{value:.2f}x"


def _timed(case: Case, n: int) -> int:
    """``case.measure(n)`` with the cyclic garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        elapsed = case.measure(n)
    finally:
        gc.enable()
    if elapsed <= 0:
        raise RuntimeError(f"case {case.label!r} reported a non-positive time: {elapsed} ns")
    return elapsed


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


@dataclass(frozen=True)
class TimedScenario:
    """Cases doing the same work, measured in interleaved rounds, compared by ratios.

    ``ops`` / ``quick_ops``: operations per measurement in a full / quick
    run. ``unit``: what one operation is (shown in the tables).
    ``throughput``: also show operations per second.
    """

    name: str
    title: str
    description: str
    cases: Sequence[Case]
    ratios: Sequence[Ratio]
    ops: int
    quick_ops: int
    unit: str = "op"
    throughput: bool = False

    def run(self, settings: Settings) -> ScenarioResult:
        labels = [case.label for case in self.cases]
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate case labels in {self.name!r}: {labels}")
        n = settings.size(self.ops, self.quick_ops)
        for case in self.cases:  # warm-up: code paths, caches, specialization
            _timed(case, max(1, n // 5))
        samples: dict[str, list[float]] = {label: [] for label in labels}
        count = len(self.cases)
        for round_no in range(settings.repeats):
            for i in range(count):
                case = self.cases[(round_no + i) % count]
                samples[case.label].append(_timed(case, n) / n)
        medians = {label: statistics.median(values) for label, values in samples.items()}

        result = ScenarioResult(self.name, self.title, self.description)
        columns = ["case", f"ns/{self.unit} (median)"]
        if self.throughput:
            columns.append(f"{self.unit}s/s")
        rows = []
        for label in labels:
            row = [label, format_ns(medians[label])]
            if self.throughput:
                row.append(format_rate(1e9 / medians[label]))
            rows.append(row)
        result.tables.append(Table(columns, rows, frozenset(range(1, len(columns)))))

        ratio_rows = []
        ratio_data = []
        for ratio in self.ratios:
            baseline = min(ratio.baselines, key=medians.__getitem__)
            pairs = zip(samples[ratio.subject], samples[baseline], strict=True)
            if ratio.throughput:
                per_round = [base / subject for subject, base in pairs]
            else:
                per_round = [subject / base for subject, base in pairs]
            value = statistics.median(per_round)
            low, high = _quartiles(per_round)
            passed = None if ratio.limit is None else ratio.passes(value)
            kind = "throughput" if ratio.throughput else "time"
            what = f"{ratio.subject} vs {baseline}, {kind}"
            if len(ratio.baselines) > 1:
                what += f" (the faster of {len(ratio.baselines)} baselines)"
            verdict = "-" if passed is None else ("PASS" if passed else "FAIL")
            ratio_rows.append(
                [
                    what,
                    format_ratio(value),
                    f"{low:.2f}-{high:.2f}",
                    ratio.target_text(),
                    verdict,
                ]
            )
            result.checks.append(
                Check(self.name, what, format_ratio(value), ratio.target_text(), passed)
            )
            short = ratio.short or f"{ratio.subject} vs {baseline}"
            result.bars.append(
                Bar(f"{self.name}: {short}", value, ratio.limit, ratio.throughput, passed)
            )
            ratio_data.append(
                {
                    "subject": ratio.subject,
                    "baseline": baseline,
                    "kind": kind,
                    "median": value,
                    "per_round": per_round,
                    "limit": ratio.limit,
                    "passed": passed,
                }
            )
        if ratio_rows:
            result.tables.append(
                Table(
                    ["comparison", "ratio (median)", "IQR of rounds", "target", "result"],
                    ratio_rows,
                    frozenset({1, 2}),
                )
            )
        result.data = {
            "ops_per_measurement": n,
            "repeats": settings.repeats,
            "unit": self.unit,
            "ns_per_op": {label: samples[label] for label in labels},
            "median_ns_per_op": medians,
            "ratios": ratio_data,
        }
        return result
