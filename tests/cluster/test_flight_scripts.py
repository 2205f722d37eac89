"""Single-flight's Lua scripts against a real server: standalone, and a cluster.

One leader per key computes; followers block on their wake lists and get the leader's
outcome; a crashed leader's lease runs out and a follower takes over with a larger token; a
leader that gives up tells its followers to ask again; ``forget`` detaches a call, which still
serves its own followers.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from keyedlock._scopes._redis import (
    Done,
    FlightKeys,
    Following,
    Granted,
    flight_abandon,
    flight_finish,
    flight_forget,
    flight_inspect,
    flight_join,
    flight_keys,
    flight_refresh,
    flight_renew,
    parse_flight_inspect,
    parse_flight_join,
    parse_flight_wake,
)

from ..support import WAIT, wait_until
from .script_support import AnyClient, run, server_ms, wait_server_ms

PREFIX = "kl:"
LONG = int(WAIT * 1000)
SHORT = 30


@pytest.fixture
def keys() -> FlightKeys:
    return flight_keys(PREFIX, b"key")


def join(
    client: AnyClient, keys: FlightKeys, member: str, *, lease_ms: int = LONG, previous: str = ""
) -> Granted | Following | Done:
    call = flight_join(keys, member, lease_ms=lease_ms, place_ms=LONG, previous=previous)
    return parse_flight_join(run(client, call))


def leads(
    client: AnyClient, keys: FlightKeys, member: str, *, lease_ms: int = LONG, previous: str = ""
) -> int:
    reply = join(client, keys, member, lease_ms=lease_ms, previous=previous)
    assert isinstance(reply, Granted), f"{member} does not lead: {reply}"
    return reply.token


def follows(client: AnyClient, keys: FlightKeys, member: str) -> Following:
    reply = join(client, keys, member)
    assert isinstance(reply, Following), f"{member} does not follow: {reply}"
    return reply


def finish(client: AnyClient, keys: FlightKeys, leader: str, outcome: bytes, keep: int = 0) -> int:
    reply: Any = run(client, flight_finish(keys, leader, outcome, keep_ms=keep, place_ms=LONG))
    return int(reply)


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
        if not isinstance(reply, Following):
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
    b = follows(any_client, keys, "b")
    assert 0 < b.wait_ms <= LONG
    assert b.lead == "a"
    assert follows(any_client, keys, "c").lead == "a"
    assert sorted(any_client.zrange(keys.followers("a"), 0, -1)) == [b"b", b"c"]
    assert leads(any_client, keys, "a") > 0  # the leader asking again still leads
    assert parse_flight_inspect(run(any_client, flight_inspect(keys))) == (True, 2, "a")


def test_finish_wakes_every_follower_and_keeps_nothing_by_default(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    follows(any_client, keys, "c")
    assert finish(any_client, keys, "a", b"\x00result") == 2
    assert woken(any_client, keys, "b") == b"\x00result"
    assert woken(any_client, keys, "c") == b"\x00result"
    assert not any_client.exists(keys.lead, keys.outcome, keys.followers("a"))
    assert isinstance(join(any_client, keys, "late"), Granted)  # a new call


def test_finish_keeps_the_outcome_for_its_ttl(any_client: AnyClient, keys: FlightKeys) -> None:
    leads(any_client, keys, "a")
    assert finish(any_client, keys, "a", b"kept", keep=LONG) == 0
    assert join(any_client, keys, "late") == Done(b"kept")
    assert 0 < any_client.pttl(keys.outcome) <= LONG


def test_a_follower_between_two_waits_still_gets_the_outcome(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    finish(any_client, keys, "a", b"value")
    # b's pop timed out just before: it asks again, and finds the outcome pushed to it.
    assert join(any_client, keys, "b") == Done(b"value")
    assert not any_client.exists(keys.wake("b"))


def test_a_blocked_follower_gets_the_outcome(any_client: AnyClient, keys: FlightKeys) -> None:
    leads(any_client, keys, "a")
    outcome: list[tuple[Done | Granted, bool]] = []
    follower = threading.Thread(
        target=lambda: outcome.append(follow_blocking(any_client, keys, "b")), name="follower"
    )
    follower.start()
    try:
        wait_until(lambda: any_client.zscore(keys.followers("a"), "b") is not None, "b follows")
        assert finish(any_client, keys, "a", b"value") == 1
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
    follows(any_client, keys, "c")
    # The crashed leader comes back: it can neither renew nor end b's call nor keep its value.
    assert run(any_client, flight_renew(keys, "a", lease_ms=LONG)) == 0
    finish(any_client, keys, "a", b"stale", keep=LONG)  # (reaches its own followers only)
    assert not any_client.exists(keys.outcome)
    assert any_client.get(keys.lead) == b"b"
    assert finish(any_client, keys, "b", b"fresh") == 1
    assert woken(any_client, keys, "c") == b"fresh"


def test_abandon_tells_the_followers_to_ask_again(any_client: AnyClient, keys: FlightKeys) -> None:
    first = leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    follows(any_client, keys, "c")
    assert run(any_client, flight_abandon(keys, "b", place_ms=LONG)) == 0  # b leads nothing
    assert any_client.get(keys.lead) == b"a"
    assert run(any_client, flight_abandon(keys, "a", place_ms=LONG)) == 2
    assert woken(any_client, keys, "b") is None
    assert woken(any_client, keys, "c") is None
    assert leads(any_client, keys, "b", previous="a") > first
    # b took the call over: c follows it before it even asks again.
    assert sorted(any_client.zrange(keys.followers("b"), 0, -1)) == [b"c"]
    assert finish(any_client, keys, "b", b"value") == 1
    assert join(any_client, keys, "c") == Done(b"value")


def test_the_first_follower_to_ask_again_takes_over_a_crashed_leaders_call(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a", lease_ms=SHORT)
    follows(any_client, keys, "b")
    follows(any_client, keys, "c")
    wait_server_ms(any_client, keys.lead, SHORT)  # a crashed: its lease runs out
    leads(any_client, keys, "c", previous="a")
    assert finish(any_client, keys, "c", b"once") == 1  # before b even asked again
    assert join(any_client, keys, "b", previous="a") == Done(b"once")


def test_asking_again_finds_the_outcome_behind_an_ask_again(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    run(any_client, flight_abandon(keys, "a", place_ms=LONG))
    leads(any_client, keys, "c")
    follows(any_client, keys, "b")
    finish(any_client, keys, "c", b"value")
    any_client.rpush(keys.wake("b"), "!")  # an older "ask again" behind the outcome
    assert join(any_client, keys, "b") == Done(b"value")


def test_renew_extends_only_the_leaders_lease(any_client: AnyClient, keys: FlightKeys) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    assert run(any_client, flight_renew(keys, "a", lease_ms=2 * LONG)) == 1
    assert any_client.pttl(keys.lead) > LONG
    assert run(any_client, flight_renew(keys, "b", lease_ms=LONG)) == 0


def test_refresh_keeps_a_followers_place(any_client: AnyClient, keys: FlightKeys) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    call = flight_refresh(keys, "b", "a", place_ms=2 * LONG)
    assert run(any_client, call) == 1
    place = any_client.zscore(keys.followers("a"), "b")
    assert place is not None
    assert place > server_ms(any_client, keys.lead) + LONG
    assert run(any_client, flight_refresh(keys, "x", "a", place_ms=LONG)) == 0


def test_an_expired_place_gets_no_outcome(any_client: AnyClient, keys: FlightKeys) -> None:
    leads(any_client, keys, "a")
    run(any_client, flight_join(keys, "gone", lease_ms=LONG, place_ms=SHORT))
    follows(any_client, keys, "b")
    wait_server_ms(any_client, keys.lead, SHORT)
    assert finish(any_client, keys, "a", b"value") == 1
    assert not any_client.exists(keys.wake("gone"))


def test_forget_detaches_the_call_which_still_serves_its_followers(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    assert run(any_client, flight_forget(keys)) == 1
    assert leads(any_client, keys, "c") > 0  # a new call
    follows(any_client, keys, "d")
    assert finish(any_client, keys, "a", b"old", keep=LONG) == 1
    assert woken(any_client, keys, "b") == b"old"
    assert any_client.get(keys.lead) == b"c"  # the new call goes on, and nothing was kept
    assert not any_client.exists(keys.outcome)
    assert finish(any_client, keys, "c", b"new") == 1
    assert woken(any_client, keys, "d") == b"new"


def test_a_follower_of_a_detached_call_keeps_following_it_while_its_leader_lives(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    """Its wait ran out (bounded by the lease) while the detached call still ran: asking again,
    it follows that call, neither the new one nor a takeover of its own."""
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    run(any_client, flight_forget(keys))
    leads(any_client, keys, "c")  # the new call
    assert run(any_client, flight_renew(keys, "a", lease_ms=2 * LONG)) == 1  # a still runs
    again = join(any_client, keys, "b", previous="a")
    assert isinstance(again, Following)
    assert again.lead == "a"
    assert LONG < again.wait_ms <= 2 * LONG  # the detached call's renewed lease
    assert not any_client.zscore(keys.followers("c"), "b")
    assert finish(any_client, keys, "a", b"old") == 1
    assert woken(any_client, keys, "b") == b"old"
    assert any_client.get(keys.lead) == b"c"
    assert not any_client.exists(keys.base + b"detached:a")


def test_a_follower_of_a_detached_call_does_not_take_the_new_calls_kept_outcome(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    run(any_client, flight_forget(keys))
    leads(any_client, keys, "c")
    assert finish(any_client, keys, "c", b"new", keep=LONG) == 0  # kept for later callers
    again = join(any_client, keys, "b", previous="a")
    assert isinstance(again, Following)
    assert again.lead == "a"
    assert finish(any_client, keys, "a", b"old") == 1
    assert woken(any_client, keys, "b") == b"old"


def test_a_follower_of_a_detached_call_whose_leader_crashed_asks_anew(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a", lease_ms=SHORT)
    follows(any_client, keys, "b")
    run(any_client, flight_forget(keys))
    leads(any_client, keys, "c")
    wait_server_ms(any_client, keys.base + b"detached:a", SHORT)  # a crashed
    again = join(any_client, keys, "b", previous="a")  # (its wait ran out: it asks again)
    assert isinstance(again, Following)
    assert again.lead == "c"


def test_a_follower_that_gives_up_leaves_the_call_at_once(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    follows(any_client, keys, "c")
    any_client.rpush(keys.wake("b"), "!")
    assert run(any_client, flight_abandon(keys, "b", place_ms=LONG, lead="a")) == 0
    assert parse_flight_inspect(run(any_client, flight_inspect(keys))) == (True, 1, "a")
    assert not any_client.exists(keys.wake("b"))
    assert finish(any_client, keys, "a", b"value") == 1


def test_a_follower_that_took_over_as_it_gave_up_hands_the_call_on(
    any_client: AnyClient, keys: FlightKeys
) -> None:
    """Its last join made it the leader, but it gave up before it heard: its followers ask
    again."""
    leads(any_client, keys, "a")
    follows(any_client, keys, "b")
    follows(any_client, keys, "c")
    run(any_client, flight_abandon(keys, "a", place_ms=LONG))
    woken(any_client, keys, "b")
    leads(any_client, keys, "b", previous="a")  # (the reply that b never heard)
    assert run(any_client, flight_abandon(keys, "b", place_ms=LONG, lead="a")) == 1
    assert not any_client.exists(keys.lead)
    assert woken(any_client, keys, "c") is None  # (a's ask-again)
    assert woken(any_client, keys, "c") is None  # b's: c takes the call over
    assert leads(any_client, keys, "c", previous="b") > 0


def test_an_expired_outcome_starts_a_new_flight(any_client: AnyClient, keys: FlightKeys) -> None:
    first = leads(any_client, keys, "a")
    assert finish(any_client, keys, "a", b"old", keep=SHORT) == 0
    wait_server_ms(any_client, keys.outcome, SHORT)
    assert leads(any_client, keys, "b") > first
