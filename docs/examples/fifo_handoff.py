"""FIFO with direct hand-off: waiters get the key in arrival order, nobody barges in."""

import asyncio

from keyedlock import KeyedLock

lock = KeyedLock()


async def main() -> None:
    served: list[int] = []

    async def customer(n: int) -> None:
        async with lock("counter"):
            served.append(n)

    await lock.acquire_async("counter")  # the counter is busy
    tasks = []
    for n in range(5):
        tasks.append(asyncio.create_task(customer(n)))
        await asyncio.sleep(0)  # let customer n join the queue
        assert lock.waiters("counter") == n + 1

    lock.release("counter")  # hands the key straight to customer 0 ...
    # ... so a late arrival that tries now finds it taken, although nobody runs yet.
    assert lock.acquire("counter", blocking=False) is False
    await asyncio.gather(*tasks)

    print(served)  # [0, 1, 2, 3, 4]
    assert served == [0, 1, 2, 3, 4]
    assert len(lock) == 0


asyncio.run(main())
