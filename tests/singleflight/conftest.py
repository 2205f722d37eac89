"""Fixtures of the single-flight tests: every test taking ``sf`` or ``make_flight`` runs once per
scope of :data:`~tests.conformance.scopes.FLIGHT_SCOPES`.

- ``flight_scope``: the scope under test;
- ``make_flight(**options)``: a new group of that scope, e.g. ``make_flight(ttl=5)``; the test
  fails if a call is still in flight in any group it made when it ends (``len(group) != 0``);
- ``sf``: one such group; in the process scope, the test also fails if it ends with a value
  kept without ``ttl``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from keyedlock import SingleFlight

from ..conformance.scopes import FLIGHT_SCOPES, Scope
from ..support import table_of


@pytest.fixture(params=FLIGHT_SCOPES, ids=lambda scope: scope.name)
def flight_scope(request: pytest.FixtureRequest) -> Scope:
    chosen: Scope = request.param
    return chosen


@pytest.fixture
def make_flight(flight_scope: Scope) -> Iterator[Callable[..., SingleFlight]]:
    made: list[SingleFlight] = []

    def make(**options: Any) -> SingleFlight:
        group: SingleFlight = flight_scope.make(**options)
        made.append(group)
        return group

    yield make
    for group in made:
        assert len(group) == 0, f"calls left in flight: {group!r}"


@pytest.fixture
def sf(flight_scope: Scope, make_flight: Callable[..., SingleFlight]) -> Iterator[SingleFlight]:
    """A fresh single-flight group that must be idle once the test is over."""
    group = make_flight()
    yield group
    if not flight_scope.remote:
        assert not table_of(group).results, "a value was kept without ttl"
