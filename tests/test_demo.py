"""The demo's processes row: the race across processes, and where it is skipped."""

from __future__ import annotations

import io
import multiprocessing
import sys

import pytest

from keyedlock.cli import _demo

# Python 3.12+ warns about forking while other threads (of earlier tests) run.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)

linux_fork = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods(),
    reason="the processes row needs fork and FileKeyedLock (Linux)",
)


def _processes() -> _demo.Scenario:
    (scenario,) = [s for s in _demo.SCENARIOS if s.runtime == "processes"]
    return scenario


def test_processes_is_a_scenario() -> None:
    scenario = _processes()
    assert scenario.run is _demo.run_processes
    assert scenario.prepare is _demo.need_processes
    assert _demo.SCENARIOS[-1] is scenario


@linux_fork
def test_processes_race_without_lock_and_not_with() -> None:
    _demo.need_processes()
    expected = _demo.expected_outcome(_demo.CHECKOUTS)
    assert expected == _demo.Outcome(3, 10)
    unlocked = _demo.run_processes(False, _demo.CHECKOUTS)
    assert unlocked != expected
    assert unlocked.charges > expected.charges  # charged more than the balance allowed
    assert _demo.run_processes(True, _demo.CHECKOUTS) == expected


@linux_fork
@pytest.mark.parametrize("checkouts", [1, 2, _demo.MAX_PROCESSES + 3])
def test_processes_locked_any_count(checkouts: int) -> None:
    """Fewer checkouts than processes, or more (split between the processes)."""
    outcome = _demo.run_processes(True, checkouts)
    assert outcome == _demo.expected_outcome(checkouts)


@linux_fork
def test_processes_row_in_table() -> None:
    out = io.StringIO()
    assert _demo.run_demo(out, scenarios=[_processes()]) == 0
    text = out.getvalue()
    lines = [line.split() for line in text.splitlines() if line.startswith("processes ")]
    assert [words[:2] for words in lines] == [["processes", "none"], ["processes", "keyedlock"]]
    assert lines[0][5] == "NO"
    assert lines[1][2:6] == ["3", "10", "10", "yes"]
    assert "Without a lock, 1 of 1 runs charged more than the balance allowed." in text
    assert "With keyedlock all 1 runs were correct" in text
    assert "FileKeyedLock" in text  # the note under the table


def _skipped_line() -> str:
    out = io.StringIO()
    _demo.run_demo(out, scenarios=[_processes()])
    (line,) = [line for line in out.getvalue().splitlines() if line.startswith("processes ")]
    return line


def test_processes_skipped_without_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(_demo.ScenarioSkipped, match="'fork' start method"):
        _demo.need_processes()
    assert "skipped: needs the 'fork' start method" in _skipped_line()


def test_processes_skipped_without_file_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(path: str) -> None:
        raise NotImplementedError("no open file description locks")

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    monkeypatch.setattr(_demo, "FileKeyedLock", unsupported)
    with pytest.raises(_demo.ScenarioSkipped, match="FileKeyedLock is not available here"):
        _demo.need_processes()
    line = _skipped_line()
    assert "skipped: FileKeyedLock is not available here: no open file description" in line
