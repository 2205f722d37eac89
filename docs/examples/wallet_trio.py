"""trio: the same `async with klock(key)`, in trio tasks."""

import trio

from keyedlock import klock

balances = {"alice": 100}
charges: list[int] = []


async def checkout(user: str, amount: int) -> None:
    async with klock(f"wallet:{user}"):
        balance = balances[user]
        await trio.sleep(0.001)  # a call to the payment provider
        if balance >= amount:
            balances[user] = balance - amount
            charges.append(amount)


async def main() -> None:
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(checkout, "alice", 30)
    print(len(charges), "charges, balance", balances["alice"])  # 3 charges, balance 10
    assert len(charges) == 3
    assert balances["alice"] == 10


trio.run(main)
