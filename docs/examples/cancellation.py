"""Cancelling a waiter (asyncio or trio) leaves no trace: the queue moves on."""

import asyncio

import trio
import trio.testing

from keyedlock import KeyedLock

lock = KeyedLock()


async def asyncio_main() -> None:
    order: list[str] = []
    release = asyncio.Event()

    async def worker(name: str) -> None:
        async with lock("k"):
            order.append(name)
            await release.wait()

    first = asyncio.create_task(worker("first"))
    await asyncio.sleep(0)  # let it start: it takes the key
    second = asyncio.create_task(worker("second"))
    third = asyncio.create_task(worker("third"))
    await asyncio.sleep(0)  # let them queue
    assert lock.waiters("k") == 2

    second.cancel()  # cancelled while queued
    await asyncio.gather(second, return_exceptions=True)
    assert lock.waiters("k") == 1

    try:
        async with asyncio.timeout(0.01):  # asyncio's own timeouts are cancellations too
            await lock.acquire_async("k")
    except TimeoutError:
        pass
    assert lock.waiters("k") == 1

    release.set()
    await asyncio.gather(first, third)
    print("asyncio:", order)  # ['first', 'third']
    assert order == ["first", "third"]
    assert len(lock) == 0


async def trio_main() -> None:
    order: list[str] = []
    release = trio.Event()

    async def worker(name: str, scope: trio.CancelScope) -> None:
        with scope:
            async with lock("k"):
                order.append(name)
                await release.wait()

    scopes = [trio.CancelScope() for _ in range(3)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker, "first", scopes[0])
        await trio.testing.wait_all_tasks_blocked()  # it took the key
        nursery.start_soon(worker, "second", scopes[1])
        nursery.start_soon(worker, "third", scopes[2])
        await trio.testing.wait_all_tasks_blocked()  # both are queued
        assert lock.waiters("k") == 2

        scopes[1].cancel()  # cancelled while queued
        await trio.testing.wait_all_tasks_blocked()
        assert lock.waiters("k") == 1

        with trio.move_on_after(0.01):  # trio's timeouts are cancellations too
            await lock.acquire_async("k")
        assert lock.waiters("k") == 1
        release.set()
    print("trio:", order)  # ['first', 'third']
    assert order == ["first", "third"]
    assert len(lock) == 0


asyncio.run(asyncio_main())
trio.run(trio_main)
