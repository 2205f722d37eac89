"""asyncio: `async with klock(key)` serializes the tasks working on one wallet."""

import asyncio

from keyedlock import klock

balances = {"alice": 100}


async def checkout(user: str, amount: int) -> bool:
    async with klock(f"wallet:{user}"):
        balance = balances[user]
        await asyncio.sleep(0.001)  # a call to the payment provider
        if balance < amount:
            return False
        balances[user] = balance - amount
        return True


async def main() -> None:
    results = await asyncio.gather(*(checkout("alice", 30) for _ in range(10)))
    print(results.count(True), "charges, balance", balances["alice"])  # 3 charges, balance 10
    assert results.count(True) == 3
    assert balances["alice"] == 10


asyncio.run(main())
