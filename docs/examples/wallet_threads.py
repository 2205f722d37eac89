"""Threads: `with klock(key)` makes a read-check-write on one wallet atomic."""

import threading
import time

from keyedlock import klock

balances = {"alice": 100, "bob": 100}
charged: list[str] = []


def checkout(user: str, amount: int) -> None:
    with klock(f"wallet:{user}"):  # one checkout per wallet at a time; wallets in parallel
        balance = balances[user]
        time.sleep(0.001)  # a call to the payment provider
        if balance >= amount:
            balances[user] = balance - amount
            charged.append(user)


threads = [threading.Thread(target=checkout, args=(user, 30)) for user in ["alice", "bob"] * 5]
for t in threads:
    t.start()
for t in threads:
    t.join(timeout=10)

print(balances)  # {'alice': 10, 'bob': 10}
assert balances == {"alice": 10, "bob": 10}
assert sorted(charged) == ["alice"] * 3 + ["bob"] * 3
assert len(klock) == 0  # no key is left behind
