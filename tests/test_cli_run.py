"""``keyedlock run KEY -- COMMAND``, run for real: child interpreters, real lock files, signals.

The program runs as ``python -m keyedlock run ...``; the commands it runs are small Python
scripts that report over their standard output (a pipe to the test) and wait on their
standard input, so every step is ordered by what a process said, never by sleeping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from keyedlock import FileKeyedLock
from keyedlock.cli._run import FORWARDED, NAMED_FORWARDED

from .support import WAIT, readable, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="FileKeyedLock needs Linux"
)

BUSY = 75


def keyedlock(*args: str) -> list[str]:
    """``python -m keyedlock run ARGS``."""
    return [sys.executable, "-m", "keyedlock", "run", *args]


def script(code: str) -> list[str]:
    """A command: a Python script."""
    return [sys.executable, "-c", textwrap.dedent(code)]


def run(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        keyedlock(*args),
        input=input,
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )


def read_line(stream: IO[str]) -> str:
    """The next line of a child's output; AssertionError if none comes within WAIT."""
    assert readable(stream, WAIT), "the child said nothing"
    return stream.readline()


@pytest.fixture
def lock_file(tmp_path: Path) -> str:
    return str(tmp_path / "keys.lock")


@pytest.fixture
def other(lock_file: str) -> Iterator[FileKeyedLock]:
    """The lock file as another process sees it: this test's own FileKeyedLock."""
    lock = FileKeyedLock(lock_file)
    yield lock
    del lock


#: A command that says "ready", then waits until its standard input closes, then exits 0.
HOLD = script(
    """
    import sys
    print("ready", flush=True)
    sys.stdin.read()
    """
)


Start = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def start() -> Iterator[Start]:
    """Starts ``python -m keyedlock run ARGS`` with pipes; at teardown kills what still runs."""
    started: list[subprocess.Popen[str]] = []

    def starter(*args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            keyedlock(*args),
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


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Close the child's input and wait for it: (status, rest of stdout, stderr)."""
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


def waiting_in_kernel(path: str) -> bool:
    """True while some process waits for a lock on ``path`` (a blocked request in /proc/locks)."""
    st = os.stat(path)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    with open("/proc/locks") as f:
        return any(" -> " in line and ident in line for line in f)


# -- exit statuses -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [0, 1, 7, 255])
def test_exit_status_is_the_commands(lock_file: str, status: int) -> None:
    proc = run("--file", lock_file, "k", "--", *script(f"raise SystemExit({status})"))
    assert (proc.returncode, proc.stderr) == (status, "")


def test_arguments_and_streams_pass_through(lock_file: str) -> None:
    command = script("import sys; print(sys.argv[1:]); print(sys.stdin.read().upper())")
    proc = run("--file", lock_file, "k", "--", *command, "-x", "--", "a b", input="hello")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "['-x', '--', 'a b']\nHELLO\n"


def test_a_signal_death_is_128_plus_the_signal(lock_file: str) -> None:
    command = script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    proc = run("--file", lock_file, "k", "--", *command)
    assert proc.returncode == 128 + signal.SIGKILL


def test_command_not_found(lock_file: str, other: FileKeyedLock) -> None:
    proc = run("--file", lock_file, "k", "--", "keyedlock-no-such-command", "arg")
    assert proc.returncode == 127
    assert proc.stderr == "python -m keyedlock run: keyedlock-no-such-command: command not found\n"
    assert other.acquire("k", timeout=0)  # released
    other.release("k")


@pytest.mark.parametrize("on_path", [False, True], ids=["path", "on PATH"])
def test_a_missing_interpreter_is_not_command_not_found(
    lock_file: str, tmp_path: Path, on_path: bool
) -> None:
    """A script whose #! interpreter is missing is found: the message says what is missing
    (as bash does), with bash's status."""
    script_file = tmp_path / "job.sh"
    script_file.write_text("#!/nonexistent/keyedlock-interpreter\nexit 0\n")
    script_file.chmod(0o755)
    name = script_file.name if on_path else str(script_file)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(
        keyedlock("--file", lock_file, "k", "--", name),
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
        env=env,
    )
    assert proc.returncode == 127
    assert proc.stderr == (
        f"python -m keyedlock run: {name}: cannot execute: required file not found "
        "(the interpreter its #! line names, or the loader it needs)\n"
    )


def test_command_not_executable(lock_file: str, tmp_path: Path, other: FileKeyedLock) -> None:
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\nexit 0\n")  # no execute permission
    proc = run("--file", lock_file, "k", "--", str(plain))
    assert proc.returncode == 126
    assert proc.stderr.startswith(f"python -m keyedlock run: {plain}: cannot execute: ")
    assert other.acquire("k", timeout=0)
    other.release("k")


def test_a_script_without_a_shebang_runs_with_sh(lock_file: str, tmp_path: Path) -> None:
    """As flock(1) (through execvp) and the shells do: a file that is executable but in no
    executable format runs with /bin/sh, and gets its arguments."""
    script_file = tmp_path / "plain"
    script_file.write_text('echo "ran with $# argument(s): $1"\nexit 3\n')
    script_file.chmod(0o755)
    proc = run("--file", lock_file, "k", "--", str(script_file), "first")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "ran with 1 argument(s): first\n", "")


def test_lock_file_error(tmp_path: Path) -> None:
    proc = run("--file", str(tmp_path), "k", "--", "true")  # a directory
    assert proc.returncode == 71
    assert proc.stderr.startswith("python -m keyedlock run: cannot use the lock file: ")


# -- the key -------------------------------------------------------------------------------


def test_the_key_is_held_while_the_command_runs(
    lock_file: str, other: FileKeyedLock, start: Start
) -> None:
    proc = start("--file", lock_file, "job:1", "--", *HOLD)
    assert proc.stdout is not None
    assert read_line(proc.stdout) == "ready\n"
    assert other.acquire("job:1", timeout=0) is False  # held by the other process
    assert other.acquire("job:2", timeout=0) is True  # only that key
    other.release("job:2")
    assert finish(proc) == (0, "", "")
    assert other.acquire("job:1", timeout=0) is True  # free once the command ended
    other.release("job:1")


def test_the_default_lock_file(tmp_path: Path) -> None:
    """Without --file: the lock file of FileKeyedLock(), /tmp/keyedlock-<uid>/keys.lock,
    whatever $XDG_RUNTIME_DIR and $TMPDIR say (a key of its own: the file is the host's)."""
    key = f"test:{uuid.uuid4()}"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "TMPDIR": str(tmp_path)}
    with subprocess.Popen(
        keyedlock(key, "--", *HOLD),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ) as proc:
        assert proc.stdout is not None
        assert read_line(proc.stdout) == "ready\n"
        lock = FileKeyedLock(f"/tmp/keyedlock-{os.geteuid()}/keys.lock")
        assert lock.acquire(key, timeout=0) is False
        assert FileKeyedLock().path == lock.path
        proc.communicate(timeout=WAIT)
    assert proc.returncode == 0
    assert lock.acquire(key, timeout=0) is True
    lock.release(key)


def test_nonblock_when_busy(lock_file: str, tmp_path: Path, other: FileKeyedLock) -> None:
    marker = tmp_path / "ran"
    with other("k"):
        proc = run("--file", lock_file, "--nonblock", "k", "--", "touch", str(marker))
    assert proc.returncode == BUSY
    assert proc.stderr == (
        f"python -m keyedlock run: key 'k' is busy in the lock file {lock_file} "
        f"(who holds it: python -m keyedlock holders --file {lock_file} k)\n"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    "key", ["-dash", os.fsdecode(b"x\xffy"), "two words"], ids=["dash", "not utf-8", "space"]
)
def test_the_busy_message_names_a_holders_command_that_finds_the_key(
    lock_file: str, other: FileKeyedLock, key: str
) -> None:
    """The ``holders`` command the message suggests, pasted into a shell, asks about this
    very key (a key that starts with ``-`` after a ``--``; bytes that are not UTF-8 in the
    ``$'...'`` form)."""
    with other(key):
        proc = run("--file", lock_file, "--nonblock", "--", key, "--", "true")
        assert proc.returncode == BUSY
        suggested = proc.stderr.split("(who holds it: ")[1].removesuffix(")\n")
        assert suggested.startswith("python -m keyedlock holders ")
        line = suggested.replace("python -m keyedlock", f"{sys.executable} -m keyedlock", 1)
        shown = subprocess.run(
            ["bash", "-c", line], capture_output=True, text=True, timeout=WAIT * 3, check=False
        )
    assert shown.returncode == 0, shown.stderr
    asked = [line for line in shown.stdout.splitlines() if line.startswith("keys asked about:")]
    assert len(asked) == 1, shown.stdout
    assert asked[0].endswith(" (held)"), shown.stdout


@pytest.mark.parametrize("timeout", ["0", "0.05"])
def test_timeout_when_busy(
    lock_file: str, tmp_path: Path, other: FileKeyedLock, timeout: str
) -> None:
    marker = tmp_path / "ran"
    with other("k"):
        proc = run("--file", lock_file, "--timeout", timeout, "k", "--", "touch", str(marker))
    assert proc.returncode == BUSY
    why = "is busy" if timeout == "0" else f"was still busy after {timeout} s"
    assert proc.stderr == (
        f"python -m keyedlock run: key 'k' {why} in the lock file {lock_file} "
        f"(who holds it: python -m keyedlock holders --file {lock_file} k)\n"
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    "wait",
    [[], ["--timeout", str(WAIT * 3)], ["--timeout", "inf"]],
    ids=["forever", "timeout", "timeout inf"],
)
def test_waits_for_the_key(
    lock_file: str, other: FileKeyedLock, wait: list[str], start: Start
) -> None:
    other.acquire("k")
    try:
        proc = start("--file", lock_file, *wait, "k", "--", *HOLD)
        wait_until(lambda: waiting_in_kernel(lock_file), "keyedlock run waits for the key")
    finally:
        other.release("k")
    assert proc.stdout is not None
    assert read_line(proc.stdout) == "ready\n"  # it got the key and started the command
    assert other.acquire("k", timeout=0) is False
    assert finish(proc) == (0, "", "")


def test_the_command_does_not_inherit_the_lock_file(lock_file: str) -> None:
    """The lock file's descriptors are close-on-exec: the command has none of them."""
    command = script(
        f"""
        import os
        target = os.stat({lock_file!r})
        for fd in os.listdir("/proc/self/fd"):
            try:
                st = os.stat(f"/proc/self/fd/{{fd}}")
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                print("inherited", fd, os.readlink(f"/proc/self/fd/{{fd}}"))
        print("checked")
        """
    )
    proc = run("--file", lock_file, "k", "--", *command)
    assert (proc.returncode, proc.stdout) == (0, "checked\n"), proc.stderr


def test_killed_run_frees_the_key(lock_file: str, other: FileKeyedLock, start: Start) -> None:
    """SIGKILL of keyedlock run: the kernel drops the key; the orphaned command goes on."""
    proc = start("--file", lock_file, "k", "--", *HOLD)
    assert proc.stdout is not None
    assert read_line(proc.stdout) == "ready\n"
    assert other.acquire("k", timeout=0) is False
    proc.kill()
    proc.wait(WAIT)
    assert other.acquire("k", timeout=0) is True
    other.release("k")
    proc.communicate(timeout=WAIT)  # the orphaned command reads EOF, exits, closes stdout


# -- signals -------------------------------------------------------------------------------

#: A command that reports each signal it gets (by number) and exits 40 + its number on SIGTERM.
REPORTER = [
    *script(
        """
        import signal, sys

        def report(signum, frame):
            print("got", signum, flush=True)
            if signum == signal.SIGTERM:
                sys.exit(40 + signum)

        for number in sys.argv[1:]:
            signal.signal(int(number), report)
        print("ready", flush=True)
        while True:
            signal.pause()
        """
    ),
    *(str(int(s)) for s in FORWARDED),
]


def got(signum: int) -> str:
    """What :data:`REPORTER` prints for ``signum``."""
    return f"got {int(signum)}\n"


def signal_id(signum: int) -> str:
    """A test id for ``signum``: SIGTERM, SIGRTMIN+1."""
    if signal.SIGRTMIN < signum < signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    return signal.Signals(signum).name


def handled(signum: int) -> int:
    """``signum``, skipping the test if this process inherited it ignored.

    A shell without job control starts background commands with SIGINT and SIGQUIT
    ignored; the processes started here inherit that, and keyedlock run leaves signals
    ignored at its start alone (see test_signals_ignored_at_start_stay_ignored).
    """
    if signal.getsignal(signum) == signal.SIG_IGN:
        pytest.skip(f"the tests run with {signal.Signals(signum).name} ignored")
    return signum


@pytest.mark.parametrize(
    "signum",
    # Every named one; of the real-time signals the first, one between and the last.
    [s for s in NAMED_FORWARDED if s != signal.SIGTERM]
    + [signal.SIGRTMIN, signal.SIGRTMIN + 1, signal.SIGRTMAX],
    ids=signal_id,
)
def test_signals_are_forwarded(lock_file: str, signum: int, start: Start) -> None:
    signum = handled(signum)
    proc = start("--file", lock_file, "k", "--", *REPORTER)
    assert proc.stdout is not None
    assert read_line(proc.stdout) == "ready\n"
    proc.send_signal(signum)
    assert read_line(proc.stdout) == got(signum)
    proc.send_signal(signal.SIGTERM)
    assert read_line(proc.stdout) == got(signal.SIGTERM)
    assert finish(proc) == (40 + signal.SIGTERM, "", "")


def test_sigterm_ends_the_command_with_its_status(lock_file: str, start: Start) -> None:
    command = ["sh", "-c", f"echo ready; exec sleep {WAIT * 10:g}"]
    proc = start("--file", lock_file, "k", "--", *command)
    assert proc.stdout is not None
    assert read_line(proc.stdout) == "ready\n"
    proc.send_signal(signal.SIGTERM)  # the command has no handler: it dies by the signal
    status, _, err = finish(proc)
    assert (status, err) == (128 + signal.SIGTERM, "")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_waiting_ends_the_wait(
    lock_file: str, tmp_path: Path, other: FileKeyedLock, signum: int, start: Start
) -> None:
    """Stopped while waiting for the key: it dies by the signal, the command never starts."""
    signum = handled(signum)
    marker = tmp_path / "ran"
    with other("k"):
        proc = start("--file", lock_file, "k", "--", "touch", str(marker))
        wait_until(lambda: waiting_in_kernel(lock_file), "keyedlock run waits for the key")
        proc.send_signal(signum)
        status, out, err = finish(proc)
    assert (status, out, err) == (-signum, "", "")
    assert not marker.exists()


def test_sigchld_ignored_at_start_is_no_hang(lock_file: str, other: FileKeyedLock) -> None:
    """SIGCHLD ignored when keyedlock run starts (inherited across exec) would have the kernel
    reap the command unseen: run sets it back to its default, and returns the status."""
    ignore = "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); "
    ignore += "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    command = keyedlock("--file", lock_file, "k", "--", *script("raise SystemExit(3)"))
    proc = subprocess.run(
        [sys.executable, "-c", ignore, *command[1:]],
        capture_output=True,
        text=True,
        timeout=WAIT * 3,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (3, "")
    assert other.acquire("k", timeout=0)  # released
    other.release("k")


def test_signals_ignored_at_start_stay_ignored(lock_file: str) -> None:
    """As under nohup: SIGHUP ignored when keyedlock run starts is neither taken nor forwarded.

    After SIGHUP, SIGUSR1 (forwarded) makes the command report: a forwarded SIGHUP would have
    reached it first.
    """
    nohup = "import os, signal, sys; signal.signal(signal.SIGHUP, signal.SIG_IGN); "
    nohup += "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    with subprocess.Popen(
        [sys.executable, "-c", nohup, *keyedlock("--file", lock_file, "k", "--", *REPORTER)[1:]],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert read_line(proc.stdout) == "ready\n"
        proc.send_signal(signal.SIGHUP)  # ignored by keyedlock run: it goes on
        proc.send_signal(signal.SIGUSR1)
        assert read_line(proc.stdout) == got(signal.SIGUSR1)
        proc.send_signal(signal.SIGTERM)
        assert read_line(proc.stdout) == got(signal.SIGTERM)
        assert proc.wait(WAIT) == 40 + signal.SIGTERM


def test_ctrl_c_in_a_terminal_reaches_the_command_once(lock_file: str) -> None:
    """Ctrl-C: the terminal signals the whole foreground group; keyedlock adds no second one.

    keyedlock run and its command run in a terminal (a pseudo-terminal of this test). After
    Ctrl-C, SIGUSR1 sent to keyedlock run (and forwarded) asks the command how many SIGINTs
    it got: a forwarded copy of the SIGINT would have reached it before the SIGUSR1.
    """
    handled(signal.SIGINT)
    command = script(
        """
        import signal, sys
        count = 0

        def interrupted(signum, frame):
            global count
            count += 1
            print("interrupted", flush=True)

        def report(signum, frame):
            print("SIGINTs:", count, flush=True)
            sys.exit(0)

        signal.signal(signal.SIGINT, interrupted)
        signal.signal(signal.SIGUSR1, report)
        print("ready", flush=True)
        while True:
            signal.pause()
        """
    )
    # A session of its own whose controlling terminal is the pseudo-terminal.
    in_terminal = textwrap.dedent(
        """
        import os, sys
        os.setsid()
        fd = os.open(os.ttyname(0), os.O_RDWR)  # the first terminal a session leader opens
        os.close(fd)
        os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
        """
    )
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                in_terminal,
                *keyedlock("--file", lock_file, "k", "--", *command)[1:],
            ],
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
        os.close(slave)
        try:
            terminal = Terminal(master)
            terminal.expect("ready")
            os.write(master, b"\x03")  # Ctrl-C
            terminal.expect("interrupted")
            proc.send_signal(signal.SIGUSR1)
            assert terminal.expect("SIGINTs:").split() == ["SIGINTs:", "1"]
            assert proc.wait(WAIT) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(WAIT)
    finally:
        os.close(master)


class Terminal:
    """Reads what a pseudo-terminal shows, line by line, bounded."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.pending = b""

    def expect(self, start: str) -> str:
        """The next line holding ``start`` (earlier lines are skipped), from ``start`` on.

        (The terminal echoes Ctrl-C as ``^C`` before the next output.)
        """
        while True:
            while b"\n" in self.pending:
                line, self.pending = self.pending.split(b"\n", 1)
                text = line.decode(errors="replace").strip()
                if start in text:
                    return text[text.index(start) :]
            shown = readable(self.master, WAIT)
            assert shown, f"the terminal showed no line starting with {start!r}"
            self.pending += os.read(self.master, 4096)


# -- arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["k"], "missing the command to run: KEY -- COMMAND [ARG ...]"),
        (["k", "--"], "missing the command to run after --"),
        (["k", "ls", "-l"], "put -- between KEY and the command: k -- ls -l"),
        (["k", "--bogus", "--", "true"], "unrecognized arguments: --bogus"),
        (["", "--", "true"], "KEY is empty"),
        (["k", "--", ""], "the command to run after -- is empty"),
        (
            ["--timeout", "soon", "k", "--", "true"],
            "argument --timeout: expected a number of seconds >= 0, got 'soon'",
        ),
        (
            ["--timeout", "-1", "k", "--", "true"],
            "argument --timeout: expected a number of seconds >= 0, got '-1'",
        ),
        (
            ["--timeout", "nan", "k", "--", "true"],
            "argument --timeout: expected a number of seconds >= 0, got 'nan'",
        ),
        (
            ["--timeout", "1", "--nonblock", "k", "--", "true"],
            "argument --nonblock: not allowed with argument --timeout",
        ),
        (["--file", "--", "k", "--", "true"], "argument --file: expected one argument"),
        (["--file", "", "k", "--", "true"], "argument --file: expected a file name, got ''"),
        (["--", "true"], "the following arguments are required: KEY"),
        (
            ["-x", "--", "true"],
            "the following arguments are required: KEY (a KEY that starts with -, as '-x' "
            "does, goes after --: run [OPTIONS] -- -x -- COMMAND)",
        ),
    ],
)
def test_argument_errors(args: list[str], message: str) -> None:
    proc = run(*args)
    assert (proc.returncode, proc.stdout) == (2, "")
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("usage: python -m keyedlock run [-h] [--file PATH] ")
    assert lines[-1] == f"python -m keyedlock run: error: {message}"


@pytest.mark.parametrize("options", [[], ["--nonblock"], ["--timeout", "5"]])
def test_a_key_that_starts_with_a_dash_goes_after_a_first_double_dash(
    options: list[str], tmp_path: Path
) -> None:
    """``run [OPTIONS] -- -KEY -- COMMAND``: the key is held while the command runs (which
    sees it locked through a lock of its own), and released after."""
    path = str(tmp_path / "locks")
    check = (
        "import sys; from keyedlock import FileKeyedLock; "
        f"sys.exit(0 if FileKeyedLock({path!r}).locked('-x') else 5)"
    )
    proc = run("--file", path, *options, "--", "-x", "--", sys.executable, "-c", check)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert not FileKeyedLock(path).locked("-x")


def test_help_shows_the_exit_statuses() -> None:
    proc = run("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith(
        "usage: python -m keyedlock run [-h] [--file PATH] [--timeout SECONDS | --nonblock] "
        "KEY -- COMMAND [ARG ...]\n"
    )
    text = " ".join(proc.stdout.split())
    assert f"{BUSY} if the key was busy (--nonblock) or still busy when --timeout elapsed" in text
    assert "127 if COMMAND was not found, 126 if it could not be executed" in text
