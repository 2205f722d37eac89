"""run() and run_sync(): call a function while holding a key."""

import asyncio

from keyedlock import klock

stock = {"sku-1": 2}


def reserve(sku: str, quantity: int) -> bool:
    if stock[sku] < quantity:
        return False
    stock[sku] -= quantity
    return True


async def reserve_async(sku: str, quantity: int) -> bool:
    await asyncio.sleep(0)  # e.g. a database round trip
    return reserve(sku, quantity)


# In a thread: run_sync blocks until the key is free, then calls the function.
assert klock.run_sync("stock:sku-1", reserve, "sku-1", 1) is True


async def main() -> None:
    # In a task: run awaits the key, then calls a sync or an async function.
    first = await klock.run("stock:sku-1", reserve_async, "sku-1", 1)
    second = await klock.run("stock:sku-1", reserve, "sku-1", 1, timeout=5)
    print(first, second, stock)  # True False {'sku-1': 0}
    assert (first, second) == (True, False)


asyncio.run(main())
