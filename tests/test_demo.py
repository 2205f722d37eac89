"""The demo's processes row: the race across processes, and where it is skipped."""

from __future__ import annotations

import io
import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from keyedlock.cli import _demo, _demo_processes, _demo_wallet
from keyedlock.cli._demo_inprocess import install_hint, source_checkout

# Python 3.12+ warns about forking while other threads (of earlier tests) run.
pytestmark = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded:DeprecationWarning"
)

linux_fork = pytest.mark.skipif(
    not sys.platform.startswith("linux") or "fork" not in multiprocessing.get_all_start_methods(),
    reason="the processes row needs fork and FileKeyedLock (Linux)",
)


def _processes() -> _demo_wallet.Scenario:
    (scenario,) = [s for s in _demo.SCENARIOS if s.runtime == "processes"]
    return scenario


def test_processes_is_a_scenario() -> None:
    scenario = _processes()
    assert scenario.run is _demo_processes.run_processes
    assert scenario.prepare is _demo_processes.need_processes
    assert _demo.SCENARIOS[-1] is scenario


@linux_fork
def test_processes_race_without_lock_and_not_with() -> None:
    _demo_processes.need_processes()
    expected = _demo_wallet.expected_outcome(_demo.CHECKOUTS)
    assert expected == _demo_wallet.Outcome(3, 10)
    unlocked = _demo_processes.run_processes(False, _demo.CHECKOUTS)
    assert unlocked != expected
    assert unlocked.charges > expected.charges  # charged more than the balance allowed
    assert _demo_processes.run_processes(True, _demo.CHECKOUTS) == expected


@linux_fork
@pytest.mark.parametrize("checkouts", [1, 2, _demo_processes.MAX_PROCESSES + 3])
def test_processes_locked_any_count(checkouts: int) -> None:
    """Fewer checkouts than processes, or more (split between the processes)."""
    outcome = _demo_processes.run_processes(True, checkouts)
    assert outcome == _demo_wallet.expected_outcome(checkouts)


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


@pytest.mark.parametrize(
    ("checkouts", "summary"),
    [
        (2, "Without a lock, 1 of 1 runs left a wrong balance."),  # 60 of 100: a lost update
        (4, "Without a lock, 1 of 1 runs charged more than the balance allowed."),  # 120
    ],
)
def test_the_summary_says_what_went_wrong(checkouts: int, summary: str) -> None:
    """The charges of a wrong unlocked run (a fixed outcome here) may fit in the balance:
    the summary then speaks of a wrong balance, not of charging more than it allowed."""
    raced = _demo_wallet.Outcome(checkouts, _demo_wallet.START_BALANCE - _demo_wallet.AMOUNT)

    def run(locked: bool, n: int) -> _demo_wallet.Outcome:
        return _demo_wallet.expected_outcome(n) if locked else raced

    out = io.StringIO()
    assert (
        _demo.run_demo(out, checkouts=checkouts, scenarios=[_demo_wallet.Scenario("fake", run)])
        == 0
    )
    assert summary in out.getvalue()


def _skipped_line() -> str:
    out = io.StringIO()
    _demo.run_demo(out, scenarios=[_processes()])
    (line,) = [line for line in out.getvalue().splitlines() if line.startswith("processes ")]
    return line


def test_processes_skipped_without_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(_demo_wallet.ScenarioSkipped, match="'fork' start method"):
        _demo_processes.need_processes()
    assert "skipped: needs the 'fork' start method" in _skipped_line()


def test_processes_skipped_without_file_locks(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(path: str) -> None:
        raise NotImplementedError("no open file description locks")

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["fork", "spawn"])
    monkeypatch.setattr(_demo_processes, "FileKeyedLock", unsupported)
    with pytest.raises(_demo_wallet.ScenarioSkipped, match="FileKeyedLock is not available here"):
        _demo_processes.need_processes()
    line = _skipped_line()
    assert "skipped: FileKeyedLock is not available here: no open file description" in line


# -- the command, run for real -----------------------------------------------------


def _run_demo(*args: str, code: str = "", cwd: Path | None = None) -> str:
    """``python -m keyedlock demo ARGS`` in a child interpreter (after ``code``); its output."""
    script = f"{code}\nimport sys, runpy\nsys.argv[1:] = {['demo', *args]!r}\n"
    script += "runpy.run_module('keyedlock', run_name='__main__')\n"
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _unlocked(text: str) -> set[tuple[int, int]]:
    """(charges, balance) of every row run without a lock."""
    found = set()
    for line in text.splitlines():
        words = line.split()
        if "none" in words and words[-1] == "ms":
            at = words.index("none")
            found.add((int(words[at + 1]), int(words[at + 2])))
    return found


def _unlocked_rows(text: str) -> dict[str, tuple[int, int]]:
    """runtime -> (charges, balance) of every wrong row run without a lock."""
    found = {}
    for line in text.splitlines():
        words = line.split()
        if "none" in words and words[-1] == "ms" and words[-3] == "NO":
            at = words.index("none")
            found[" ".join(words[:at])] = (int(words[at + 1]), int(words[at + 2]))
    return found


def _explanations(text: str) -> dict[str, str]:
    """runtime -> the explanation of its unlocked run (the lines under "In these runs:")."""
    entries: list[str] = []
    lines = text.split("In these runs:\n", 1)[1].splitlines()
    for line in lines:
        if not line.strip():
            break
        if line.startswith("    "):
            entries[-1] += " " + line.strip()
        else:
            assert line.startswith("  "), line
            entries.append(line.strip())
    found = {}
    for entry in entries:
        runtimes, _, explanation = entry.partition(": ")
        for runtime in runtimes.split(", "):
            found[runtime] = explanation
    return found


def _check_explanations(text: str, checkouts: int) -> None:
    """Each wrong unlocked row has an explanation, and it gives that row's own figures."""
    rows = _unlocked_rows(text)
    assert rows, text
    explained = _explanations(text)
    assert set(explained) == set(rows), text
    amount, start = _demo_wallet.AMOUNT, _demo_wallet.START_BALANCE
    for runtime, (charges, balance) in rows.items():
        why = explained[runtime]
        if charges == checkouts:
            assert why.startswith(f"all {checkouts} checkouts charged, "), (runtime, why)
        else:
            assert why.startswith(f"{charges} of the {checkouts} checkouts charged, "), why
            assert f"(the other {checkouts - charges} read a balance below {amount})" in why
        assert f" {charges * amount} against a balance of {start}" in why, (runtime, why)
        assert f"The balance ended at {balance}," in why, (runtime, why)
        reflected = (start - balance) // amount
        assert f"{charges - reflected} of the {charges} charges left no trace" in why, why
        assert ("The last write wins" in why) == (reflected == 1), (runtime, why)


def test_demo_shows_the_fix_and_explains_the_table() -> None:
    text = _run_demo()
    assert "without a lock:" in text
    assert 'with klock(f"wallet:{user}"):' in text  # the one line that makes the difference
    assert "time: how long the run took." in text  # the time column is explained
    assert _unlocked(text), text
    assert "the later write overwrites the earlier" in text
    _check_explanations(text, _demo.CHECKOUTS)


@pytest.mark.parametrize("checkouts", [40, 100])
def test_the_explanation_gives_the_figures_of_each_run(checkouts: int) -> None:
    """With many checkouts the unlocked runs end differently (processes often charge only
    some): each is explained from its own row of the table."""
    text = _run_demo("--checkouts", str(checkouts))
    _check_explanations(text, checkouts)
    assert "every checkout read" not in text


def _unlocked_ending(outcomes: dict[str, _demo_wallet.Outcome]) -> list[_demo_wallet.Scenario]:
    """Scenarios named as ``outcomes``: each unlocked run ends as given, each locked one right."""

    def scenario(name: str) -> _demo_wallet.Scenario:
        def run(locked: bool, n: int) -> _demo_wallet.Outcome:
            return _demo_wallet.expected_outcome(n) if locked else outcomes[name]

        return _demo_wallet.Scenario(name, run)

    return [scenario(name) for name in outcomes]


def test_runs_that_went_differently_are_explained_apart() -> None:
    """One run where every checkout charged, one where some read a balance too low."""
    outcomes = {"all": _demo_wallet.Outcome(100, 70), "some": _demo_wallet.Outcome(30, 10)}

    out = io.StringIO()
    assert _demo.run_demo(out, checkouts=100, scenarios=_unlocked_ending(outcomes)) == 0
    text = out.getvalue()
    _check_explanations(text, 100)
    explained = _explanations(text)
    assert explained["all"] == (
        "all 100 checkouts charged, 3000 against a balance of 100. The balance ended at 70, "
        "which reflects only 1 charge: 99 of the 100 charges left no trace in it (lost "
        "updates). The last write wins: it came from a checkout that read 100 before any "
        "charge was written, and its 70 overwrote all the others."
    )
    assert explained["some"] == (
        "30 of the 100 checkouts charged, 900 against a balance of 100 (the other 70 read a "
        "balance below 30). The balance ended at 10, which reflects only 3 charges: 27 of the "
        "30 charges left no trace in it (lost updates)."
    )


def _checkout(root: Path) -> Path:
    """A folder that looks like a source checkout of keyedlock."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text('[project]\nname = "keyedlock"\n')
    return root


def test_trio_hint_from_a_source_checkout(tmp_path: Path) -> None:
    """Without trio, run in a clone: the hint installs the clone, which works offline."""
    clone = _checkout(tmp_path / "keyedlock")
    text = _run_demo("--checkouts", "3", code="import sys; sys.modules['trio'] = None", cwd=clone)
    rows = [line for line in text.splitlines() if line.startswith(("trio ", "all three "))]
    assert len(rows) == 2, text
    for row in rows:
        assert row.endswith('skipped: trio is not installed (pip install ".[trio]")'), row


def test_install_hint(tmp_path: Path) -> None:
    clone = _checkout(tmp_path / "clone")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "site-packages" / "keyedlock" / "cli").mkdir(parents=True)
    installed = elsewhere / "site-packages" / "keyedlock" / "cli"
    assert install_hint("trio", cwd=clone, package=installed) == 'pip install ".[trio]"'
    (clone / "docs").mkdir()
    assert install_hint("trio", cwd=clone / "docs", package=installed) == (
        f"pip install '{clone}[trio]'"
    )
    assert install_hint("trio", cwd=elsewhere, package=clone / "src" / "keyedlock") == (
        f"pip install '{clone}[trio]'"
    )
    assert install_hint("trio", cwd=elsewhere, package=installed) == (
        "pip install 'keyedlock[trio]', or in a clone: pip install \".[trio]\""
    )


def test_source_checkout_is_the_keyedlock_project(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pyproject.toml").write_text("not [ toml")
    assert source_checkout(other) is None
    assert source_checkout(broken) is None
    clone = _checkout(tmp_path / "clone")
    assert source_checkout(clone / "src" / "keyedlock") == clone


def test_the_summary_counts_each_way_the_runs_went_wrong() -> None:
    """One run charged more than the balance allowed, the other only lost an update."""
    outcomes = {"over": _demo_wallet.Outcome(4, 70), "lost": _demo_wallet.Outcome(2, 70)}

    out = io.StringIO()
    assert _demo.run_demo(out, checkouts=4, scenarios=_unlocked_ending(outcomes)) == 0
    text = out.getvalue()
    assert (
        "Without a lock, 2 of 2 runs went wrong: 1 charged more than the balance allowed, "
        "1 left a wrong balance." in text
    )
    _check_explanations(text, 4)
