"""Inside an event loop, a blocking acquire is refused: use `async with`."""

import asyncio

from keyedlock import klock


async def handler() -> None:
    try:
        with klock("user:1"):  # would block the whole loop while it waits
            pass
    except RuntimeError as exc:
        print("refused:", str(exc).split(" (")[0])

    async with klock("user:1"):  # the right way in a coroutine
        pass

    # A non-blocking try never blocks, so it is allowed here.
    if klock.acquire("user:1", blocking=False):
        klock.release("user:1")


asyncio.run(handler())
assert len(klock) == 0


async def offload() -> None:
    # A worker thread runs no loop, so blocking calls are fine there.
    await asyncio.to_thread(klock.run_sync, "user:1", print, "in a worker thread")


asyncio.run(offload())
