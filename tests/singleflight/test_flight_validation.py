"""Bad input fails at once with a clear error, and a call never waits for itself."""

from __future__ import annotations

import gc
import math
import threading
import warnings
from typing import Any

import anyio
import pytest

from keyedlock import SingleFlight

from ..support import WAIT, Threads, table_of, wait_until, wait_until_async

# -- keys, functions, ttl -----------------------------------------------------


def never_called() -> str:
    raise AssertionError("fn must not run after bad input")


async def never_called_async() -> str:
    raise AssertionError("fn must not run after bad input")


#: Keys that cannot be hashed (typed ``Any``: the type checker already refuses them).
UNHASHABLE: tuple[Any, ...] = (["a", "list"], {"a": "dict"}, {"a", "set"})


@pytest.mark.parametrize("key", UNHASHABLE)
def test_an_unhashable_key_is_refused(sf: SingleFlight, key: Any) -> None:
    with pytest.raises(TypeError, match="hashable"):
        sf.do_sync(key, never_called)
    with pytest.raises(TypeError, match="hashable"):
        sf.do_sync_ex(key, never_called)
    with pytest.raises(TypeError, match="hashable"):
        sf.forget(key)
    with pytest.raises(TypeError, match="hashable"):
        sf.in_flight(key)


@pytest.mark.anyio
@pytest.mark.parametrize("key", UNHASHABLE)
async def test_an_unhashable_key_is_refused_async(sf: SingleFlight, key: Any) -> None:
    with pytest.raises(TypeError, match="hashable"):
        await sf.do(key, never_called_async)
    with pytest.raises(TypeError, match="hashable"):
        await sf.do_ex(key, never_called)


def test_an_unhashable_key_is_refused_with_ttl() -> None:
    sf = SingleFlight(ttl=1)
    with pytest.raises(TypeError, match="hashable"):
        sf.do_sync(UNHASHABLE[0], never_called)
    assert table_of(sf).results == {}


@pytest.mark.parametrize("fn", [None, 42, "fn", object()])
def test_fn_must_be_callable(sf: SingleFlight, fn: Any) -> None:
    with pytest.raises(TypeError, match="callable"):
        sf.do_sync("k", fn)
    with pytest.raises(TypeError, match="callable"):
        sf.do_sync_ex("k", fn)


@pytest.mark.anyio
@pytest.mark.parametrize("fn", [None, 42, "fn"])
async def test_fn_must_be_callable_async(sf: SingleFlight, fn: Any) -> None:
    with pytest.raises(TypeError, match="callable"):
        await sf.do("k", fn)
    with pytest.raises(TypeError, match="callable"):
        await sf.do_ex("k", fn)


@pytest.mark.parametrize("ttl", [-1, -0.001, math.nan, math.inf, -math.inf])
def test_ttl_out_of_range_is_a_value_error(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        SingleFlight(ttl=ttl)


@pytest.mark.parametrize("ttl", ["1", None, True, False, [1], 1j])
def test_ttl_not_a_number_is_a_type_error(ttl: Any) -> None:
    with pytest.raises(TypeError, match="ttl"):
        SingleFlight(ttl=ttl)


def test_ttl_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        SingleFlight(1)  # type: ignore[call-arg]


# -- do_sync: sync functions, outside event loops ------------------------------------------


def test_do_sync_refuses_an_async_function(sf: SingleFlight) -> None:
    fn: Any = never_called_async  # as a caller without type checking would pass it
    with pytest.raises(TypeError, match="sync"):
        sf.do_sync("k", fn)
    with pytest.raises(TypeError, match="sync"):
        sf.do_sync_ex("k", fn)


class AsyncCallable:
    """An object whose ``__call__`` is a coroutine function: an async function too."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return "never awaited"


def test_do_sync_refuses_an_async_callable_object(sf: SingleFlight) -> None:
    fn = AsyncCallable()
    returned: list[Any] = []
    try:
        with pytest.raises(TypeError, match="sync"):
            returned.append(sf.do_sync("k", fn))
    finally:
        for coroutine in returned:  # leave no never-awaited coroutine behind
            coroutine.close()
    assert fn.calls == 0


@pytest.mark.anyio
async def test_do_sync_refuses_to_block_an_event_loop(sf: SingleFlight) -> None:
    with pytest.raises(RuntimeError, match="event loop"):
        sf.do_sync("k", never_called)
    with pytest.raises(RuntimeError, match="event loop"):
        sf.do_sync_ex("k", never_called)


@pytest.mark.anyio
async def test_do_sync_refuses_to_block_a_loop_even_as_a_follower(sf: SingleFlight) -> None:
    """Even when it would have to wait, do_sync in a loop fails at once instead of blocking."""
    gate = anyio.Event()
    started: list[str] = []

    async def fetch() -> str:
        started.append("leader")
        await gate.wait()
        return "value"

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sf.do, "k", fetch)
            await wait_until_async(lambda: started == ["leader"], "the leader runs the call")
            with pytest.raises(RuntimeError, match="event loop"):
                sf.do_sync("k", never_called)
            assert sf._backend.waiters(sf._local("k")) == 0
            gate.set()


# -- recursion: a call never waits for itself ----------------------------------------------


@pytest.mark.anyio
async def test_a_call_joining_itself_is_refused(sf: SingleFlight) -> None:
    inner_errors: list[BaseException] = []

    async def recursive() -> str:
        try:
            return await sf.do("k", recursive)
        except RuntimeError as exc:
            inner_errors.append(exc)
            raise

    with anyio.fail_after(WAIT):
        with pytest.raises(RuntimeError, match="wait for itself"):
            await sf.do("k", recursive)
    assert len(inner_errors) == 1
    assert len(sf) == 0


@pytest.mark.anyio
async def test_a_call_joining_itself_with_a_sync_fn_is_refused(sf: SingleFlight) -> None:
    async def recursive() -> str:
        with pytest.raises(RuntimeError, match="wait for itself"):
            await sf.do_ex("k", never_called)
        return "outer"

    with anyio.fail_after(WAIT):
        assert await sf.do("k", recursive) == "outer"
    assert len(sf) == 0


@pytest.mark.anyio
async def test_a_sync_fn_run_by_a_task_cannot_block_on_its_own_call(sf: SingleFlight) -> None:
    """A sync fn run inline by ``await do`` is in the event loop: do_sync there fails at once."""

    def recursive() -> str:
        return sf.do_sync("k", never_called)

    with pytest.raises(RuntimeError):
        await sf.do("k", recursive)
    assert len(sf) == 0


def test_a_thread_joining_its_own_call_is_refused(sf: SingleFlight, threads: Threads) -> None:
    def recursive() -> str:
        return sf.do_sync("k", recursive)

    caller = threads.start(lambda: sf.do_sync("k", recursive))  # bounded, should it hang
    with pytest.raises(RuntimeError, match="wait for itself"):
        caller.result()
    assert len(sf) == 0


def test_a_thread_joining_its_own_call_with_followers(sf: SingleFlight, threads: Threads) -> None:
    """The followers of a call that tried to join itself get its RuntimeError, not a hang."""
    joined: list[str] = []

    def recursive() -> str:
        wait_until(lambda: sf._backend.waiters(sf._local("k")) == 1, "a follower waits")
        joined.append("inner")
        return sf.do_sync("k", recursive)

    leader = threads.start(lambda: sf.do_sync("k", recursive), "leader")
    wait_until(lambda: sf.in_flight("k"), "the leader runs the call")
    follower = threads.start(lambda: sf.do_sync("k", never_called), "follower")
    with pytest.raises(RuntimeError, match="wait for itself") as leader_error:
        leader.result()
    with pytest.raises(RuntimeError, match="wait for itself") as follower_error:
        follower.result()
    assert follower_error.value is not leader_error.value
    assert joined == ["inner"]


async def _async_work() -> str:
    return "never awaited"


def test_do_sync_refuses_a_coroutine_returned_by_a_sync_function(
    sf: SingleFlight, threads: Threads
) -> None:
    """A lambda around an ``async def`` passes as sync: what it returns is refused (closed,
    so it never warns), and the followers of the call get the error too."""
    release = threading.Event()

    def wrapper() -> Any:
        release.wait(WAIT)
        return _async_work()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a coroutine never awaited would warn as it is freed)
        leader = threads.start(lambda: sf.do_sync("k", wrapper), "leader")
        wait_until(lambda: sf.in_flight("k"), "the leader runs the call")
        follower = threads.start(lambda: sf.do_sync("k", never_called), "follower")
        wait_until(lambda: sf._backend.waiters(sf._local("k")) == 1, "the follower waits")
        release.set()
        with pytest.raises(TypeError, match=r"fn returned a coroutine \(_async_work\)"):
            leader.result()
        with pytest.raises(TypeError, match=r"use `await flight\.do"):
            follower.result()
        with pytest.raises(TypeError, match="fn returned a coroutine"):
            sf.do_sync_ex("k", lambda: _async_work())
        gc.collect()
    assert not sf.in_flight("k")


@pytest.mark.anyio
async def test_nested_calls_for_other_keys_are_fine(sf: SingleFlight) -> None:
    async def inner() -> str:
        return "inner"

    async def outer() -> str:
        return "outer+" + await sf.do("inner", inner)

    assert await sf.do("outer", outer) == "outer+inner"


def test_nested_calls_for_other_keys_are_fine_in_threads(sf: SingleFlight) -> None:
    def outer() -> str:
        return "outer+" + sf.do_sync("inner", lambda: "inner")

    assert sf.do_sync("outer", outer) == "outer+inner"


def test_after_forget_a_call_may_start_its_key_again(sf: SingleFlight) -> None:
    """Forgetting its own key from inside lets the call start a new one: nothing to wait for."""
    depth: list[int] = []

    def fetch() -> int:
        depth.append(len(depth))
        if len(depth) == 1:
            sf.forget("k")
            return sf.do_sync("k", fetch) + 10
        return 1

    assert sf.do_sync("k", fetch) == 11
    assert depth == [0, 1]
