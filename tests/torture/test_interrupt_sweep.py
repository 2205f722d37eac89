"""Ctrl-C at every point: no key is left held, no call left in flight, whatever the timing.

Each scenario of :mod:`.interrupt_sweep` runs one operation of a lock or a single-flight group
in the main thread (a ``with``, an ``acquire``, a wait, a hand-off, an abort, a shared call;
under threads, asyncio and trio; in the process, the file and the manager scope), with helper
threads or tasks around it that make the key busy or wait for it. The sweep counts the points
where CPython can deliver a signal inside keyedlock's code (see :mod:`.injection`), then runs
the scenario once per point with SIGINT delivered there, and checks after every run that every
helper ended, the table's guard is free, nothing is held or in flight, the key can be taken
again at once (for the file scope, by another open file description too; for the manager,
the manager itself is asked, see :mod:`.manager_sweep`) and keyedlock's helper threads ended.

The default run tries a sample of the points of each scenario (seeded: ``KEYEDLOCK_SEED``
replays it); ``nox -s stress`` (``KEYEDLOCK_STRESS=long``) tries every point. Each sweep runs
in a process of its own (by default, the manager scope's scenarios share one, and one
manager); a failure names the scenario and the point: the function and line where the signal
landed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from ..support import LONG_STRESS
from .interrupt_sweep import FLIGHT_SCENARIOS, LOCK_SCENARIOS

pytestmark = [
    pytest.mark.timeout(3600 if LONG_STRESS else 240),
    # The points are CPython 3.11's (its eval loop, and what its trace function reports:
    # 3.12 traces through sys.monitoring, and reports other offsets).
    pytest.mark.skipif(
        sys.version_info[:2] != (3, 11), reason="the sweep knows CPython 3.11's points only"
    ),
]

#: Points tried per scenario: a sample in the default run, every one in ``nox -s stress``.
SWEEPS = [
    pytest.param(10, id="sample"),
    pytest.param(0, id="every-point", marks=pytest.mark.slow),
]

SEED = int(os.environ.get("KEYEDLOCK_SEED", random.randrange(1 << 30)))

ROOT = Path(__file__).resolve().parents[2]


def run_sweeps(
    kind: str, scenario: str, scope: str, sample: int, twice: bool = False
) -> list[dict[str, object]]:
    args = [kind, scenario, scope, str(sample), str(SEED), *(["twice"] if twice else [])]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.torture.interrupt_sweep", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3000 if LONG_STRESS else 200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reports: list[dict[str, object]] = json.loads(proc.stdout.splitlines()[-1])
    return reports


def run_sweep(kind: str, scenario: str, scope: str, sample: int) -> dict[str, object]:
    (report,) = run_sweeps(kind, scenario, scope, sample)
    return report


def summarize(report: dict[str, object], label: str) -> str:
    """The report's one-line summary; AssertionError with the failures if there are any."""
    failures = report["failures"]
    assert isinstance(failures, list)
    summary = (
        f"{label}: {len(failures)} of {report['tried']} interrupted runs left something held "
        f"({report['points']} points, {report['fired']} runs reached theirs; seed {SEED})"
    )
    points, tried, fired = report["points"], report["tried"], report["fired"]
    assert isinstance(points, int)
    assert isinstance(tried, int)
    assert isinstance(fired, int)
    assert points > 0, summary
    # A run that never reaches its point proves nothing: the points must be the same in
    # every run (a timing-dependent path may shift a few).
    assert fired * 2 >= tried, summary
    details = "\n".join(f"  at {f['point']}: {f['error']}" for f in failures[:20])
    assert not failures, summary + "\n" + details
    return summary


def check(report: dict[str, object], label: str) -> None:
    print(summarize(report, label))


def check_all(reports: list[dict[str, object]], label: str) -> None:
    """Check every report of a run of several sweeps; fail with all that failed."""
    errors = []
    for report in reports:
        try:
            print(summarize(report, f"{label} {report['scenario']}"))
        except AssertionError as exc:
            errors.append(str(exc))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("sample", SWEEPS)
@pytest.mark.parametrize("scope", ["process", "file"])
@pytest.mark.parametrize("scenario", sorted(LOCK_SCENARIOS))
def test_interrupt_anywhere_leaves_no_key_held(scenario: str, scope: str, sample: int) -> None:
    check(run_sweep("lock", scenario, scope, sample), f"{scope} {scenario}")


@pytest.mark.parametrize("sample", SWEEPS)
@pytest.mark.parametrize("scenario", sorted(FLIGHT_SCENARIOS))
def test_interrupt_anywhere_leaves_no_call_in_flight(scenario: str, sample: int) -> None:
    check(run_sweep("flight", scenario, "process", sample), f"flight {scenario}")


# -- a second interrupt, in the recovery from the first -----------------------------------------

#: Runs per scenario with a second signal (the first at a point, the second at one of the points
#: after it): a sample by default, a larger one in ``nox -s stress``.
TWICE = [
    pytest.param(40, id="sample"),
    pytest.param(600, id="long", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("sample", TWICE)
@pytest.mark.parametrize(
    ("kind", "scope"),
    [
        ("lock", "process"),
        ("lock", "file"),
        ("lock", "manager"),
        ("flight", "process"),
        ("flight", "manager"),
    ],
)
def test_a_second_interrupt_in_the_recovery_from_the_first_leaves_nothing(
    kind: str, scope: str, sample: int
) -> None:
    """Ctrl-C pressed twice: the second signal lands while keyedlock finishes what the first
    one stopped (a hand-off, a withdrawal, a conclusion). It is raised once that is done."""
    reports = run_sweeps(kind, "all", scope, sample, twice=True)
    check_all(reports, f"twice {kind} {scope}")
    again = sum(int(str(report["again"])) for report in reports)
    tried = sum(int(str(report["tried"])) for report in reports)
    assert again * 10 >= tried, f"only {again} of {tried} runs got their second signal"


# -- the manager scope ------------------------------------------------------------------------

#: Points tried per manager scenario by default. Starting a process and a manager is most of
#: a short sweep's cost: the default run sweeps every scenario of a kind in one process, with
#: one manager, a few points each; ``nox -s stress`` every point of each, in its own process.
MANAGER_SAMPLE = 4


def manager_sweeps(scenarios: Iterable[str]) -> list[Any]:
    return [
        pytest.param("all", MANAGER_SAMPLE, id="sample"),
        *(
            pytest.param(name, 0, id=f"every-point-{name}", marks=pytest.mark.slow)
            for name in sorted(scenarios)
        ),
    ]


@pytest.mark.parametrize(("scenario", "sample"), manager_sweeps(LOCK_SCENARIOS))
def test_interrupt_anywhere_leaves_no_key_held_in_the_manager(scenario: str, sample: int) -> None:
    check_all(run_sweeps("lock", scenario, "manager", sample), "manager")


@pytest.mark.parametrize(("scenario", "sample"), manager_sweeps(FLIGHT_SCENARIOS))
def test_interrupt_anywhere_leaves_no_call_in_flight_in_the_manager(
    scenario: str, sample: int
) -> None:
    check_all(run_sweeps("flight", scenario, "manager", sample), "manager flight")
