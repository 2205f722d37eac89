"""Worker processes of the cluster-scope tests, seen from the test (see ``lock_worker.py``).

A :class:`WorkerProcess` runs ``lock_worker.py`` in a new interpreter, sends it commands and
waits (bounded) for its events. It can be stopped (SIGSTOP), continued and killed (SIGKILL),
and is always reaped when closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..support import WAIT

__all__ = ["WorkerProcess"]

WORKER = Path(__file__).resolve().parent / "lock_worker.py"


class WorkerProcess:
    """One worker process (see the module docstring)."""

    def __init__(self, config: dict[str, Any], name: str = "worker") -> None:
        self.name = name
        env = dict(os.environ)
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._seen: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.expect("ready", "worker")

    def __repr__(self) -> str:
        return f"<WorkerProcess {self.name} pid={self.process.pid}>"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._events.put(json.loads(line))

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def send(self, op: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()

    def expect(self, event: str, agent: str, timeout: float = WAIT) -> dict[str, Any]:
        """Wait for ``event`` of ``agent`` (events of others are kept for later); an
        ``error`` event of that agent fails the wait, saying what was raised."""
        deadline = _deadline(timeout)
        while True:
            for seen in self._seen:
                if seen["id"] == agent and seen["ev"] in (event, "error"):
                    self._seen.remove(seen)
                    if seen["ev"] != event:
                        raise AssertionError(f"{self.name}/{agent}: {seen}")
                    return seen
            left = deadline - _now()
            if left <= 0:
                raise AssertionError(
                    f"{self.name}/{agent}: no {event!r} within {timeout} s; seen {self._seen}; "
                    f"stderr: {''.join(self._stderr)[-2000:]}"
                )
            try:
                self._seen.append(self._events.get(timeout=left))
            except queue.Empty:
                continue

    def expect_error(self, agent: str, timeout: float = WAIT) -> dict[str, Any]:
        """Wait for agent ``agent`` to report an error; the event (type, message)."""
        deadline = _deadline(timeout)
        while True:
            for seen in self._seen:
                if seen["id"] == agent and seen["ev"] == "error":
                    self._seen.remove(seen)
                    return seen
            left = deadline - _now()
            if left <= 0:
                raise AssertionError(f"{self.name}/{agent}: no error within {timeout} s")
            try:
                self._seen.append(self._events.get(timeout=left))
            except queue.Empty:
                continue

    def stop(self) -> None:
        self.process.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT)

    def close(self) -> None:
        """End the process (asked first, killed if it lingers) and reap it."""
        if self.process.poll() is None:
            self.cont()
            try:
                self.send("exit")
                self.process.wait(WAIT / 2)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):  # it died with data still in the pipe
                self.process.stdin.close()
        self.process.wait(WAIT)
        for reader in self._readers:
            reader.join(WAIT)  # the pipes are at their end: the process is gone
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def _now() -> float:
    import time

    return time.monotonic()


def _deadline(timeout: float) -> float:
    return _now() + timeout
