"""Fixtures of the single-flight tests.

- ``sf``: a fresh :class:`~keyedlock.SingleFlight`; the test fails if a call is still in flight
  when it ends (``len(sf) != 0``) or, without ``ttl``, if any value was kept.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from keyedlock import SingleFlight

from ..support import table_of


@pytest.fixture
def sf() -> Iterator[SingleFlight]:
    """A fresh single-flight group that must be idle once the test is over."""
    group = SingleFlight()
    yield group
    assert len(group) == 0, f"calls left in flight: {group!r}"
    assert not table_of(group).results, "a value was kept without ttl"
