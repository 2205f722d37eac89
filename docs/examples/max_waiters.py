"""max_waiters: bound the queue per key; one more waiter raises QueueFull at once."""

import asyncio

from keyedlock import KeyedLock, QueueFull

lock = KeyedLock(max_waiters=2)


async def main() -> None:
    release = asyncio.Event()

    async def slow_job() -> None:
        async with lock("export:acme"):
            await release.wait()

    tasks = [asyncio.create_task(slow_job()) for _ in range(3)]
    await asyncio.sleep(0)  # let them start: one holds the key, two wait
    assert lock.waiters("export:acme") == 2

    try:
        async with lock("export:acme"):
            raise AssertionError("unreachable: the queue is full")
    except QueueFull as exc:
        print("rejected:", exc)  # shed load instead of piling up

    release.set()
    await asyncio.gather(*tasks)
    assert len(lock) == 0


asyncio.run(main())
