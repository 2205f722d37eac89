"""guard(): a decorator that takes a key built from the call's arguments."""

import asyncio
import threading
from dataclasses import dataclass

from keyedlock import klock


@dataclass
class Order:
    id: int
    user_id: int


processed: list[int] = []


@klock.guard("order:{order.id}")  # a str.format template over the parameters
async def fulfil(order: Order) -> None:
    assert klock.locked(f"order:{order.id}")
    await asyncio.sleep(0)
    processed.append(order.id)


@klock.guard(lambda user_id, amount: ("wallet", user_id), timeout=10)  # or a callable
def charge(user_id: int, amount: int) -> int:
    assert klock.locked(("wallet", user_id))
    return amount


async def main() -> None:
    await asyncio.gather(fulfil(Order(1, 7)), fulfil(Order(2, 7)), fulfil(Order(1, 7)))


asyncio.run(main())
result: list[int] = []
t = threading.Thread(target=lambda: result.append(charge(7, amount=30)))
t.start()
t.join(timeout=10)

print(sorted(processed), result)  # [1, 1, 2] [30]
assert sorted(processed) == [1, 1, 2]
assert result == [30]
assert len(klock) == 0
