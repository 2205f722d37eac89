"""Reporting: text tables, the Markdown page, the charts and the raw JSON."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import re
import sys
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path

from .core import Bar, Check, Group, ScenarioResult, Settings, Table

__all__ = [
    "GroupReport",
    "checks_table",
    "machine_info",
    "render_text",
    "text_checks",
    "update_markdown",
    "write_chart",
    "write_json",
]


class GroupReport:
    """The results of one group's run, with the machine it ran on."""

    def __init__(
        self,
        group: Group,
        results: Sequence[ScenarioResult],
        info: dict[str, str],
        settings: Settings,
    ) -> None:
        self.group = group
        self.results = list(results)
        self.info = info
        self.settings = settings

    @property
    def checks(self) -> list[Check]:
        return [check for result in self.results for check in result.checks]

    @property
    def bars(self) -> list[Bar]:
        return [bar for result in self.results for bar in result.bars]

    @property
    def chart_name(self) -> str:
        return f"bench-{self.group.name}.svg"


# -- machine -----------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(packages: Iterable[str]) -> dict[str, str]:
    """Date, interpreter, OS, CPU and the versions of ``packages``."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every OS
        usable = os.cpu_count() or 0
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.machine()}",
        "cpu": f"{_cpu_model()} ({usable} usable cores of {os.cpu_count()})",
    }
    versions = {name: _version(name) for name in ("keyedlock", *packages)}
    info["packages"] = ", ".join(f"{name} {version}" for name, version in versions.items())
    return info


# -- text --------------------------------------------------------------------


def _widths(table: Table) -> list[int]:
    widths = [len(column) for column in table.columns]
    for row in table.rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    return widths


def _text_table(table: Table) -> str:
    widths = _widths(table)

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if i in table.numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(table.columns), rule, *(line(row) for row in table.rows)])


def render_text(result: ScenarioResult) -> str:
    """A scenario's tables as plain text for the terminal."""
    head = f"== {result.name}: {result.title} =="
    parts = [head, result.description, *(_text_table(table) for table in result.tables)]
    return "\n\n".join(parts)


def checks_table(checks: Sequence[Check], with_scenario: bool = True) -> Table:
    """Every check of a run as one table (``result``: PASS, FAIL or ``-`` for report-only)."""
    columns = ["scenario", "comparison", "measured", "target", "result"]
    rows = []
    for check in checks:
        verdict = "-" if check.passed is None else ("PASS" if check.passed else "FAIL")
        rows.append([check.scenario, check.what, check.measured, check.target, verdict])
    if not with_scenario:
        columns = columns[1:]
        rows = [row[1:] for row in rows]
    return Table(columns, rows, frozenset({columns.index("measured")}))


def text_checks(checks: Sequence[Check]) -> str:
    return _text_table(checks_table(checks))


# -- Markdown ----------------------------------------------------------------

_INTRO = """\
# Benchmarks

The figures on this page come from `nox -s bench` (which runs
`python bench/run.py`); each run rewrites the sections of the groups it ran
and their charts in `docs/img/`. Every group measures keyedlock and its
baselines side by side in one process, so **the ratios are the result**: the
absolute times depend on the machine and on its load at that minute, the
ratios much less. Absolute ns/op are given for reference only.

```bash
nox -s bench                          # every group (about three minutes)
nox -s bench -- --only keyedlock      # one group
nox -s bench -- --quick               # short smoke run, written to a temporary directory
python bench/run.py --help            # the same, in an environment that has the baselines
```

## Method

- Each case (keyedlock or a baseline) performs the same operations in its own
  loop; only that loop is timed (`time.perf_counter_ns`), with the cyclic
  garbage collector off (a collection runs just before). The loop's own cost
  (`for ... in ...`) is inside every timing, the same for every case.
- Every case is warmed up first. Then come several rounds; each round
  measures every case once, in an order that rotates by one each round
  (ABC, BCA, CAB, ...), so that no case always runs first or last.
- A ratio is computed inside each round, from two measurements taken moments
  apart, and the **median over the rounds** is reported with its
  interquartile range (IQR).
- A *time* ratio is keyedlock's time over the baseline's (lower is better); a
  *throughput* ratio is keyedlock's operations per second over the
  baseline's (higher is better). When a comparison names several baselines
  (two ways of writing the same thing by hand), the faster one is used.
- On the charts each bar starts at 1.0 (parity) and ends at the measured
  ratio, on a log scale; the black tick is the target.
"""

_SECTION = re.compile(
    r"<!-- bench:(?P<name>[\w.-]+):begin -->\n.*?<!-- bench:(?P=name):end -->\n", re.S
)


def _md_escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def _md_table(table: Table) -> str:
    align = ["---:" if i in table.numeric else ":---" for i in range(len(table.columns))]
    lines = [
        "| " + " | ".join(_md_escape(c) for c in table.columns) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines.extend("| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table.rows)
    return "\n".join(lines)


def _group_markdown(report: GroupReport, chart: bool) -> str:
    group = report.group
    info = report.info
    rounds = report.settings.repeats
    if report.settings.quick:
        kind = f"a quick smoke run ({rounds} rounds, small loops: not for conclusions)"
    else:
        kind = f"a full run ({rounds} rounds per scenario)"
    parts = [
        f"## {group.title}",
        group.description,
        (
            f"Measured {info['date']} in {kind}, on {info['python']}, {info['os']}, "
            f"{info['cpu']}. Versions: {info['packages']}."
        ),
    ]
    if chart:
        parts.append(
            f"![Ratios of the {group.name} group against their targets](img/{report.chart_name})"
        )
    checks = report.checks
    if checks:
        parts += ["### Summary", _md_table(checks_table(checks))]
    for result in report.results:
        parts += [f"### {result.name}: {result.title}", result.description]
        parts.extend(_md_table(table) for table in result.tables)
    body = "\n\n".join(parts)
    return f"<!-- bench:{group.name}:begin -->\n{body}\n<!-- bench:{group.name}:end -->\n"


def update_markdown(
    path: Path, reports: Sequence[GroupReport], order: Sequence[str], charts: bool
) -> None:
    """Write ``path``: the fixed introduction, then one section per group.

    Sections of groups that did not run this time are kept from the existing
    file; ``order`` (group names) sets the order of the sections.
    """
    sections: dict[str, str] = {}
    if path.exists():
        old = path.read_text(encoding="utf-8")
        for match in _SECTION.finditer(old):
            sections[match["name"]] = match.group(0)
    for report in reports:
        sections[report.group.name] = _group_markdown(report, charts)
    ranked = sorted(sections, key=lambda n: (order.index(n) if n in order else len(order), n))
    text = _INTRO + "".join("\n" + sections[name] for name in ranked)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# -- chart -------------------------------------------------------------------

_PASS = "#2e7d32"
_FAIL = "#c62828"
_REPORT = "#78909c"


def _ticks(low: float, high: float) -> list[float]:
    """Round ratios for the log axis between ``low`` and ``high``."""
    steps = [1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0]
    candidates = sorted({round(m * 10.0**e, 4) for e in range(-3, 4) for m in steps})
    inside = [t for t in candidates if low <= t <= high]
    while len(inside) > 12:  # thin out, keeping 1.0
        inside = [t for i, t in enumerate(inside) if i % 2 == 0 or t == 1.0]
    return inside


def write_chart(path: Path, title: str, bars: Sequence[Bar]) -> None:
    """A horizontal bar per ratio (from parity, log scale), with its target tick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    plt.rcParams["svg.hashsalt"] = "keyedlock-bench"
    plt.rcParams["svg.fonttype"] = "none"
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.36 * len(bars)))
    ys = list(range(len(bars)))[::-1]
    for y, bar in zip(ys, bars, strict=True):
        color = _REPORT if bar.passed is None else (_PASS if bar.passed else _FAIL)
        ax.barh(y, bar.value - 1.0, left=1.0, height=0.62, color=color)
        right = bar.value >= 1.0
        ax.annotate(
            f"{bar.value:.2f}x",
            (bar.value, y),
            xytext=(4 if right else -4, 0),
            textcoords="offset points",
            ha="left" if right else "right",
            va="center",
            fontsize=8,
        )
        if bar.limit is not None:
            ax.plot([bar.limit, bar.limit], [y - 0.42, y + 0.42], color="black", lw=2.2)
    labels = [f"{bar.label} ({'throughput' if bar.higher_is_better else 'time'})" for bar in bars]
    ax.set_yticks(ys, labels, fontsize=8)
    ax.set_ylim(-0.7, len(bars) - 0.3)
    ax.set_xscale("log")
    values = [bar.value for bar in bars] + [bar.limit for bar in bars if bar.limit is not None]
    low = min([*values, 1.0]) / 1.5
    high = max([*values, 1.0]) * 1.5
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(FixedLocator(_ticks(low, high)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="#444444", lw=0.8, ls=":")
    ax.set_xlabel("ratio to the baseline (log scale): time lower is better, throughput higher")
    ax.set_title(title, fontsize=11, pad=26)
    ax.grid(axis="x", which="major", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    ax.legend(
        handles=[
            Patch(color=_PASS, label="meets target"),
            Patch(color=_FAIL, label="misses target"),
            Patch(color=_REPORT, label="reported (no target)"),
            Line2D([], [], color="black", lw=2.2, label="target"),
        ],
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=4,
        fontsize=8,
        frameon=False,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)


# -- JSON --------------------------------------------------------------------


def write_json(path: Path, report: GroupReport) -> None:
    """Raw samples and ratios of one group, for later analysis."""
    payload = {
        "group": report.group.name,
        "info": report.info,
        "quick": report.settings.quick,
        "repeats": report.settings.repeats,
        "argv": sys.argv[1:],
        "scenarios": [
            {"name": result.name, "title": result.title, "data": result.data}
            for result in report.results
        ],
        "checks": [dataclasses.asdict(check) for check in report.checks],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
