"""``keyedlock holders``, run for real against real holder processes and lock files.

Holders are child interpreters that take a key and say so on their standard output, then
hold it until their standard input closes; waiters are found waiting through /proc/locks.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keyedlock.cli._lockfile import key_offset

from .support import WAIT, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="holders reads Linux's /proc"
)

#: Architectures on which holders finds the process of an OFD lock waiter.
WAITER_PIDS = platform.machine() in {"x86_64", "aarch64", "riscv64", "loongarch64"}


def holders(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m keyedlock holders ARGS`` (after ``prefix``, a program that starts it)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "keyedlock", "holders", *args],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )


def holders_json(*args: str, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    proc = holders("--json", *args, prefix=prefix)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


Start = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def start() -> Iterator[Start]:
    """Starts a process that says "ready" when it holds what it should; ended at teardown."""
    started: list[subprocess.Popen[str]] = []

    def starter(*argv: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        return proc

    yield starter
    for proc in started:
        end(proc)


def end(proc: subprocess.Popen[str]) -> None:
    """Close the pipes of ``proc`` (EOF on its input lets it go) and reap it, bounded."""
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(BrokenPipeError):
                stream.close()
    try:
        proc.wait(WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(WAIT)


def ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # bounded: pytest-timeout; the child says it at once
    assert line == "ready\n", (line, proc.stderr.read() if proc.stderr else "")


#: Takes the key argv[2] in the lock file argv[1] with FileKeyedLock, says "ready", holds it
#: until its standard input closes.
HOLDER = textwrap.dedent(
    """
    import sys
    from keyedlock import FileKeyedLock
    lock = FileKeyedLock(sys.argv[1])
    assert lock.acquire(sys.argv[2], timeout=0)
    print("ready", flush=True)
    sys.stdin.read()
    """
)


def waiting_in_kernel(path: str) -> bool:
    """True while some process waits for a lock on ``path`` (a blocked request in /proc/locks)."""
    st = os.stat(path)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    with open("/proc/locks") as f:
        return any(" -> " in line and ident in line for line in f)


@pytest.fixture
def lock_file(tmp_path: Path) -> str:
    return str(tmp_path / "keys.lock")


def test_a_holder_its_command_line_and_the_key_named(lock_file: str, start: Start) -> None:
    holder = start(sys.executable, "-c", HOLDER, lock_file, "invoice:42")
    ready(holder)
    report = holders_json("--file", lock_file, "invoice:42", "invoice:43")
    assert report["schema"] == 1
    assert report["lock_file"] == lock_file
    assert report["exists"] is True
    [held] = report["holders"]
    assert held["key"] == "invoice:42"
    assert held["key_source"] == "argument"
    assert held["offset"] == held["end"] == key_offset("invoice:42")
    assert (held["kind"], held["mode"]) == ("OFDLCK", "WRITE")
    assert isinstance(held["fd"], int)
    process = held["process"]
    assert process["pid"] == holder.pid
    assert process["command"] == [sys.executable, "-c", HOLDER, lock_file, "invoice:42"]
    assert process["uid"] == os.geteuid()
    assert process["age_seconds"] >= 0
    assert process["started"].endswith("Z")
    assert report["keys"] == [
        {"key": "invoice:42", "offset": key_offset("invoice:42"), "held": True, "waiters": 0},
        {"key": "invoice:43", "offset": key_offset("invoice:43"), "held": False, "waiters": 0},
    ]
    assert report["waiters"] == []

    proc = holders("--file", lock_file, "invoice:42")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == [f"lock file: {lock_file}", "held: 1"]
    assert lines[2].split() == ["KEY", "OFFSET", "PID", "USER", "PROCESS", "AGE", "COMMAND"]
    row = lines[3].split(maxsplit=5)
    assert row[:3] == ["invoice:42", str(key_offset("invoice:42")), str(holder.pid)]
    assert row[5].startswith(f"{sys.executable} -c ")  # the command line
    assert row[5].endswith(f" {lock_file} invoice:42")
    assert "keys asked about: invoice:42 (held)" in proc.stdout
    assert "PROCESS AGE: how long the process has run" in proc.stdout


def test_an_unknown_key_shows_its_offset(lock_file: str, start: Start) -> None:
    code = HOLDER.replace("sys.argv[2]", "'secret:' + sys.argv[2]")  # not in its arguments
    holder = start(sys.executable, "-c", code, lock_file, "7")
    ready(holder)
    [held] = holders_json("--file", lock_file)["holders"]
    assert (held["key"], held["key_source"]) == (None, None)
    assert held["offset"] == key_offset("secret:7")
    assert held["process"]["pid"] == holder.pid
    proc = holders("--file", lock_file)
    row = proc.stdout.splitlines()[3].split()
    assert row[:3] == ["?", str(key_offset("secret:7")), str(holder.pid)]


def test_a_key_with_a_line_break_is_printed_on_one_line(lock_file: str, start: Start) -> None:
    holder = start(sys.executable, "-c", HOLDER, lock_file, "two\nlines")
    ready(holder)
    [held] = holders_json("--file", lock_file)["holders"]
    assert held["key"] == "two\nlines"  # (JSON escapes it itself)
    text = holders("--file", lock_file, "two\nlines").stdout
    assert "two\n" not in text
    row = text.splitlines()[3].split()
    assert row[:2] == ["$'two\\nlines'", str(key_offset("two\nlines"))]
    assert "keys asked about: $'two\\nlines' (held)" in text


def test_a_key_that_is_not_utf8_is_printed_as_its_bytes(lock_file: str, start: Start) -> None:
    """Arguments that are not UTF-8 come in as surrogate escapes; ``$'...'`` gives the bytes
    back, so the printed key can be pasted into a shell."""
    key = os.fsdecode(b"a\xffb")
    holder = start(sys.executable, "-c", HOLDER, lock_file, key)
    ready(holder)
    text = holders("--file", lock_file, key).stdout
    assert "keys asked about: $'a\\xffb' (held)" in text


def test_keyedlock_run_holder_and_waiter_named_by_their_command_lines(
    lock_file: str, start: Start
) -> None:
    hold = [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.read()"]
    run = [sys.executable, "-m", "keyedlock", "run", "--file", lock_file, "deploy", "--"]
    holder = start(*run, *hold)
    ready(holder)
    waiter = start(*run, "true")
    wait_until(lambda: waiting_in_kernel(lock_file), "keyedlock run waits for the key")
    report = holders_json("--file", lock_file)
    [held] = report["holders"]
    assert (held["key"], held["key_source"]) == ("deploy", "command line")
    assert held["process"]["pid"] == holder.pid
    [waiting] = report["waiters"]
    assert waiting["offset"] == key_offset("deploy")
    assert (waiting["kind"], waiting["mode"]) == ("OFDLCK", "WRITE")
    if WAITER_PIDS and waiting["process"] is not None:  # None: not allowed to trace it here
        assert waiting["process"]["pid"] == waiter.pid
        assert (waiting["key"], waiting["key_source"]) == ("deploy", "command line")
        assert isinstance(waiting["tid"], int)
    proc = holders("--file", lock_file, "deploy")
    assert "waiting: 1" in proc.stdout
    assert "keys asked about: deploy (held)" in proc.stdout
    end(holder)  # the held command reads EOF and ends: the waiter gets the key and runs `true`
    assert holder.returncode == 0
    assert waiter.wait(WAIT) == 0


def test_other_kinds_of_lock_are_shown_as_such(lock_file: str, start: Start) -> None:
    """A POSIX lock on the whole file (fcntl.lockf): a range to the end of the file."""
    code = textwrap.dedent(
        """
        import fcntl, sys
        f = open(sys.argv[1], "w")
        fcntl.lockf(f, fcntl.LOCK_EX)
        print("ready", flush=True)
        sys.stdin.read()
        """
    )
    holder = start(sys.executable, "-c", code, lock_file)
    ready(holder)
    [held] = holders_json("--file", lock_file)["holders"]
    assert (held["kind"], held["mode"], held["offset"], held["end"]) == ("POSIX", "WRITE", 0, None)
    assert held["key"] is None
    assert held["process"]["pid"] == holder.pid
    row = holders("--file", lock_file).stdout.splitlines()[3]
    assert row.startswith("? [POSIX WRITE]  0-EOF ")


def test_nothing_held(lock_file: str) -> None:
    Path(lock_file).touch()
    report = holders_json("--file", lock_file, "k")
    assert (report["exists"], report["holders"], report["waiters"]) == (True, [], [])
    assert report["keys"] == [{"key": "k", "offset": key_offset("k"), "held": False, "waiters": 0}]
    proc = holders("--file", lock_file)
    assert proc.stdout.splitlines()[:2] == [f"lock file: {lock_file}", "held: none"]


def test_no_lock_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.lock")
    report = holders_json("--file", missing)
    assert (report["exists"], report["holders"]) == (False, [])
    proc = holders("--file", missing)
    assert proc.returncode == 0
    assert proc.stdout == f"lock file: {missing}\nthe file does not exist: no key of it is held\n"
    assert not os.path.exists(missing)  # holders never creates it


def test_the_default_lock_file(tmp_path: Path) -> None:
    """/tmp/keyedlock-<uid>/keys.lock, whatever $XDG_RUNTIME_DIR and $TMPDIR say."""
    proc = subprocess.run(
        [sys.executable, "-m", "keyedlock", "holders", "--json"],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
        env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "TMPDIR": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    expected = f"/tmp/keyedlock-{os.geteuid()}/keys.lock"
    assert json.loads(proc.stdout)["lock_file"] == expected


def without_ptrace() -> tuple[str, ...]:
    """A prefix that runs ``holders`` as root without the rights to read others' descriptors
    (the test is skipped without setpriv)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to drop CAP_SYS_PTRACE")
    caps = "-sys_ptrace,-dac_override,-dac_read_search"
    return (setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}")


def test_processes_that_cannot_be_inspected_are_reported(lock_file: str, start: Start) -> None:
    """Without the right to trace it, a process's descriptors cannot be read: it is listed."""
    if os.geteuid() == 0:
        # Root without CAP_SYS_PTRACE may not inspect a process that switched to another user.
        prefix = without_ptrace()
        other = start(
            sys.executable,
            "-c",
            "import os, sys; os.setuid(65534); print('ready', flush=True); sys.stdin.read()",
        )
        ready(other)
        pid = other.pid
    else:
        pid = 1
        if os.stat("/proc/1").st_uid == os.geteuid():
            pytest.skip("every process here belongs to this user")
        prefix = ()
    Path(lock_file).touch()
    report = holders_json("--file", lock_file, prefix=prefix)
    [entry] = [u for u in report["uninspected"] if u["pid"] == pid]
    assert entry["reason"] == "permission denied"
    assert entry["command"]
    proc = holders("--file", lock_file, prefix=prefix)
    assert "not inspected: " in proc.stdout
    assert "permission denied" in proc.stdout


def test_a_key_held_by_a_process_not_inspected_is_held_not_free(
    lock_file: str, start: Start
) -> None:
    """/proc/locks, which anyone may read, shows the key's byte locked: the key is reported
    held even though its holder's descriptors could not be read."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to hold a key as another user")
    prefix = without_ptrace()
    holder = start(
        sys.executable,
        "-c",
        HOLDER.replace('print("ready"', 'os.setuid(65534); print("ready"').replace(
            "import sys", "import os, sys"
        ),
        lock_file,
        "invoice:42",
    )
    ready(holder)
    report = holders_json("--file", lock_file, "invoice:42", "other", prefix=prefix)
    assert report["holders"] == []  # (its descriptors could not be read)
    assert holder.pid in [u["pid"] for u in report["uninspected"]]
    assert [(k["key"], k["held"]) for k in report["keys"]] == [
        ("invoice:42", True),
        ("other", False),
    ]
    text = holders("--file", lock_file, "invoice:42", "other", prefix=prefix).stdout
    assert "invoice:42 (held, by a process not inspected), other (free)" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--file", ""], "argument --file: expected a file name, got ''"),
        (["k", ""], "a KEY is empty"),
    ],
)
def test_argument_errors(args: list[str], message: str) -> None:
    proc = holders(*args)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr.splitlines()[-1] == f"python -m keyedlock holders: error: {message}"


def test_a_directory_is_not_a_lock_file(tmp_path: Path) -> None:
    proc = holders("--file", str(tmp_path))
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (
        f"python -m keyedlock holders: cannot inspect {tmp_path}: "
        f"[Errno 21] Is a directory: '{tmp_path}'\n"
    )
