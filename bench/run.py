"""Run keyedlock's benchmarks and write the report.

    python bench/run.py                  # every group; rewrites docs/benchmarks.md and charts
    python bench/run.py --only keyedlock # one group (repeatable, or comma-separated)
    python bench/run.py --quick          # smoke run, report written to a temporary directory
    python bench/run.py --list           # the groups and their scenarios
    python bench/run.py --scenario trio  # some scenarios only (tables and JSON, no page)

Each group is a module of bench/groups/ (see bench/harness/). Results are
printed as tables, written to OUT/benchmarks.md with a chart per group in
OUT/img/bench-GROUP.svg, and the raw samples to bench/results/GROUP.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from harness import Group, ScenarioResult, Settings, discover
from harness.report import (
    GroupReport,
    machine_info,
    render_text,
    text_checks,
    update_markdown,
    write_chart,
    write_json,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

FULL_REPEATS = 15
QUICK_REPEATS = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Measure keyedlock against its baselines; report ratios.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"short smoke run: small loops, {QUICK_REPEATS} rounds; unless --out is "
        "given, the report goes to a new temporary directory, not docs/",
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        default=[],
        help="run only this group (repeatable, or comma-separated); see --list",
    )
    parser.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="where benchmarks.md and img/bench-GROUP.svg go (default: the repository's docs/)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help=f"rounds per scenario (default {FULL_REPEATS}; {QUICK_REPEATS} with --quick)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        default=[],
        help="run only the scenarios of this name (repeatable); the page and charts are "
        "then left alone, since their sections would be incomplete",
    )
    parser.add_argument("--list", action="store_true", help="list the groups and exit")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any target is missed",
    )
    return parser


def _select(
    parser: argparse.ArgumentParser,
    groups: list[Group],
    skipped: dict[str, str],
    only: list[str],
) -> list[Group]:
    names = [name.strip() for item in only for name in item.split(",") if name.strip()]
    if not names:
        return groups
    known = {group.name: group for group in groups}
    for name in names:
        if name in skipped:
            parser.error(f"group {name!r} cannot run here: {skipped[name]}")
        if name not in known:
            parser.error(f"no group {name!r}; groups: {', '.join(known) or 'none'}")
    return [group for group in groups if group.name in names]


def _list(groups: list[Group], skipped: dict[str, str]) -> None:
    for group in groups:
        print(f"{group.name}: {group.title}")
        for scenario in group.scenarios:
            print(f"    {scenario.name}: {scenario.title}")
    for name, reason in skipped.items():
        print(f"{name}: not available ({reason})")


def _run_group(group: Group, settings: Settings, only: set[str]) -> GroupReport:
    info = machine_info(group.packages)
    print(f"\n##### group {group.name}: {group.title}\n")
    results: list[ScenarioResult] = []
    for scenario in group.scenarios:
        if only and scenario.name not in only:
            continue
        print(f"[{group.name}] {scenario.name} ...", file=sys.stderr, flush=True)
        began = time.monotonic()
        result = scenario.run(settings)
        elapsed = time.monotonic() - began
        print(render_text(result))
        print(f"\n({scenario.name}: {elapsed:.1f} s)\n", flush=True)
        results.append(result)
    return GroupReport(group, results, info, settings)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    groups, skipped = discover("groups")
    if args.list:
        _list(groups, skipped)
        return 0
    selected = _select(parser, groups, skipped, args.only)
    for name, reason in skipped.items():
        print(f"note: group {name!r} skipped: {reason}", file=sys.stderr)

    repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    settings = Settings(quick=args.quick, repeats=repeats)
    if args.out is not None:
        out: Path = args.out
    elif args.quick:
        out = Path(tempfile.mkdtemp(prefix="keyedlock-bench-"))
    else:
        out = ROOT / "docs"
    results_dir = out / "results" if args.quick and args.out is None else BENCH / "results"

    only = set(args.scenario)
    known = {scenario.name for group in selected for scenario in group.scenarios}
    if only - known:
        parser.error(f"no scenario {sorted(only - known)}; see --list")

    began = time.monotonic()
    reports = [_run_group(group, settings, only) for group in selected]

    written = []
    for report in reports:
        raw = results_dir / f"{report.group.name}.json"
        write_json(raw, report)
        written.append(raw)
        if report.bars and not only:
            chart = out / "img" / report.chart_name
            write_chart(chart, f"keyedlock benchmarks: {report.group.title}", report.bars)
            written.append(chart)
    if not only:
        page = out / "benchmarks.md"
        update_markdown(page, reports, [group.name for group in groups], charts=True)
        written.append(page)

    checks = [check for report in reports for check in report.checks]
    failed = [check for check in checks if check.passed is False]
    passed = [check for check in checks if check.passed]
    print("\n##### summary\n")
    if checks:
        print(text_checks(checks))
    print(
        f"\ntargets: {len(passed)} met, {len(failed)} missed"
        f" ({len(checks) - len(passed) - len(failed)} reported without a target);"
        f" {time.monotonic() - began:.0f} s"
    )
    print("wrote:\n" + "\n".join(f"  {path}" for path in written))
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
