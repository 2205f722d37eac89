"""Ctrl-C at every point: no key is left held, no call left in flight, whatever the timing.

Each scenario of :mod:`.interrupt_sweep` runs one operation of a lock or a single-flight group
in the main thread (a ``with``, an ``acquire``, a wait, a hand-off, an abort, a shared call;
under threads, asyncio and trio; in the process and the file scope), with helper threads or
tasks around it that make the key busy or wait for it. The sweep counts the points where CPython
can deliver a signal inside keyedlock's code (see :mod:`.injection`), then runs the scenario once
per point with SIGINT delivered there, and checks after every run that every helper ended, the
table's guard is free, nothing is held or in flight, the key can be taken again at once (for
the file scope, by another open file description too) and keyedlock's helper threads ended.

The default run tries a sample of the points of each scenario (seeded: ``KEYEDLOCK_SEED``
replays it); ``nox -s stress`` (``KEYEDLOCK_STRESS=long``) tries every point. Each sweep runs
in a process of its own; a failure names the point: the function and line where the signal
landed.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ..support import LONG_STRESS
from .interrupt_sweep import FLIGHT_SCENARIOS, LOCK_SCENARIOS

pytestmark = pytest.mark.timeout(3600 if LONG_STRESS else 240)

#: Points tried per scenario: a sample in the default run, every one in ``nox -s stress``.
SWEEPS = [
    pytest.param(10, id="sample"),
    pytest.param(0, id="every-point", marks=pytest.mark.slow),
]

SEED = int(os.environ.get("KEYEDLOCK_SEED", random.randrange(1 << 30)))

ROOT = Path(__file__).resolve().parents[2]


def run_sweep(kind: str, scenario: str, scope: str, sample: int) -> dict[str, object]:
    args = [kind, scenario, scope, str(sample), str(SEED)]
    proc = subprocess.run(
        [sys.executable, "-m", "tests.torture.interrupt_sweep", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=3000 if LONG_STRESS else 200,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return report


def check(report: dict[str, object], label: str) -> None:
    failures = report["failures"]
    assert isinstance(failures, list)
    summary = (
        f"{label}: {len(failures)} of {report['tried']} interrupted runs left something held "
        f"({report['points']} points, {report['fired']} runs reached theirs; seed {SEED})"
    )
    print(summary)
    points, tried, fired = report["points"], report["tried"], report["fired"]
    assert isinstance(points, int)
    assert isinstance(tried, int)
    assert isinstance(fired, int)
    assert points > 0
    # A run that never reaches its point proves nothing: the points must be the same in
    # every run (a timing-dependent path may shift a few).
    assert fired * 2 >= tried, summary
    details = "\n".join(f"  at {f['point']}: {f['error']}" for f in failures[:20])
    assert not failures, summary + "\n" + details


@pytest.mark.parametrize("sample", SWEEPS)
@pytest.mark.parametrize("scope", ["process", "file"])
@pytest.mark.parametrize("scenario", sorted(LOCK_SCENARIOS))
def test_interrupt_anywhere_leaves_no_key_held(scenario: str, scope: str, sample: int) -> None:
    check(run_sweep("lock", scenario, scope, sample), f"{scope} {scenario}")


@pytest.mark.parametrize("sample", SWEEPS)
@pytest.mark.parametrize("scenario", sorted(FLIGHT_SCENARIOS))
def test_interrupt_anywhere_leaves_no_call_in_flight(scenario: str, sample: int) -> None:
    check(run_sweep("flight", scenario, "process", sample), f"flight {scenario}")
