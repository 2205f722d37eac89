"""Bad arguments are refused at the boundary with the standard exception, and leave no trace."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from keyedlock import KeyedLock, LockTimeout

from ..support import start_thread
from .scopes import Scope

UNHASHABLE: list[object] = [[1], {"a": 1}, {1}]


def nothing() -> None:
    pass


async def nothing_async() -> None:
    pass


SYNC_KEY_USES: dict[str, Callable[[KeyedLock, Any], object]] = {
    "klock()": lambda lock, key: lock(key),
    "acquire": lambda lock, key: lock.acquire(key),
    "acquire(blocking=False)": lambda lock, key: lock.acquire(key, blocking=False),
    "release": lambda lock, key: lock.release(key),
    "locked": lambda lock, key: lock.locked(key),
    "waiters": lambda lock, key: lock.waiters(key),
    "run_sync": lambda lock, key: lock.run_sync(key, nothing),
    "guard (callable key)": lambda lock, key: lock.guard(lambda: key)(nothing)(),
}


@pytest.mark.parametrize("key", UNHASHABLE, ids=lambda key: type(key).__name__)
@pytest.mark.parametrize("use", SYNC_KEY_USES.values(), ids=SYNC_KEY_USES.keys())
def test_unhashable_keys_raise_type_error(
    lock: KeyedLock, use: Callable[[KeyedLock, object], object], key: object
) -> None:
    with pytest.raises(TypeError, match="hashable"):
        use(lock, key)
    assert len(lock) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("key", UNHASHABLE, ids=lambda key: type(key).__name__)
async def test_unhashable_keys_raise_type_error_in_tasks(lock: KeyedLock, key: object) -> None:
    with pytest.raises(TypeError, match="hashable"):
        await lock.acquire_async(key)
    with pytest.raises(TypeError, match="hashable"):
        await lock.run(key, nothing_async)
    with pytest.raises(TypeError, match="hashable"):
        await lock.guard(lambda: key)(nothing_async)()
    assert len(lock) == 0


#: An int of more digits than Python turns into text by default (4300): a valid key.
HUGE = 10**5000


def _enter_and_leave(lock: KeyedLock, key: object, timeout: float) -> None:
    with lock(key, timeout=timeout):
        pass


def test_an_int_too_long_for_text_is_named_by_its_size_in_errors(
    scope: Scope, lock: KeyedLock
) -> None:
    """The errors that name such a key still say what happened (its repr would raise
    ValueError in their place): a release of a free key, a try of a busy one. The Redis
    scope names int keys in decimal on the server: it refuses such a key, saying so."""
    if scope.name == "redis":
        with pytest.raises(ValueError, match="at most 4300 digits"):
            lock.acquire(HUGE)
        assert len(lock) == 0
        return
    with pytest.raises(RuntimeError, match=r"release of key <int of 16610 bits>, which "):
        lock.release(HUGE)
    with lock(HUGE):
        tried = start_thread(lambda: _enter_and_leave(lock, HUGE, 0))
        with pytest.raises(LockTimeout, match=r"key <int of 16610 bits> is busy"):
            tried.result()
    assert len(lock) == 0


BAD_TIMEOUTS: list[tuple[object, type[Exception], str]] = [
    (-1, ValueError, ">= 0"),
    (-0.5, ValueError, ">= 0"),
    (-math.inf, ValueError, ">= 0"),
    (math.nan, ValueError, "NaN"),
    ("1", TypeError, "number"),
    (True, TypeError, "number"),
]

TIMEOUT_USES: dict[str, Callable[[KeyedLock, Any], object]] = {
    "klock()": lambda lock, timeout: lock("k", timeout=timeout),
    "acquire": lambda lock, timeout: lock.acquire("k", timeout=timeout),
    "run_sync": lambda lock, timeout: lock.run_sync("k", nothing, timeout=timeout),
    "guard": lambda lock, timeout: lock.guard("k", timeout=timeout),
}


@pytest.mark.parametrize(("timeout", "error", "match"), BAD_TIMEOUTS)
@pytest.mark.parametrize("use", TIMEOUT_USES.values(), ids=TIMEOUT_USES.keys())
def test_bad_timeouts_are_refused(
    lock: KeyedLock,
    use: Callable[[KeyedLock, object], object],
    timeout: object,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        use(lock, timeout)
    assert len(lock) == 0


@pytest.mark.anyio
@pytest.mark.parametrize(("timeout", "error", "match"), BAD_TIMEOUTS)
async def test_bad_timeouts_are_refused_in_tasks(
    lock: KeyedLock, timeout: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await lock.acquire_async("k", timeout=timeout)
    with pytest.raises(error, match=match):
        await lock.run("k", nothing_async, timeout=timeout)
    assert len(lock) == 0


def test_bad_timeouts_are_refused_while_the_key_is_held(lock: KeyedLock) -> None:
    with lock("k"):
        with pytest.raises(ValueError, match=">= 0"):
            lock.acquire("k", timeout=-1)
        assert lock.waiters("k") == 0


@pytest.mark.parametrize("timeout", [0, 1, 0.5, math.inf])
def test_a_non_blocking_acquire_takes_no_timeout(lock: KeyedLock, timeout: float) -> None:
    with pytest.raises(ValueError, match="non-blocking"):
        lock.acquire("k", blocking=False, timeout=timeout)
    assert len(lock) == 0


@pytest.mark.parametrize("blocking", [None, "no", "False", 0.0, []], ids=repr)
def test_blocking_must_be_a_bool(lock: KeyedLock, blocking: Any) -> None:
    with pytest.raises(TypeError, match="blocking must be a bool"):
        lock.acquire("k", blocking=blocking)
    assert len(lock) == 0


BAD_ON_ERROR: list[object] = ["abort", "STOP", "", None, True]


@pytest.mark.parametrize("on_error", BAD_ON_ERROR)
def test_bad_on_error_is_refused(lock: KeyedLock, on_error: Any) -> None:
    with pytest.raises(ValueError, match="on_error"):
        lock.run_sync("k", nothing, on_error=on_error)
    with pytest.raises(ValueError, match="on_error"):
        lock.guard("k", on_error=on_error)  # at decoration time, before any call
    assert len(lock) == 0


@pytest.mark.anyio
@pytest.mark.parametrize("on_error", BAD_ON_ERROR)
async def test_bad_on_error_is_refused_in_tasks(lock: KeyedLock, on_error: Any) -> None:
    with pytest.raises(ValueError, match="on_error"):
        await lock.run("k", nothing_async, on_error=on_error)
    assert len(lock) == 0


@pytest.mark.parametrize(
    ("max_waiters", "error"),
    [(-1, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)],
)
def test_bad_max_waiters_is_refused(max_waiters: Any, error: type[Exception]) -> None:
    with pytest.raises(error, match="max_waiters"):
        KeyedLock(max_waiters=max_waiters)


def test_a_non_callable_fn_is_refused(lock: KeyedLock) -> None:
    with pytest.raises(TypeError, match="callable"):
        lock.run_sync("k", 42)  # type: ignore[call-overload]
    assert len(lock) == 0


def test_nothing_is_held_after_a_refused_argument(lock: KeyedLock) -> None:
    with ExitStack() as stack:
        stack.enter_context(lock("k"))
        with pytest.raises(TypeError):
            lock.acquire(["k"])  # type: ignore[arg-type]
        assert lock.waiters("k") == 0
    assert len(lock) == 0


def test_a_generator_function_cannot_be_guarded(lock: KeyedLock) -> None:
    """Its body runs as it is iterated, after the call returned: the key would guard only
    the making of the generator. Refused as it is decorated, sync and async alike."""

    def rows() -> Iterator[int]:
        yield 1

    async def rows_async() -> AsyncIterator[int]:
        yield 1

    for fn in (rows, rows_async):
        with pytest.raises(
            TypeError, match=r"@guard cannot wrap the generator function .*unlocked"
        ):
            lock.guard("k")(fn)
    assert len(lock) == 0
