"""Processes: a KeyedLockManager lock makes a wallet checkout atomic across a process pool."""

import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from keyedlock.multiprocessing import KeyedLockManager, KeyedLockProxy

PRICE = 30


def checkout(klock: KeyedLockProxy, wallet: Path) -> bool:
    """Charge PRICE if the balance covers it: read, check, write, atomic under the key."""
    with klock("wallet:alice", timeout=10):  # workers of every process queue here, FIFO
        balance = json.loads(wallet.read_text())["balance"]
        time.sleep(0.001)  # a call to the payment provider
        if balance < PRICE:
            return False
        wallet.write_text(json.dumps({"balance": balance - PRICE}))
        return True


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, KeyedLockManager() as manager:
        wallet = Path(tmp) / "wallet.json"
        wallet.write_text(json.dumps({"balance": 1000}))
        klock = manager.KeyedLock()  # a proxy: it pickles into the worker processes

        with ProcessPoolExecutor(4) as pool:
            charged = list(pool.map(checkout, [klock] * 40, [wallet] * 40))

        balance = json.loads(wallet.read_text())["balance"]
        print(f"{sum(charged)} of 40 checkouts charged; final balance: {balance}")  # 33 ...: 10
        assert sum(charged) == 33
        assert balance == 10  # never oversold, whichever process ran which checkout
        assert len(klock) == 0  # no key left behind in the manager


if __name__ == "__main__":  # worker processes import this file: start the pool only here
    main()
