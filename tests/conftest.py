"""Fixtures shared by the whole suite.

- ``anyio_backend``: every ``@pytest.mark.anyio`` test runs under asyncio and under trio.
- ``records``: the records the ``keyedlock`` logger gets during the test (``Records``).
- ``lock``: a fresh :class:`~keyedlock.KeyedLock`; the test fails if it ends with a key left
  behind (``len(lock) != 0``).
- ``threads``: starts threads whose exceptions are re-raised on join (bounded joins).
- ``asyncio_thread`` / ``trio_thread``: an asyncio loop / a trio run in a thread of its own.
- ``driver`` (thread, asyncio, trio), ``task_driver`` (asyncio, trio) and ``drivers`` (one of
  each): runtime drivers that run the same test body over every runtime (see ``drivers.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from keyedlock import KeyedLock

from .conformance.scopes import _scopes_cleanup
from .drivers import RUNTIMES, Driver, make_driver
from .support import AsyncioThread, Records, Threads, TrioThread

__all__ = ["_scopes_cleanup"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run every anyio test under both asyncio and trio."""
    backend: str = request.param
    return backend


@pytest.fixture
def lock() -> Iterator[KeyedLock]:
    """A fresh lock that must hold no key once the test is over."""
    fresh = KeyedLock()
    yield fresh
    assert len(fresh) == 0, f"keys left behind: {fresh!r}"


@pytest.fixture
def threads() -> Iterator[Threads]:
    runner = Threads()
    yield runner
    runner.join_all()


@pytest.fixture
def asyncio_thread() -> Iterator[AsyncioThread]:
    runtime = AsyncioThread()
    yield runtime
    runtime.close()


@pytest.fixture
def trio_thread() -> Iterator[TrioThread]:
    runtime = TrioThread()
    yield runtime
    runtime.close()


@pytest.fixture(params=RUNTIMES)
def driver(request: pytest.FixtureRequest, lock: KeyedLock) -> Iterator[Driver]:
    """Agents in threads, asyncio tasks or trio tasks (closed before ``lock`` is checked)."""
    runtime = make_driver(request.param)
    yield runtime
    runtime.close()


@pytest.fixture(params=["asyncio", "trio"])
def task_driver(request: pytest.FixtureRequest, lock: KeyedLock) -> Iterator[Driver]:
    """Agents in asyncio or trio tasks: the runtimes whose callers can be cancelled."""
    runtime = make_driver(request.param)
    yield runtime
    runtime.close()


@pytest.fixture
def drivers(lock: KeyedLock) -> Iterator[dict[str, Driver]]:
    """One driver of each runtime, used together."""
    made = {name: make_driver(name) for name in RUNTIMES}
    yield made
    for runtime in made.values():
        runtime.close()


@pytest.fixture
def records() -> Iterator[Records]:
    """The records of the ``keyedlock`` logger, in this process, during the test."""
    handler = Records()
    logger = logging.getLogger("keyedlock")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
