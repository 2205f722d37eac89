"""The command line as a whole: its name in usage and errors, argument errors, --version.

Every test runs the real program in a child interpreter, ``python -m keyedlock``, or the
installed ``keyedlock`` script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keyedlock import __version__

from .support import WAIT


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m keyedlock ARGS``, bounded, with its output."""
    return subprocess.run(
        [sys.executable, "-m", "keyedlock", *args],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )


#: As the installed ``keyedlock`` script starts the program: ``sys.argv[0]`` is its path.
AS_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.argv[0] = "/usr/local/bin/keyedlock"
    from keyedlock.cli import main
    sys.exit(main())
    """
)


def run_as_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", AS_SCRIPT, *args],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )


@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["holders"]])
def test_help_names_python_m_keyedlock(command: list[str]) -> None:
    proc = run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {' '.join(['python -m keyedlock', *command])} ")


@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["holders"]])
def test_help_names_keyedlock_when_run_as_keyedlock(command: list[str]) -> None:
    proc = run_as_script(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {' '.join(['keyedlock', *command])} ")


def test_the_installed_script_says_keyedlock() -> None:
    script = Path(sys.executable).parent / "keyedlock"
    if not os.access(script, os.X_OK):
        pytest.skip(f"no keyedlock script beside {sys.executable} (the package is not installed)")
    proc = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=WAIT * 3, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: keyedlock ")


def test_version() -> None:
    proc = run("--version")
    assert (proc.returncode, proc.stdout) == (0, f"keyedlock {__version__}\n")


def test_no_command_is_an_error() -> None:
    proc = run()
    assert proc.returncode == 2
    assert "usage: python -m keyedlock" in proc.stderr
    assert "required: COMMAND" in proc.stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("x", "argument --checkouts: expected a whole number from 1 to 100, got 'x'"),
        ("0", "argument --checkouts: expected a whole number from 1 to 100, got 0"),
        ("1.5", "argument --checkouts: expected a whole number from 1 to 100, got '1.5'"),
        ("101", "argument --checkouts: expected a whole number from 1 to 100, got 101"),
    ],
)
def test_demo_checkouts_errors(value: str, message: str) -> None:
    proc = run("demo", "--checkouts", value)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == f"python -m keyedlock demo: error: {message}"


def test_argument_errors_name_no_private_helper() -> None:
    proc = run_as_script("demo", "--checkouts", "many")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (
        "keyedlock demo: error: argument --checkouts: "
        "expected a whole number from 1 to 100, got 'many'"
    )
    assert "_" not in proc.stderr.splitlines()[-1].replace("--", "")


def test_the_command_line_starts_without_posix_only_modules() -> None:
    """`keyedlock demo` and `--help` work where pwd is missing (Windows): the holders
    command's POSIX-only imports wait until it runs."""
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pwd"] = None  # (an import of it raises ImportError)
        from keyedlock.cli import main
        sys.exit(main(["--help"]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT * 3, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: ")


@pytest.mark.parametrize("command", [["holders"], ["holders", "--json"]])
def test_a_closed_pipe_ends_quietly(command: list[str], tmp_path: Path) -> None:
    # `keyedlock holders --json | head -1`: the reader is gone before the output is written
    # (its end of the pipe is closed before the program starts, so every write fails).
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "keyedlock", *command, "--file", str(tmp_path / "locks")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=WAIT * 3,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert proc.stderr == ""


def _into_a_full_disk(
    command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m keyedlock COMMAND > /dev/full``, its standard error captured."""
    with open("/dev/full", "w") as full:
        return subprocess.run(
            [sys.executable, "-m", "keyedlock", *command],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=WAIT * 3,
            check=False,
        )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize(
    "command",
    [["holders"], ["holders", "--json"], ["demo", "--checkouts", "1"]],
    ids=" ".join,
)
def test_an_output_that_cannot_be_written_is_one_line(command: list[str], tmp_path: Path) -> None:
    """A full disk (``> /dev/full``): the reason in one line on standard error, status 1, no
    traceback."""
    if command[0] == "holders":
        command = [*command, "--file", str(tmp_path / "locks")]
    proc = _into_a_full_disk(command)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"python -m keyedlock {command[0]}: cannot write the output: "
        "[Errno 28] No space left on device\n"
    )


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", [["--help"], ["--version"], ["run", "--help"]], ids=" ".join)
def test_help_that_cannot_be_written_fails(command: list[str], buffered: bool) -> None:
    """``--help`` and ``--version`` into a full output: status 1 and the reason, as for a
    report (argparse drops a failed write, and the status said 0), whether the write itself
    fails (PYTHONUNBUFFERED) or its flush."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = _into_a_full_disk(command, env)
    assert proc.returncode == 1
    assert proc.stderr == (
        "python -m keyedlock: cannot write the output: [Errno 28] No space left on device\n"
    )


@pytest.mark.parametrize(
    ("command", "status"),
    [(["bogus"], 2), (["run", "k"], 2), (["holders", "--file", "/"], 1)],
    ids=["bogus", "run-without-command", "holders-unreadable"],
)
def test_messages_with_standard_error_closed_go_nowhere(command: list[str], status: int) -> None:
    """Started with standard error closed (``2>&-``, where Python's ``sys.stderr`` is None):
    error messages and usage are dropped, never written to standard output among a report."""
    proc = subprocess.run(
        ["sh", "-c", 'exec "$0" -m keyedlock "$@" 2>&-', sys.executable, *command],
        stdout=subprocess.PIPE,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )
    assert proc.returncode == status
    assert proc.stdout == ""


@pytest.mark.parametrize(
    "command",
    [["holders", "--file", "{tmp}/locks"], ["demo", "--checkouts", "1"], ["--help"]],
    ids=["holders", "demo", "help"],
)
def test_a_closed_standard_output_is_one_line(command: list[str], tmp_path: Path) -> None:
    """Started with standard output closed (``>&-``, where Python's ``sys.stdout`` is None):
    status 1 and the reason, as for an output that cannot be written, no traceback."""
    args = [arg.format(tmp=tmp_path) for arg in command]
    proc = subprocess.run(
        ["sh", "-c", 'exec "$0" -m keyedlock "$@" >&-', sys.executable, *args],
        stderr=subprocess.PIPE,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )
    assert proc.returncode == 1
    prog = "python -m keyedlock" + ("" if command[0] == "--help" else f" {command[0]}")
    assert proc.stderr == f"{prog}: cannot write the output: standard output is closed\n"
