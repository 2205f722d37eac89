"""Ctrl-C at every point, in the manager scope: the scenarios of :mod:`.interrupt_sweep`, run
over the locks and single-flight groups of one :class:`KeyedLockManager`.

The manager runs in a process of its own and is never the one interrupted: SIGINT lands in
this process (the client: its connections, its requests, the shared public classes). One
manager serves every run of a sweep; each run gets a lock or a group of its own (a new table
in the manager), so no run sees what another left. After every run, besides the checks of
the other scopes (every helper ended, keyedlock's helper threads ended), the manager is asked
on a connection of its own, not this process's pool:

- that nothing is held, waited for or in flight in the run's lock or group (within
  :data:`~.interrupt_sweep.BOUND`: what a client leaves behind on purpose, a connection it
  shut, the manager cleans up as soon as it notices);
- then a new caller (a thread of its own) takes the key at once (``timeout=0``), or runs a
  new call of its own.

And the pool of idle connections this process keeps must hold only open connections with
nothing unread on them: a reply left unread on a pooled connection would be read as the
answer to the next request. A pool found so is reported and dropped (the next run starts
with a new one).
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

from keyedlock._scopes._manager import Client, client_for, drop_client, encode
from keyedlock._scopes._manager._protocol import FLIGHT_LEN, LEN, LOCKED, WAITERS
from keyedlock.multiprocessing import KeyedLockManager, KeyedLockProxy, SingleFlightProxy

from ..support import start_thread
from .injection import Injector
from .interrupt_sweep import (
    BOUND,
    FLIGHT_SCENARIOS,
    KEY,
    LOCK_SCENARIOS,
    is_interrupt,
    wait_helper_threads_end,
)

__all__ = ["run_manager_scenario"]


def ask(address: str, request: Any, *fields: object) -> Any:
    """One request to the manager on a new connection of its own (never this process's pool)."""
    client = Client(address)
    try:
        return client.call(encode(request, *fields), time.monotonic() + BOUND)
    finally:
        client.close()


def check_pool(address: str) -> None:
    """Every idle pooled connection is open, with nothing unread on it (else: drop the pool)."""
    bad = []
    for link in list(client_for(address).idle):
        if link.closed:
            bad.append(f"connection #{link.id} is closed")
            continue
        poller = select.poll()
        poller.register(link.fd, select.POLLIN)
        if poller.poll(0):
            bad.append(f"connection #{link.id} has an unread message (or was shut)")
    if bad:
        drop_client(address)
        raise AssertionError("the pool of idle connections is unfit: " + "; ".join(bad))


def settle(clean: Callable[[], bool], what: Callable[[], str]) -> None:
    """Wait (bounded) until the manager says ``clean``; else fail with ``what()``."""
    deadline = time.monotonic() + BOUND
    while not clean():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        time.sleep(0.001)


def check_manager_lock_clean(lock: KeyedLockProxy) -> None:
    wait_helper_threads_end()
    check_pool(lock._backend.address)
    address, tid = lock._backend.address, lock._backend.tid
    settle(
        lambda: ask(address, LEN, tid) == 0,
        lambda: (
            f"left in the manager: locked={ask(address, LOCKED, tid, KEY)}, "
            f"waiters={ask(address, WAITERS, tid, KEY)}"
        ),
    )
    taken = start_thread(lambda: lock.acquire(KEY, timeout=0), "take-again").result(BOUND)
    assert taken, "a new caller cannot take the key"
    lock.release(KEY)
    assert ask(address, LEN, tid) == 0


def check_manager_flight_clean(sf: SingleFlightProxy) -> None:
    wait_helper_threads_end()
    check_pool(sf._backend.address)
    address, fid = sf._backend.address, sf._backend.fid
    settle(
        lambda: ask(address, FLIGHT_LEN, fid) == 0,
        lambda: f"calls left in flight in the manager: {ask(address, FLIGHT_LEN, fid)}",
    )
    fresh = start_thread(lambda: sf.do_sync(KEY, lambda: "fresh"), "fresh-call")
    assert fresh.result(BOUND) == "fresh", "a new call does not run"
    assert ask(address, FLIGHT_LEN, fid) == 0


def run_manager_lock_scenario(name: str, manager: KeyedLockManager) -> Callable[[Injector], None]:
    body = LOCK_SCENARIOS[name]

    def run_once(inject: Injector) -> None:
        lock = manager.KeyedLock()  # a table of its own in the manager
        try:
            body(lock, inject)
        except BaseException as exc:
            if not is_interrupt(exc):
                raise
        check_manager_lock_clean(lock)

    return run_once


def run_manager_flight_scenario(name: str, manager: KeyedLockManager) -> Callable[[Injector], None]:
    body = FLIGHT_SCENARIOS[name]

    def run_once(inject: Injector) -> None:
        sf = manager.SingleFlight()
        try:
            body(sf, inject)
        except BaseException as exc:
            if not is_interrupt(exc):
                raise
        check_manager_flight_clean(sf)

    return run_once


def run_manager_scenario(
    kind: str, name: str, manager: KeyedLockManager
) -> Callable[[Injector], None]:
    """One run of the lock (``kind`` "lock") or single-flight scenario ``name`` over ``manager``."""
    if kind == "lock":
        return run_manager_lock_scenario(name, manager)
    return run_manager_flight_scenario(name, manager)
