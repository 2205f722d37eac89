"""The demo's processes scenario: forked processes charging one balance file.

The balance lives in a file that forked worker processes read and write, and
the lock is a :class:`~keyedlock.FileKeyedLock` on a lock file beside it
(``klock`` only excludes the callers of one process). It needs the ``fork``
start method and FileKeyedLock (Linux): :func:`need_processes` skips the
scenario without them.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import tempfile
import time
from typing import TYPE_CHECKING

from keyedlock import FileKeyedLock

from ._demo_wallet import AMOUNT, START_BALANCE, START_TIMEOUT, Outcome, ScenarioSkipped, guarded

if TYPE_CHECKING:
    import ctypes
    from multiprocessing.process import BaseProcess
    from multiprocessing.synchronize import Barrier

__all__ = ["MAX_PROCESSES", "PROCESS_IO_SECONDS", "need_processes", "run_processes"]

#: How long a worker process "does I/O" between reading and writing the balance
#: file. Long against the spread of the processes' wake-ups from the start
#: barrier, so that unlocked processes reliably all read before any of them writes.
PROCESS_IO_SECONDS = 0.01
#: At most this many worker processes; more checkouts are split between them.
MAX_PROCESSES = 10


def need_processes() -> None:
    """Skip the scenario without the ``fork`` start method or without :class:`FileKeyedLock`.

    :class:`FileKeyedLock` needs Linux (open file description locks); on other
    platforms constructing one raises NotImplementedError and the row says so.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        raise ScenarioSkipped("needs the 'fork' start method, which this platform lacks")
    try:
        importlib.import_module("multiprocessing.synchronize")  # for the start barrier
    except ImportError as exc:
        raise ScenarioSkipped(f"multiprocessing has no barrier here: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="keyedlock-demo-") as tmp:
        try:
            lock = FileKeyedLock(os.path.join(tmp, "keys.lock"))
        except NotImplementedError as exc:
            raise ScenarioSkipped(f"FileKeyedLock is not available here: {exc}") from None
        del lock  # closes the lock file before its directory goes


def _read_balance(path: str) -> int:
    with open(path, encoding="ascii") as f:
        return int(f.read())


def _write_balance(path: str, balance: int) -> None:
    # Write a new file and rename it over the old one: a reader sees the old
    # balance or the new one, never a half-written file.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{balance}\n")
    os.replace(tmp, path)


def _process_checkouts(
    wallet: str,
    user: str,
    lock: FileKeyedLock | None,
    start: Barrier,
    charged: ctypes.Array[ctypes.c_byte],
    slots: range,
) -> None:
    """One worker process: its checkouts, one after another, on the balance file.

    ``charged[slot]`` is set to 1 for each checkout of ``slots`` that charged
    (each slot belongs to one process: the tally itself never races).
    """
    start.wait(START_TIMEOUT)
    for slot in slots:
        with guarded(lock, f"wallet:{user}"):
            seen = _read_balance(wallet)
            time.sleep(PROCESS_IO_SECONDS)  # the I/O between read and write
            if seen >= AMOUNT:
                _write_balance(wallet, seen - AMOUNT)
                charged[slot] = 1


def run_processes(locked: bool, checkouts: int) -> Outcome:
    """Forked processes charging one balance file, ``with lock(key):`` a FileKeyedLock.

    One process per checkout, up to :data:`MAX_PROCESSES`; beyond that the
    checkouts are split between them. The balance is a file in a temporary
    directory and the lock a :class:`FileKeyedLock` on a lock file in the
    same directory. Every process is joined; one still running at the
    deadline is killed.
    """
    ctx = multiprocessing.get_context("fork")
    n_procs = min(checkouts, MAX_PROCESSES)
    with tempfile.TemporaryDirectory(prefix="keyedlock-demo-") as tmp:
        wallet = os.path.join(tmp, "balance")
        _write_balance(wallet, START_BALANCE)
        lock = FileKeyedLock(os.path.join(tmp, "keys.lock")) if locked else None
        start = ctx.Barrier(n_procs)
        charged = ctx.RawArray("b", checkouts)  # zeroed; one slot per checkout
        workers: list[BaseProcess] = [
            ctx.Process(
                target=_process_checkouts,
                args=(wallet, "alice", lock, start, charged, range(i, checkouts, n_procs)),
                name=f"keyedlock-demo-checkout-{i}",
                daemon=True,
            )
            for i in range(n_procs)
        ]
        started: list[BaseProcess] = []
        try:
            for w in workers:
                w.start()
                started.append(w)
            # Locked, the checkouts run one at a time: about checkouts * PROCESS_IO_SECONDS.
            deadline = time.monotonic() + START_TIMEOUT + 2 * checkouts * PROCESS_IO_SECONDS
            for w in started:
                w.join(max(0.0, deadline - time.monotonic()))
        finally:
            for w in started:
                if w.is_alive():
                    w.kill()
                w.join(START_TIMEOUT)
            del lock  # closes the lock file before its directory goes
        failed = {w.name: w.exitcode for w in workers if w.exitcode != 0}
        if failed:
            raise RuntimeError(f"checkout processes failed (exit codes): {failed}")
        return Outcome(sum(charged), _read_balance(wallet))
