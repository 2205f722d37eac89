"""The single-flight suite, run against RedisSingleFlight on a real server.

Every test of ``tests/singleflight`` that takes the ``sf`` fixture runs here with a
RedisSingleFlight (threads, asyncio and trio), except where the cluster scope's documented
semantics differ; those are skipped below, saying why:

- keys are str, bytes or int only (tuples are refused);
- joining a call is a round trip to the server, so a leader's task yields before its
  function starts;
- the followers of a forgotten call whose leader gives up join the key's current call in
  Redis (the new one), rather than running the forgotten call again.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from keyedlock._scopes._redis import renewer
from keyedlock.redis import RedisSingleFlight

from ..singleflight import (
    test_flight_cancel,
    test_flight_coalesce,
    test_flight_cross_runtime,
    test_flight_forget,
    test_flight_sharing,
    test_flight_token_refresh,
    test_flight_ttl,
    test_flight_validation,
)
from ..support import WAIT
from .servers import Server

# The suite's tests (and its one module fixture, ``callers``), collected here too; each test
# keeps its own module's names.
for _suite in (
    test_flight_cancel,
    test_flight_coalesce,
    test_flight_cross_runtime,
    test_flight_forget,
    test_flight_sharing,
    test_flight_token_refresh,
    test_flight_ttl,
    test_flight_validation,
):
    globals().update({n: f for n, f in vars(_suite).items() if n.startswith("test_")})
callers = test_flight_cross_runtime.callers


@pytest.fixture
def sf(redis_server: Server, redis_client: redis.Redis) -> Iterator[RedisSingleFlight]:
    """The group every single-flight test takes: idle here and on the server at the end."""
    group = RedisSingleFlight(redis_server.url, lease=2.0)
    yield group
    assert len(group) == 0, f"calls left in flight: {group!r}"
    assert renewer.settle(WAIT)
    assert redis_client.keys("*:flight:lead") == []


TUPLE_KEYS = "keys are str, bytes or int"
YIELDS = "joining is a round trip to the server: the leader's task yields first"
CURRENT_CALL = "a forgotten call's followers join the current call when its leader gives up"


@pytest.mark.skip(reason=TUPLE_KEYS)
def test_coalesce_with_a_key_function() -> None:
    """Replaced: see the module docstring."""


@pytest.mark.skip(reason=TUPLE_KEYS)
def test_forget_of_an_idle_key_does_nothing() -> None:
    """Replaced: see the module docstring."""


@pytest.mark.skip(reason=TUPLE_KEYS)
def test_fifty_callers_refresh_once() -> None:
    """Replaced: see the module docstring."""


@pytest.mark.skip(reason=TUPLE_KEYS)
def test_fifty_callers_wait_on_one_refresh() -> None:
    """Replaced: see the module docstring."""


@pytest.mark.skip(reason=TUPLE_KEYS)
def test_fifty_threads_refresh_once() -> None:
    """Replaced: see the module docstring."""


@pytest.mark.skip(reason=YIELDS)
def test_a_leader_cancelled_at_its_first_checkpoint_leaves_no_trace() -> None:
    """Replaced: see the module docstring."""


@pytest.mark.skip(reason=CURRENT_CALL)
def test_a_forgotten_call_hands_over_within_its_own_callers() -> None:
    """Replaced: see the module docstring."""
