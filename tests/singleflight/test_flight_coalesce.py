"""coalesce(key): a decorator sharing concurrent calls with one key, for def and async def."""

from __future__ import annotations

import inspect
import threading
from collections.abc import AsyncIterator, Hashable, Iterator

import anyio
import pytest

from keyedlock import SingleFlight

from ..support import WAIT, Threads, wait_until, wait_until_async
from .flight_support import wait_followers, wait_followers_async


@pytest.mark.anyio
async def test_coalesce_an_async_function(sf: SingleFlight) -> None:
    gate = anyio.Event()
    calls: list[int] = []

    async def load_user_once(user_id: int, *, fields: str = "all") -> dict[str, object]:
        """Load one user."""
        calls.append(user_id)
        await gate.wait()
        return {"id": user_id, "fields": fields}

    load_user = sf.coalesce("user:{user_id}")(load_user_once)
    assert load_user.__name__ == "load_user_once"
    assert load_user.__doc__ == "Load one user."
    assert inspect.iscoroutinefunction(load_user)
    assert inspect.signature(load_user) == inspect.signature(load_user_once)

    results: dict[str, dict[str, object]] = {}

    async def caller(name: str, user_id: int) -> None:
        results[name] = await load_user(user_id)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "a", 1)
            tg.start_soon(caller, "x", 2)
            await wait_until_async(lambda: sorted(calls) == [1, 2], "both users load")
            assert sf.in_flight("user:1")
            assert sf.in_flight("user:2")
            tg.start_soon(caller, "b", 1)
            tg.start_soon(caller, "c", 1)
            tg.start_soon(caller, "y", 2)
            await wait_followers_async(sf, "user:1", 2)
            await wait_followers_async(sf, "user:2", 1)
            gate.set()

    assert sorted(calls) == [1, 2]
    for name in "abc":
        assert results[name] == {"id": 1, "fields": "all"}
    for name in "xy":
        assert results[name] == {"id": 2, "fields": "all"}


def test_coalesce_a_sync_function(sf: SingleFlight, threads: Threads) -> None:
    gate = threading.Event()
    calls: list[int] = []

    def load_user_once(user_id: int) -> dict[str, int]:
        """Load one user."""
        calls.append(user_id)
        assert gate.wait(WAIT)
        return {"id": user_id}

    load_user = sf.coalesce("user:{user_id}")(load_user_once)
    assert load_user.__name__ == "load_user_once"
    assert load_user.__doc__ == "Load one user."
    assert not inspect.iscoroutinefunction(load_user)
    assert inspect.signature(load_user) == inspect.signature(load_user_once)

    leader = threads.start(lambda: load_user(7), "leader")
    wait_until(lambda: calls == [7], "the call runs")
    followers = [threads.start(lambda: load_user(user_id=7), "follower") for _ in range(3)]
    wait_followers(sf, "user:7", 3)
    other = threads.start(lambda: load_user(8), "other user")
    wait_until(lambda: sorted(calls) == [7, 8], "another user's call runs in parallel")
    gate.set()

    assert leader.result() == {"id": 7}
    for handle in followers:
        assert handle.result() == {"id": 7}
    assert other.result() == {"id": 8}
    assert sorted(calls) == [7, 8]


@pytest.mark.anyio
async def test_coalesce_with_a_key_function(sf: SingleFlight) -> None:
    def key_of(region: str, item: int) -> Hashable:
        return f"stock:{region}:{item}"

    @sf.coalesce(key_of)
    async def stock(region: str, item: int) -> int:
        assert sf.in_flight(f"stock:{region}:{item}")
        return item * 10

    assert await stock("eu", 3) == 30
    assert await stock(region="us", item=4) == 40


@pytest.mark.anyio
async def test_coalesce_templates_see_defaults_and_positional_fields(sf: SingleFlight) -> None:
    seen: list[str] = []

    @sf.coalesce("{0}/{page}")
    async def fetch(path: str, page: int = 1) -> str:
        seen.extend(key for key in ("docs/1", "docs/2") if sf.in_flight(key))
        return f"{path}#{page}"

    assert await fetch("docs") == "docs#1"
    assert await fetch("docs", page=2) == "docs#2"
    assert seen == ["docs/1", "docs/2"]


def test_coalesce_template_must_name_parameters(sf: SingleFlight) -> None:
    with pytest.raises(ValueError, match="user_id"):

        @sf.coalesce("user:{user_id}")
        def load(uid: int) -> int:
            return uid


def test_coalesce_key_function_must_return_a_hashable_key(sf: SingleFlight) -> None:
    @sf.coalesce(lambda items: items)
    def total(items: list[int]) -> int:
        return sum(items)

    with pytest.raises(TypeError, match="hashable"):
        total([1, 2])


@pytest.mark.anyio
async def test_a_coalesced_sync_function_refuses_to_block_a_loop(sf: SingleFlight) -> None:
    @sf.coalesce("k")
    def work() -> int:
        raise AssertionError("must not run")

    with pytest.raises(RuntimeError, match=r"^a @coalesce-d def would block .* event loop"):
        work()


def test_a_generator_function_cannot_be_coalesced(sf: SingleFlight) -> None:
    """Its callers would share one generator, run as it is iterated: refused as it is
    decorated, sync and async alike."""

    def rows() -> Iterator[int]:
        yield 1

    async def rows_async() -> AsyncIterator[int]:
        yield 1

    for fn in (rows, rows_async):
        with pytest.raises(TypeError, match=r"@coalesce cannot wrap the generator function"):
            sf.coalesce("k")(fn)


@pytest.mark.anyio
async def test_a_coalesced_function_is_typed(sf: SingleFlight) -> None:
    @sf.coalesce("n:{n}")
    async def square(n: int) -> int:
        return n * n

    @sf.coalesce("n:{n}")
    def cube(n: int) -> int:
        return n * n * n

    result: int = await square(3)
    assert result == 9
    assert await anyio.to_thread.run_sync(cube, 2) == 8
