"""Run by test_manager_descriptors.py in a process of its own: it lowers its descriptor limit
and uses up every descriptor, then checks that a new wait says why it cannot start and that
what ends a wait (a release, a call's outcome) still reaches the manager. Prints "ok"."""

from __future__ import annotations

import os
import resource
from typing import Any

import pytest

from keyedlock._scopes._manager._client import Client, Link, OutOfDescriptors, client_for
from keyedlock.multiprocessing import KeyedLockManager

taken: list[int] = []
links: list[Link] = []


def use_up_descriptors(client: Client) -> None:
    """Keep every idle connection busy, and every descriptor open: none is left."""
    while client.idle:
        links.append(client.idle.pop())
    while True:
        try:
            taken.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            return


def give_them_back(client: Client) -> None:
    while taken:
        os.close(taken.pop())
    while links:
        client.give_back(links.pop())


def main() -> None:
    with KeyedLockManager() as manager:
        klock = manager.KeyedLock()
        flight = manager.SingleFlight()
        client = client_for(manager.address)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        try:
            assert klock.acquire("warm-up")  # a connection that served becomes the reserve
            klock.release("warm-up")
            assert client.reserve is not None
            with klock("k"):
                use_up_descriptors(client)
                with pytest.raises(ConnectionError, match="no file descriptor is left") as raised:
                    klock.acquire("other")  # a wait needs a connection of its own
                assert isinstance(raised.value, OutOfDescriptors)
                assert "ulimit -n" in str(raised.value)
            assert not klock.locked("k")  # the exit released it, on the reserve
            give_them_back(client)

            def call() -> Any:
                use_up_descriptors(client)
                return "value"

            assert flight.do_sync("f", call) == "value"  # the outcome went, on the reserve
            assert not flight.in_flight("f")
        finally:
            give_them_back(client)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert klock.acquire("k", timeout=5)
        klock.release("k")
        assert len(klock) == 0
    print("ok")


if __name__ == "__main__":
    main()
