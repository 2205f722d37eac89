"""Processes: FileKeyedLock makes a read-modify-write atomic per key across the whole host.

Four spawned processes each add 100 to a balance kept in a file, one read-modify-write at a
time. Then a process holding the key is killed with SIGKILL: the kernel frees its key at once.
"""

import multiprocessing
import os
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from keyedlock import FileKeyedLock


def deposit(lock: FileKeyedLock, ledger: Path, times: int) -> None:
    for _ in range(times):
        with lock("account:42", timeout=10):  # one process at a time for this account
            balance = int(ledger.read_text())
            os.sched_yield()  # without the lock, another process would slip in here
            ledger.write_text(str(balance + 1))


def hold_and_hang(lock: FileKeyedLock, held: Event) -> None:
    lock.acquire("account:42")
    held.set()
    time.sleep(60)  # killed long before


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        # FileKeyedLock() alone uses a private per-user file; processes that share a path
        # share the keys, whoever started them.
        lock = FileKeyedLock(os.path.join(tmp, "keys.lock"))
        ledger = Path(tmp, "balance")
        ledger.write_text("0")

        ctx = multiprocessing.get_context("spawn")  # the lock travels by its path
        workers = [ctx.Process(target=deposit, args=(lock, ledger, 100)) for _ in range(4)]
        for p in workers:
            p.start()
        for p in workers:
            p.join(timeout=30)
        print("balance:", ledger.read_text())  # balance: 400
        assert int(ledger.read_text()) == 400

        held = ctx.Event()
        crasher = ctx.Process(target=hold_and_hang, args=(lock, held))
        crasher.start()
        assert held.wait(timeout=30)
        assert lock.locked("account:42")  # held by the other process
        assert not lock.acquire("account:42", timeout=0)
        crasher.kill()  # SIGKILL: no cleanup code runs in it
        assert lock.acquire("account:42", timeout=10)  # freed by the kernel, at once
        lock.release("account:42")
        crasher.join(timeout=10)
        assert len(lock) == 0
