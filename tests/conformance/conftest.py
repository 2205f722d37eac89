"""The conformance suite runs every contract test over every scope (see ``scopes.py``).

- ``scope``: the scope under test (one of :data:`~.scopes.LOCK_SCOPES`);
- ``make_lock(**options)``: a new lock of that scope; every lock made must end the test with
  no key held or waited for;
- ``lock``: one such lock (the ``driver`` fixtures use it too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyedlock import KeyedLock

from .scopes import LOCK_SCOPES, Scope

__all__ = ["lock", "make_lock", "scope"]


@pytest.fixture(params=LOCK_SCOPES, ids=lambda scope: scope.name)
def scope(request: pytest.FixtureRequest) -> Scope:
    chosen: Scope = request.param
    return chosen


@pytest.fixture
def make_lock(scope: Scope) -> Iterator[Callable[..., KeyedLock]]:
    made: list[KeyedLock] = []

    def make(**options: Any) -> KeyedLock:
        lock: KeyedLock = scope.make(**options)
        made.append(lock)
        return lock

    yield make
    for lock in made:
        assert len(lock) == 0, f"keys left behind: {lock!r}"


@pytest.fixture
def lock(make_lock: Callable[..., KeyedLock]) -> KeyedLock:
    return make_lock()
