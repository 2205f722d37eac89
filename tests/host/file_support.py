"""Support for the FileKeyedLock tests: other processes, each one reaped whatever happens.

- :class:`Agent`: a separate ``python -c`` program (an unrelated process: no fork, no
  multiprocessing) that drives a FileKeyedLock on the same file over a line protocol.
- Worker functions for :mod:`multiprocessing` children (module level: spawn children import them).
- :class:`Children`: starts agents and multiprocessing children, and kills and reaps all of
  them at teardown, even when the test failed.

Every wait is bounded by :data:`~tests.support.WAIT`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import IO, Any

from keyedlock import FileKeyedLock

from ..support import WAIT, readable, scope_of, wait_until

__all__ = [
    "AGENT",
    "HELPER_THREAD",
    "Agent",
    "Children",
    "count_under_key",
    "fds_of",
    "fork_child_report",
    "helper_threads",
    "hold_until_set",
    "own_fds",
    "wait_waiters",
]

#: The name of the helper threads that wait in the kernel for an async or timed waiter.
HELPER_THREAD = "keyedlock-file-wait"

#: The program an :class:`Agent` runs: ``python -c AGENT <lock file>``. One command per line on
#: stdin, one reply per line on stdout.
AGENT = r"""
import os, sys
from keyedlock import FileKeyedLock
from keyedlock._scopes import key_offset

lock = FileKeyedLock(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "acquire":                # acquire KEY TIMEOUT -> True / False
        reply = lock.acquire(args[0], timeout=float(args[1]))
    elif cmd == "release":              # release KEY -> ok
        lock.release(args[0])
        reply = "ok"
    elif cmd == "hold":                 # hold PREFIX N -> how many of PREFIX0.. it took at once
        reply = sum(lock.acquire(f"{args[0]}{i}", timeout=0) for i in range(int(args[1])))
    elif cmd == "unhold":               # unhold PREFIX N -> ok (releases PREFIX0..PREFIXN-1)
        for i in range(int(args[1])):
            lock.release(f"{args[0]}{i}")
        reply = "ok"
    elif cmd == "locked":               # locked KEY -> True / False
        reply = lock.locked(args[0])
    elif cmd == "offset":               # offset KEY -> the key's byte in the file
        reply = key_offset(args[0])
    elif cmd == "count":                # count KEY COUNTER_FILE N -> done (no timeout)
        key, counter, n = args[0], args[1], int(args[2])
        for _ in range(n):
            with lock(key):
                with open(counter) as f:
                    value = int(f.read())
                os.sched_yield()
                with open(counter, "w") as f:
                    f.write(str(value + 1))
        reply = "done"
    else:
        reply = f"unknown command {cmd!r}"
    print(reply, flush=True)
"""


class Agent:
    """An unrelated process (``python -c``) using a FileKeyedLock on ``path``.

    ``program``: what it runs (:data:`AGENT` by default), with ``path`` and ``args`` as its
    arguments; it must print ``ready`` first.
    """

    def __init__(self, path: str | Path, program: str = AGENT, *args: object) -> None:
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", program, str(path), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            bufsize=0,
        )
        self._buffer = b""
        assert self.reply() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, *words: object) -> None:
        """Send a command without waiting for its reply (see :meth:`reply`)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(map(str, words)) + "\n").encode())

    def reply(self, timeout: float = WAIT) -> str:
        """The next line the agent prints (bounded wait)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not readable(fd, left):
                raise AssertionError(f"agent {self.pid} did not reply within {timeout} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"agent {self.pid} exited:\n{self.stderr()}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def ask(self, *words: object) -> str:
        """Send a command and return its reply."""
        self.send(*words)
        return self.reply()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL the agent and reap it."""
        self.proc.kill()
        self.proc.wait(WAIT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()


class Children:
    """Every process one test starts; :meth:`reap` kills and reaps those still running."""

    def __init__(self) -> None:
        self.agents: list[Agent] = []
        self.processes: list[BaseProcess] = []

    def agent(self, path: str | Path, program: str = AGENT, *args: object) -> Agent:
        agent = Agent(path, program, *args)
        self.agents.append(agent)
        return agent

    def process(self, ctx: BaseContext, target: Callable[..., object], *args: Any) -> BaseProcess:
        process: BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=target, args=args, daemon=True
        )
        process.start()
        self.processes.append(process)
        return process

    def join(self, processes: Iterable[BaseProcess]) -> None:
        """Join (bounded) and check that each exited with status 0."""
        for process in processes:
            process.join(WAIT)
            assert process.exitcode == 0, f"child {process.pid} exit code {process.exitcode}"

    def reap(self) -> None:
        for process in self.processes:
            if process.is_alive():
                process.kill()
        for process in self.processes:
            process.join(WAIT)
        for agent in self.agents:
            agent.close()


def helper_threads() -> set[threading.Thread]:
    """The live helper threads of file-lock waits in this process."""
    return {t for t in threading.enumerate() if t.name == HELPER_THREAD}


def wait_waiters(lock: FileKeyedLock, key: str, count: int) -> None:
    """Wait (bounded) until ``count`` callers of this process queue on ``key``."""
    wait_until(lambda: lock.waiters(key) == count, f"{count} waiter(s) queue on {key!r}")


def fds_of(path: str) -> list[int]:
    """The descriptors of this process open on the file at ``path``."""
    target = os.stat(path)
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            st = os.stat(f"/proc/self/fd/{name}")
        except OSError:
            continue  # the descriptor listdir itself used
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            found.append(int(name))
    return found


def own_fds(lock: FileKeyedLock) -> list[int]:
    """The descriptors ``lock`` keeps open: the shared one, and the waits' one once it waited
    in a helper thread (never more, however many keys it waits for or holds)."""
    scope = scope_of(lock)
    return sorted(fd for fd in (scope.fd, scope.waits_fd) if fd >= 0)


# -- worker functions (module level: spawn children import them) ------------------------------


def count_under_key(
    lock: FileKeyedLock, counter: str, times: int, start: Barrier, timeout: float | None
) -> None:
    """Increment the number in ``counter`` ``times`` times, each read-yield-write under one key.

    ``timeout``: None waits in the calling thread, a number in a helper thread (the test
    bounds the wait either way, by joining the process).
    """
    start.wait(WAIT)
    for _ in range(times):
        with lock("counter", timeout=timeout):
            value = int(Path(counter).read_text())
            os.sched_yield()  # invite the race the lock prevents
            Path(counter).write_text(str(value + 1))


def hold_until_set(path: str, key: str, held: Event, release: Event | None) -> None:
    """Hold ``key`` until ``release`` is set (None: until killed), telling ``held`` once held."""
    lock = FileKeyedLock(path)
    assert lock.acquire(key, timeout=WAIT)
    held.set()
    if release is None:
        time.sleep(10 * WAIT)  # killed long before
    else:
        assert release.wait(WAIT)
        lock.release(key)


def fork_child_exit(ctx: AbstractContextManager[None], conn: Connection) -> None:
    """In a fork child: leave the ``with`` its parent was inside when it forked; report."""
    try:
        ctx.__exit__(None, None, None)
    except RuntimeError as exc:
        conn.send(str(exc))
    else:
        conn.send("exited")
    conn.close()


def fork_child_report(lock: FileKeyedLock, key: str, conn: Connection) -> None:
    """In a fork child of a process holding ``key``: report what the child sees."""
    report: dict[str, object] = {
        "len": len(lock),
        "locked": lock.locked(key),
        "try": lock.acquire(key, timeout=0),
        "fds": len(fds_of(lock.path)),
    }
    try:
        lock.release(key)
    except RuntimeError as exc:
        report["release"] = str(exc)
    conn.send(report)
    conn.close()
