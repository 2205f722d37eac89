"""The single-flight sketch's Lua scripts against a real server: standalone, and a cluster.

One leader per key computes; followers block on their wake lists and get the leader's
outcome; a crashed leader's lease runs out and a follower takes over with a larger token.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from keyedlock._scopes._redis._scripts import (
    Done,
    FlightKeys,
    Granted,
    Waiting,
    flight_abandon,
    flight_finish,
    flight_join,
    flight_keys,
    flight_renew,
    parse_flight_join,
    parse_flight_wake,
)

from ..support import WAIT, wait_until
from .script_support import AnyClient, run, wait_server_ms

PREFIX = "kl:"
LONG = int(WAIT * 1000)
SHORT = 30


@pytest.fixture
def keys() -> FlightKeys:
    return flight_keys(PREFIX, b"key")


def join(
    client: AnyClient, keys: FlightKeys, member: str, *, lease_ms: int = LONG
) -> Granted | Waiting | Done:
    call = flight_join(keys, member, lease_ms=lease_ms, place_ms=LONG)
    return parse_flight_join(run(client, call))


def leads(client: AnyClient, keys: FlightKeys, member: str, *, lease_ms: int = LONG) -> int:
    reply = join(client, keys, member, lease_ms=lease_ms)
    assert isinstance(reply, Granted), f"{member} does not lead: {reply}"
    return reply.token


def follows(client: AnyClient, keys: FlightKeys, member: str) -> int:
    reply = join(client, keys, member)
    assert isinstance(reply, Waiting), f"{member} does not follow: {reply}"
    return reply.wait_ms


def woken(client: AnyClient, keys: FlightKeys, member: str) -> bytes | None:
    message: Any = client.lpop(keys.wake(member))
    assert message is not None, f"{member} was not woken"
    done = parse_flight_wake(message)
    return None if done is None else done.outcome


def follow_blocking(
    client: AnyClient, keys: FlightKeys, member: str
) -> tuple[Done | Granted, bool]:
    """A follower's loop: block for the leader's lease, join again.

    Returns the outcome or the lead, and whether a wake-up brought it (else a join did).
    """
    deadline = time.monotonic() + WAIT / 2
    while True:
        reply = join(client, keys, member)
        if not isinstance(reply, Waiting):
            return reply, False
        left = deadline - time.monotonic()
        assert left > 0, f"{member} got no outcome within the bound"
        popped: Any = client.blpop([keys.wake(member)], max(0.001, min(reply.wait_ms / 1000, left)))
        if popped is not None:
            done = parse_flight_wake(popped[1])
            if done is not None:
                return done, True


def test_the_first_joiner_leads_and_the_others_follow(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a")
    assert 0 < follows(any_client, keys, "b") <= LONG
    assert 0 < follows(any_client, keys, "c") <= LONG
    assert sorted(any_client.zrange(keys.followers, 0, -1)) == [b"b", b"c"]
    assert leads(any_client, keys, "a") > 0  # the leader asking again still leads


def test_finish_stores_the_outcome_and_wakes_every_follower(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    follows(any_client, keys, "c")
    assert run(any_client, flight_finish(keys, "a", b"\x00result", keep_ms=LONG)) == 1
    assert woken(any_client, keys, "b") == b"\x00result"
    assert woken(any_client, keys, "c") == b"\x00result"
    assert join(any_client, keys, "late") == Done(b"\x00result")
    assert not any_client.exists(keys.lead, keys.followers)


def test_a_blocked_follower_gets_the_outcome(any_client: AnyClient, keys: FlightKeys) -> None:
    leads(any_client, keys, "a")
    outcome: list[tuple[Done | Granted, bool]] = []
    follower = threading.Thread(
        target=lambda: outcome.append(follow_blocking(any_client, keys, "b")), name="follower"
    )
    follower.start()
    try:
        wait_until(lambda: any_client.zscore(keys.followers, "b") is not None, "b follows")
        assert run(any_client, flight_finish(keys, "a", b"value", keep_ms=LONG)) == 1
    finally:
        follower.join(WAIT)
    assert outcome == [(Done(b"value"), True)]  # woken, not found by asking again


def test_a_follower_takes_over_when_the_leader_crashes(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    first = leads(any_client, keys, "a", lease_ms=SHORT)
    taken, _ = follow_blocking(any_client, keys, "b")  # a never finishes: its lease runs out
    assert isinstance(taken, Granted)
    assert taken.token > first
    # The crashed leader comes back: it can neither renew nor publish an outcome.
    assert run(any_client, flight_renew(keys, "a", lease_ms=LONG)) == 0
    assert run(any_client, flight_finish(keys, "a", b"stale", keep_ms=LONG)) == 0
    assert not any_client.exists(keys.outcome)
    assert run(any_client, flight_finish(keys, "b", b"fresh", keep_ms=LONG)) == 1
    assert join(any_client, keys, "c") == Done(b"fresh")


def test_abandon_tells_the_followers_to_ask_again(any_client: AnyClient, keys: FlightKeys) -> None:
    first = leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    follows(any_client, keys, "c")
    assert run(any_client, flight_abandon(keys, "b", keep_ms=LONG)) == 0  # not the leader
    assert run(any_client, flight_abandon(keys, "a", keep_ms=LONG)) == 1
    assert woken(any_client, keys, "b") is None
    assert woken(any_client, keys, "c") is None
    assert leads(any_client, keys, "b") > first
    follows(any_client, keys, "c")


def test_renew_extends_only_the_leaders_lease(any_client: AnyClient, keys: FlightKeys) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    assert run(any_client, flight_renew(keys, "a", lease_ms=2 * LONG)) == 1
    assert any_client.pttl(keys.lead) > LONG
    assert run(any_client, flight_renew(keys, "b", lease_ms=LONG)) == 0


def test_an_expired_outcome_starts_a_new_flight(any_client: AnyClient, keys: FlightKeys) -> None:
    first = leads(any_client, keys, "a")
    assert run(any_client, flight_finish(keys, "a", b"old", keep_ms=SHORT)) == 1
    wait_server_ms(any_client, keys.outcome, SHORT)
    assert leads(any_client, keys, "b") > first
