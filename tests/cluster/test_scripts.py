"""The lock's Lua scripts against a real server: standalone, and a 3-primary cluster.

Each test drives the scripts as several clients would (waiter ids ``a``, ``b``, ...) and reads
the server's structures directly. Leases that must run out are tens of milliseconds, and the
tests wait for them on a server-side condition (bounded), never for a set time.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from keyedlock._scopes._redis import (
    TOKEN_KEEP_MS,
    Granted,
    Inspected,
    LockKeys,
    Refreshed,
    Waiting,
    acquire,
    inspect,
    lock_keys,
    parse_acquire,
    parse_inspect,
    parse_refresh,
    parse_wake,
    refresh,
    release,
    renew,
    report,
    withdraw,
)

from ..support import WAIT, wait_until
from .script_support import (
    AnyClient,
    acquire_blocking,
    run,
    run_many,
    server_ms,
    wait_server_ms,
)
from .servers import Cluster, Server

PREFIX = "kl:"
#: Long enough never to run out during a test (ms).
LONG = int(WAIT * 1000)
#: Renewals extend to this (ms): more than LONG, whenever they happen.
LONGER = 2 * LONG
#: Short enough to run out within a test (ms).
SHORT = 30


@pytest.fixture
def keys() -> LockKeys:
    return lock_keys(PREFIX, b"key")


def ask(
    client: AnyClient, keys: LockKeys, waiter: str, *, lease_ms: int = LONG, place_ms: int = LONG
) -> Granted | Waiting:
    return parse_acquire(run(client, acquire(keys, waiter, lease_ms=lease_ms, place_ms=place_ms)))


def granted(client: AnyClient, keys: LockKeys, waiter: str, *, lease_ms: int = LONG) -> int:
    reply = ask(client, keys, waiter, lease_ms=lease_ms)
    assert isinstance(reply, Granted), f"{waiter} was not granted: {reply}"
    return reply.token


def waiting(client: AnyClient, keys: LockKeys, waiter: str, *, place_ms: int = LONG) -> int:
    reply = ask(client, keys, waiter, place_ms=place_ms)
    assert isinstance(reply, Waiting), f"{waiter} did not wait: {reply}"
    return reply.wait_ms


def owner(client: AnyClient, keys: LockKeys) -> str | None:
    value: Any = client.get(keys.owner)
    return None if value is None else bytes(value).decode()


def queue(client: AnyClient, keys: LockKeys) -> list[str]:
    entries: Any = client.lrange(keys.queue, 0, -1)
    return [bytes(entry).decode() for entry in entries]


def woken_with(client: AnyClient, keys: LockKeys, waiter: str) -> int | None:
    """The token on ``waiter``'s wake list (taken off it), or ``None``."""
    message: Any = client.lpop(keys.wake(waiter))
    return None if message is None else parse_wake(message).token


def lease_lost(client: AnyClient, keys: LockKeys) -> None:
    """Wait (bounded) until the owner's lease has run out."""
    wait_server_ms(client, keys.owner, SHORT)
    assert not client.exists(keys.owner)


# --- grant, queue, hand-off ------------------------------------------------------------------


def test_a_free_key_is_granted_and_the_next_callers_queue_in_arrival_order(
    any_client: AnyClient, keys: LockKeys
) -> None:
    granted(any_client, keys, "a")
    assert owner(any_client, keys) == "a"
    for name in "bcd":
        assert 0 < waiting(any_client, keys, name) <= LONG
    assert queue(any_client, keys) == ["b", "c", "d"]


def test_asking_again_keeps_the_place(any_client: AnyClient, keys: LockKeys) -> None:
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    waiting(any_client, keys, "c")
    waiting(any_client, keys, "b")
    waiting(any_client, keys, "c")
    assert queue(any_client, keys) == ["b", "c"]


def test_release_hands_the_key_on_in_arrival_order_with_increasing_tokens(
    any_client: AnyClient, keys: LockKeys
) -> None:
    tokens = [granted(any_client, keys, "a")]
    for name in "bcd":
        waiting(any_client, keys, name)
    holder = "a"
    for name in "bcd":
        assert run(any_client, release(keys, holder)) == 1
        assert owner(any_client, keys) == name
        token = woken_with(any_client, keys, name)
        assert token is not None
        tokens.append(token)
        holder = name
    assert run(any_client, release(keys, holder)) == 1
    assert owner(any_client, keys) is None
    assert tokens == sorted(set(tokens)), tokens
    # Nothing is left of the queue once it is empty.
    assert not any_client.exists(keys.queue, keys.places, keys.leases)


def test_a_waiter_handed_the_key_that_asks_again_gets_its_token(
    any_client: AnyClient, keys: LockKeys
) -> None:
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    run(any_client, release(keys, "a"))
    handed = any_client.lrange(keys.wake("b"), 0, -1)
    assert len(handed) == 1
    assert granted(any_client, keys, "b") == parse_wake(handed[0]).token
    assert not any_client.exists(keys.wake("b"))  # the wake-up is spent


def test_release_by_a_non_owner_is_refused(any_client: AnyClient, keys: LockKeys) -> None:
    assert run(any_client, release(keys, "x")) == 0  # a free key
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    assert run(any_client, release(keys, "b")) == 0
    assert run(any_client, release(keys, "x")) == 0
    assert owner(any_client, keys) == "a"
    assert queue(any_client, keys) == ["b"]


def test_fifo_hand_off_between_blocking_clients(any_client: AnyClient, keys: LockKeys) -> None:
    """Clients in threads wait on their wake lists; each is granted in arrival order."""
    granted(any_client, keys, "main")
    names = ["w1", "w2", "w3", "w4"]
    order: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def client_main(name: str, placed: threading.Event) -> None:
        try:
            token = acquire_blocking(
                any_client,
                keys,
                name,
                lease_ms=LONG,
                place_ms=LONG,
                on_wait=lambda _: placed.set(),
            )
            assert owner(any_client, keys) == name  # never two holders at once
            order.append((name, token))
            assert run(any_client, release(keys, name)) == 1
        except BaseException as exc:
            errors.append(exc)
            placed.set()

    threads = []
    for name in names:  # one at a time: each takes its place before the next one starts
        placed = threading.Event()
        thread = threading.Thread(target=client_main, args=(name, placed), name=name)
        thread.start()
        threads.append(thread)
        assert placed.wait(WAIT)
    assert queue(any_client, keys) == names
    assert run(any_client, release(keys, "main")) == 1
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
    assert not errors, errors
    assert [name for name, _ in order] == names
    tokens = [token for _, token in order]
    assert tokens == sorted(set(tokens))
    assert owner(any_client, keys) is None


# --- leases ----------------------------------------------------------------------------------


def test_an_expired_holder_lets_the_head_waiter_in(any_client: AnyClient, keys: LockKeys) -> None:
    first = granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    assert run(any_client, renew(keys, "a", lease_ms=SHORT)) == 1  # then a crashes
    waited: list[int] = []
    token = acquire_blocking(
        any_client,
        keys,
        "b",
        lease_ms=LONG,
        place_ms=LONG,
        on_wait=lambda reply: waited.append(reply.wait_ms),
    )
    assert all(wait_ms <= SHORT for wait_ms in waited)  # the holder's lease, not longer
    assert token > first
    assert owner(any_client, keys) == "b"
    # The crashed holder comes back: its lease is lost, the new holder's grant untouched.
    assert run(any_client, renew(keys, "a", lease_ms=LONG)) == 0
    assert run(any_client, release(keys, "a")) == 0
    assert owner(any_client, keys) == "b"


def test_a_free_key_goes_to_the_head_waiter_not_to_a_newcomer(
    any_client: AnyClient, keys: LockKeys
) -> None:
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    assert run(any_client, renew(keys, "a", lease_ms=SHORT)) == 1  # then a crashes
    lease_lost(any_client, keys)
    waiting(any_client, keys, "c")  # the key is free, but b is first in line
    assert owner(any_client, keys) == "b"
    assert woken_with(any_client, keys, "b") is not None
    assert queue(any_client, keys) == ["c"]


def test_expired_waiter_places_are_skipped(any_client: AnyClient, keys: LockKeys) -> None:
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b", place_ms=SHORT)  # b and d crash: they never ask again
    waiting(any_client, keys, "c")
    waiting(any_client, keys, "d", place_ms=SHORT)
    waiting(any_client, keys, "e")
    wait_server_ms(any_client, keys.owner, SHORT)
    assert run(any_client, release(keys, "a")) == 1
    assert owner(any_client, keys) == "c"
    assert queue(any_client, keys) == ["e"]
    for gone in "bd":
        assert any_client.zscore(keys.places, gone) is None
        assert not any_client.hexists(keys.leases, gone)
    assert run(any_client, release(keys, "c")) == 1
    assert owner(any_client, keys) == "e"


def test_renew_extends_only_the_owners_lease(any_client: AnyClient, keys: LockKeys) -> None:
    granted(any_client, keys, "a")
    assert run(any_client, renew(keys, "a", lease_ms=LONGER)) == 1
    assert any_client.pttl(keys.owner) > LONG
    assert any_client.pttl(keys.token) >= TOKEN_KEEP_MS - LONG
    assert run(any_client, renew(keys, "b", lease_ms=LONG)) == 0


def test_renew_fails_once_the_lease_ran_out(any_client: AnyClient, keys: LockKeys) -> None:
    granted(any_client, keys, "a", lease_ms=SHORT)
    lease_lost(any_client, keys)
    assert run(any_client, renew(keys, "a", lease_ms=LONG)) == 0
    assert not any_client.exists(keys.owner)


def test_refresh_tells_held_waiting_or_lost(any_client: AnyClient, keys: LockKeys) -> None:
    def state(waiter: str) -> Refreshed:
        call = refresh(keys, waiter, lease_ms=LONG, place_ms=LONGER)
        return parse_refresh(run(any_client, call))

    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    before = any_client.zscore(keys.places, "b")
    assert state("b") is Refreshed.WAITING
    after = any_client.zscore(keys.places, "b")
    assert before is not None
    assert after is not None
    assert after > before
    assert state("a") is Refreshed.HELD
    assert state("x") is Refreshed.LOST
    assert queue(any_client, keys) == ["b"]  # refresh takes no place
    run(any_client, release(keys, "a"))
    assert state("b") is Refreshed.HELD  # handed the key, its wake-up not yet taken
    run(any_client, release(keys, "b"))
    assert state("b") is Refreshed.LOST


def test_renewing_many_keys_in_one_pipeline(any_client: AnyClient) -> None:
    held = [lock_keys(PREFIX, f"held-{n}".encode()) for n in range(6)]
    queued = [lock_keys(PREFIX, f"queued-{n}".encode()) for n in range(6)]
    for keys in held:
        granted(any_client, keys, "p")
    for keys in queued:
        granted(any_client, keys, "other")
        waiting(any_client, keys, "p")
    slots = {key_slot(keys.owner) for keys in held + queued}
    assert len(slots) > 1
    calls = [renew(keys, "p", lease_ms=LONGER) for keys in held]
    calls += [refresh(keys, "p", lease_ms=LONGER, place_ms=LONGER) for keys in queued]
    calls.append(renew(lock_keys(PREFIX, b"never-held"), "p", lease_ms=LONG))
    replies = run_many(any_client, calls)
    assert replies == [1] * len(held) + [Refreshed.WAITING] * len(queued) + [0]
    for keys in held:
        assert any_client.pttl(keys.owner) > LONG
    for keys in queued:
        place = any_client.zscore(keys.places, "p")
        assert place is not None
        assert place > server_ms(any_client, keys.places) + LONG


# --- callers behind, in their processes ------------------------------------------------------


def look(client: AnyClient, keys: LockKeys, *leaving: str, waiter: str | None = None) -> Inspected:
    return parse_inspect(run(client, inspect(keys, leaving, waiter=waiter, behind=0)))


def behind(client: AnyClient, keys: LockKeys, waiter: str, count: int) -> int:
    reply: Any = run(client, report(keys, waiter, behind=count, keep_ms=LONG))
    return int(reply)


def test_callers_behind_count_while_their_waiter_holds_or_waits(
    any_client: AnyClient, keys: LockKeys
) -> None:
    assert look(any_client, keys) == Inspected(False, 0, None, 0)
    call = acquire(keys, "a", lease_ms=LONG, place_ms=LONG, behind=2)
    assert isinstance(parse_acquire(run(any_client, call)), Granted)  # a, and 2 behind it
    waiting(any_client, keys, "b")
    waiting(any_client, keys, "c")
    assert behind(any_client, keys, "b", 3) == 1
    assert behind(any_client, keys, "x", 5) == 0  # neither holds nor waits: not counted
    assert look(any_client, keys) == Inspected(True, 2, "a", 5)
    # (The asking process counts its own place and callers: b's are left out.)
    assert look(any_client, keys, waiter="b") == Inspected(True, 1, "a", 2)
    assert look(any_client, keys, "b").behind == 2  # (b is leaving: its callers too)
    assert behind(any_client, keys, "b", 1) == 1  # (one of them gave up)
    assert look(any_client, keys).behind == 3
    assert run(any_client, release(keys, "a")) == 1  # a's callers behind go with it
    assert owner(any_client, keys) == "b"  # and b's stay with b, the holder now
    assert look(any_client, keys) == Inspected(True, 1, "b", 1)
    assert run(any_client, withdraw(keys, "c")) == 0
    assert run(any_client, renew(keys, "b", lease_ms=LONG, behind=0)) == 1
    assert look(any_client, keys) == Inspected(True, 0, "b", 0)
    assert run(any_client, release(keys, "b")) == 1
    assert not any_client.exists(keys.behind)


def test_callers_behind_an_expired_place_do_not_count(
    any_client: AnyClient, keys: LockKeys
) -> None:
    granted(any_client, keys, "a")
    call = acquire(keys, "b", lease_ms=LONG, place_ms=SHORT, behind=4)  # b's process crashes
    assert isinstance(parse_acquire(run(any_client, call)), Waiting)
    waiting(any_client, keys, "c")
    call = refresh(keys, "c", lease_ms=LONG, place_ms=LONG, behind=1)
    assert parse_refresh(run(any_client, call)) == Refreshed.WAITING
    assert look(any_client, keys).behind == 5
    wait_server_ms(any_client, keys.places, SHORT)
    assert look(any_client, keys) == Inspected(True, 1, "a", 1)
    assert run(any_client, release(keys, "a")) == 1  # (prunes b: its entry goes)
    assert not any_client.hexists(keys.behind, "b")


def test_an_inspect_reports_the_asking_process_own_count(
    any_client: AnyClient, keys: LockKeys
) -> None:
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    run(any_client, inspect(keys, waiter="b", behind=2, keep_ms=LONG))
    assert look(any_client, keys).behind == 2
    run(any_client, inspect(keys, waiter="x", behind=7, keep_ms=LONG))  # (no place: ignored)
    assert look(any_client, keys).behind == 2
    run(any_client, withdraw(keys, "b"))
    run(any_client, release(keys, "a"))
    assert not any_client.exists(keys.behind)


# --- withdraw --------------------------------------------------------------------------------


def test_withdraw_leaves_the_queue(any_client: AnyClient, keys: LockKeys) -> None:
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    waiting(any_client, keys, "c")
    assert run(any_client, withdraw(keys, "b")) == 0
    assert queue(any_client, keys) == ["c"]
    assert any_client.zscore(keys.places, "b") is None
    run(any_client, release(keys, "a"))
    assert owner(any_client, keys) == "c"


def test_withdraw_of_a_waiter_just_handed_the_key_hands_it_on(
    any_client: AnyClient, keys: LockKeys
) -> None:
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    waiting(any_client, keys, "c")
    run(any_client, release(keys, "a"))
    assert owner(any_client, keys) == "b"
    handed_b = any_client.lindex(keys.wake("b"), 0)
    assert handed_b is not None
    # b timed out before it saw its wake-up: it withdraws, and the key goes to c.
    assert run(any_client, withdraw(keys, "b")) == 1
    assert owner(any_client, keys) == "c"
    assert not any_client.exists(keys.wake("b"))
    token_c = woken_with(any_client, keys, "c")
    assert token_c is not None
    assert token_c > parse_wake(handed_b).token
    assert queue(any_client, keys) == []


# --- tokens ----------------------------------------------------------------------------------


def test_the_token_outlives_the_owner_key(any_client: AnyClient, keys: LockKeys) -> None:
    first = granted(any_client, keys, "a", lease_ms=SHORT)
    lease_lost(any_client, keys)
    assert any_client.exists(keys.token)
    assert any_client.pttl(keys.token) > SHORT
    assert granted(any_client, keys, "b") > first


def test_tokens_keep_increasing_when_the_counter_is_lost(
    any_client: AnyClient, keys: LockKeys
) -> None:
    first = granted(any_client, keys, "a")
    run(any_client, release(keys, "a"))
    any_client.delete(keys.token)  # expired after a day idle, or evicted
    assert granted(any_client, keys, "b") > first


def test_tokens_keep_increasing_after_a_failover_to_a_replica_that_missed_grants(
    any_client: AnyClient, keys: LockKeys
) -> None:
    first = granted(any_client, keys, "a")
    run(any_client, release(keys, "a"))
    any_client.set(keys.token, first - 1000)  # the promoted replica's counter is behind
    assert granted(any_client, keys, "b") > first


def test_tokens_keep_increasing_across_a_server_restart(fresh_server: Server) -> None:
    keys = lock_keys(PREFIX, b"key")
    with fresh_server.client() as client:
        first = granted(client, keys, "a")
        fresh_server.restart()  # no persistence: the data and the loaded scripts are gone
        assert not client.exists(keys.token)
        assert granted(client, keys, "b") > first  # NOSCRIPT, loaded again, then run


def test_tokens_differ_per_key_and_each_increases(any_client: AnyClient) -> None:
    seen: dict[bytes, list[int]] = {}
    for round_ in range(3):
        for n in range(4):
            keys = lock_keys(PREFIX, f"k{n}".encode())
            seen.setdefault(keys.owner, []).append(granted(any_client, keys, f"w{round_}"))
            run(any_client, release(keys, f"w{round_}"))
    for tokens in seen.values():
        assert tokens == sorted(set(tokens))


# --- the server goes away ------------------------------------------------------------------


def test_a_holder_learns_on_renew_that_a_restarted_server_forgot_its_hold(
    fresh_server: Server,
) -> None:
    keys = lock_keys(PREFIX, b"key")
    with fresh_server.client() as client:
        granted(client, keys, "a")
        waiting(client, keys, "b")
        fresh_server.restart()
        assert run(client, renew(keys, "a", lease_ms=LONG)) == 0  # lease lost: stop writing
        assert granted(client, keys, "b") > 0  # b asks again: the key is free
        assert run(client, release(keys, "a")) == 0  # and a cannot take it from b


def test_a_blocked_waiter_hears_at_once_that_the_server_died(fresh_server: Server) -> None:
    keys = lock_keys(PREFIX, b"key")
    with fresh_server.client() as client, fresh_server.client() as blocked:
        granted(client, keys, "a")
        waiting(client, keys, "b")
        outcome: list[BaseException] = []
        started = threading.Event()

        def wait_for_wake() -> None:
            started.set()
            try:
                blocked.blpop([keys.wake("b")], LONG / 1000)
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=wait_for_wake, name="waiter")
        thread.start()
        assert started.wait(WAIT)
        wait_until(lambda: client.info("clients")["blocked_clients"] == 1, "the waiter blocks")
        fresh_server.kill()
        thread.join(WAIT)
        assert not thread.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], redis.ConnectionError), outcome


def test_scripts_are_loaded_again_on_a_restarted_cluster_node(
    redis_cluster: Cluster, cluster_client: RedisCluster
) -> None:
    keys = lock_keys(PREFIX, b"key")
    first = granted(cluster_client, keys, "a")
    port = cluster_client.get_node_from_key(keys.owner).port  # type: ignore[no-untyped-call]
    node = next(node for node in redis_cluster.nodes if node.port == port)
    node.restart()  # it keeps its slots (nodes.conf) but loses its data and scripts
    redis_cluster.wait_ok()
    with redis_cluster.client() as client:
        assert run(client, renew(keys, "a", lease_ms=LONG)) == 0
        assert granted(client, keys, "b") > first


# --- key names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key", [b"", b"plain", b"{", b"}", b"{}", b"a}b{c", b"%7B", b"%", b"\xff\x00"]
)
def test_every_name_of_a_key_shares_one_slot(key: bytes) -> None:
    keys = lock_keys(PREFIX, key)
    names = [*keys.keys, keys.wake("waiter"), keys.owner + b":marker"]
    assert len({key_slot(name) for name in names}) == 1


def test_distinct_keys_get_distinct_names() -> None:
    raw = [b"", b"%", b"%25", b"{", b"%7B", b"}", b"%7D", b"a", b"a}", b"a%7D"]
    assert len({lock_keys(PREFIX, key).owner for key in raw}) == len(raw)


def test_keys_with_braces_work_on_the_server(any_client: AnyClient) -> None:
    keys = lock_keys(PREFIX, b"}{odd{key}")
    granted(any_client, keys, "a")
    waiting(any_client, keys, "b")
    assert run(any_client, release(keys, "a")) == 1
    assert owner(any_client, keys) == "b"


def test_bad_arguments_are_refused_before_reaching_the_server(keys: LockKeys) -> None:
    with pytest.raises(ValueError, match="braces"):
        lock_keys("a{b", b"k")
    with pytest.raises(TypeError, match="bytes"):
        lock_keys(PREFIX, "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease_ms"):
        acquire(keys, "a", lease_ms=0, place_ms=1)
    with pytest.raises(ValueError, match="place_ms"):
        acquire(keys, "a", lease_ms=1, place_ms=-5)
    with pytest.raises(ValueError, match="lease_ms"):
        renew(keys, "a", lease_ms=True)
    with pytest.raises(ValueError, match="waiter"):
        release(keys, "")
