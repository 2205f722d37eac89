"""KeyedLockManager clients and descriptors: each waiting caller holds a connection.

- With no descriptor left in the process, a new wait fails at once with a ConnectionError
  that says so, and what ends a wait (the holder's release, a call's outcome) still reaches
  the manager, on the connection kept aside for it: nothing is left held or in flight.
- After a burst of waiters, the process keeps a bounded number of idle connections.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from keyedlock._scopes._manager._client import IDLE_LIMIT, client_for
from keyedlock.multiprocessing import KeyedLockManager

from ..support import WAIT, wait_until

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="no manager on Windows"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

CHILD = Path(__file__).with_name("out_of_descriptors.py")


def test_out_of_descriptors_a_wait_says_why_and_releases_still_get_through() -> None:
    """In a process of its own (see out_of_descriptors.py): it uses up its descriptors."""
    done = subprocess.run(
        [sys.executable, str(CHILD)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "ok"


def test_idle_connections_are_bounded_after_a_burst_of_waiters() -> None:
    waiters = IDLE_LIMIT + 8
    with KeyedLockManager() as manager:
        klock = manager.KeyedLock()
        client = client_for(manager.address)
        got: list[bool] = []

        def wait_for_the_key() -> None:
            acquired = klock.acquire("k", timeout=WAIT)
            if acquired:
                klock.release("k")
            got.append(acquired)

        with klock("k"):
            threads = [threading.Thread(target=wait_for_the_key) for _ in range(waiters)]
            for thread in threads:
                thread.start()
            wait_until(lambda: klock.waiters("k") == waiters, "every thread waits")
        for thread in threads:
            thread.join(WAIT)
        assert got == [True] * waiters
        assert len(client.idle) <= IDLE_LIMIT
        assert len(klock) == 0
