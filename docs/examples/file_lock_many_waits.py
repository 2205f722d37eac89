"""Many waits: FileKeyedLock waits for 500 busy keys in at most max_threads helper threads.

Another process holds 500 keys; 500 asyncio tasks here wait for one each. Eight helper threads
wait in the kernel; the other waits queue for a thread, first come, first served. A queued wait
that times out leaves nothing behind. When the other process exits, every task gets its key.
"""

import asyncio
import multiprocessing
import os
import tempfile
import threading
from multiprocessing.synchronize import Event

from keyedlock import FileKeyedLock

KEYS = 500


def hold_keys(path: str, held: Event, done: Event) -> None:
    lock = FileKeyedLock(path)
    for key in [*(f"job:{i}" for i in range(KEYS)), "report"]:
        assert lock.acquire(key, timeout=0)
    held.set()
    done.wait(timeout=30)  # exiting frees every key at once


async def main(lock: FileKeyedLock, done: Event) -> None:
    served = 0

    async def worker(i: int) -> None:
        nonlocal served
        async with lock(f"job:{i}", timeout=30):
            served += 1

    before = threading.active_count()
    tasks = [asyncio.create_task(worker(i)) for i in range(KEYS)]
    await asyncio.sleep(0)  # every task runs until it waits
    # Eight helper threads wait in the kernel; 492 waits queue for one, holding nothing.
    # One more busy key: its wait queues too, and its timeout withdraws it, leaving nothing.
    assert await lock.acquire_async("report", timeout=0.1) is False
    print("helper threads:", threading.active_count() - before)  # helper threads: 8
    assert threading.active_count() - before == lock.max_threads

    done.set()  # the other process exits: its keys are free
    await asyncio.gather(*tasks)
    print("served:", served)  # served: 500
    assert served == KEYS
    assert len(lock) == 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "keys.lock")
        lock = FileKeyedLock(path, max_threads=8)  # the default is 64
        ctx = multiprocessing.get_context("spawn")
        held, done = ctx.Event(), ctx.Event()
        holder = ctx.Process(target=hold_keys, args=(path, held, done))
        holder.start()
        assert held.wait(timeout=30)
        asyncio.run(main(lock, done))
        holder.join(timeout=30)
