"""Static types of the public API, checked by ``mypy --strict`` and executed by pytest.

``guard`` keeps the decorated function's exact signature and kind: assigning the decorated
functions to variables of the exact ``Callable`` types type-checks, ``assert_type`` pins the
results, and a call with a wrong argument needs its ``type: ignore`` (mypy --strict reports an
unused ignore, so these lines fail the type check if the signature were lost).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager, AbstractContextManager, AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, assert_type

import pytest

from keyedlock import KeyedLock, LockContext, Result, flight, klock
from keyedlock.multiprocessing import KeyedLockManager

lock = KeyedLock()


@lock.guard("user:{user_id}")
def charge(user_id: int, amount: float = 1.0) -> str:
    """Charge a user."""
    return f"{user_id}:{amount}"


@lock.guard("user:{user_id}")
async def refund(user_id: int, *, note: str = "") -> list[int]:
    """Refund a user."""
    return [user_id, len(note)]


def add(a: int, b: int = 0) -> int:
    return a + b


async def add_async(a: int, b: int = 0) -> list[int]:
    return [a + b]


class Account:
    def __init__(self, number: int) -> None:
        self.number = number

    @lock.guard("account:{self.number}")
    def deposit(self, amount: int) -> int:
        return self.number + amount


def test_guard_keeps_a_sync_signature() -> None:
    exact: Callable[[int, float], str] = charge
    shorter: Callable[[int], str] = charge
    assert_type(charge(1), str)
    assert_type(charge(1, amount=2.5), str)
    assert exact(1, 2.0) == "1:2.0"
    assert shorter(3) == "3:1.0"
    assert charge.__doc__ == "Charge a user."


@pytest.mark.anyio
async def test_guard_keeps_an_async_signature() -> None:
    coroutine_function: Callable[[int], Coroutine[Any, Any, list[int]]] = refund
    assert_type(await refund(4, note="ab"), list[int])
    assert await coroutine_function(5) == [5, 0]


T = TypeVar("T")


@lock.guard("generic")
def ident(x: T) -> T:
    return x


@flight.coalesce("first")
def first(xs: list[T]) -> T:
    return xs[0]


def test_guard_and_coalesce_keep_a_generic_function_generic() -> None:
    assert_type(ident(3), int)
    assert_type(ident("a"), str)
    assert_type(first([1.5]), float)
    assert ident(3) == 3
    assert first(["x"]) == "x"


def test_a_result_of_a_narrower_type_is_a_result_of_a_wider_one() -> None:
    narrow: Result[bool] = Result(True, False)
    wide: Result[object] = narrow  # (frozen: covariant)
    optional: Result[int | None] = Result[int](1, True)
    assert wide.value is True
    assert optional.value == 1


class NamedManager(KeyedLockManager):
    def name(self) -> str:
        return "named"


if TYPE_CHECKING:
    # Never executed (it would start a manager): entering a subclass gives the subclass.
    with NamedManager() as named:
        assert_type(named, NamedManager)
        named.name()


def test_guard_keeps_a_method_signature() -> None:
    bound: Callable[[int], int] = Account(10).deposit
    assert_type(Account(1).deposit(2), int)
    assert bound(5) == 15


def test_run_sync_and_acquire_types() -> None:
    assert_type(lock.run_sync("k", add, 7), int)
    assert_type(lock.run_sync("k", charge, 7), str)
    assert_type(lock.acquire("k", blocking=False), bool)
    lock.release("k")
    assert_type(lock("k"), LockContext)
    assert_type(klock, KeyedLock)
    assert_type(lock.locked("k"), bool)
    assert_type(lock.waiters("k"), int)
    assert_type(len(lock), int)


@pytest.mark.anyio
async def test_run_and_acquire_async_types() -> None:
    assert_type(await lock.run("k", add_async, 1, b=2), list[int])
    assert_type(await lock.run("k", add, 1), int)
    assert_type(await lock.run("k", add_async, 1, timeout=5), list[int])
    assert_type(await lock.run("k", add, 1, on_error="stop"), int)
    assert_type(await lock.acquire_async("k"), bool)
    lock.release("k")


def test_run_sync_with_options_types() -> None:
    assert_type(lock.run_sync("k", add, 1, 2, timeout=5), int)
    # With options, fn's keyword arguments go through functools.partial.
    assert_type(lock.run_sync("k", partial(add, b=2), 1, timeout=5), int)
    assert_type(lock.run_sync("k", add, 1, on_error="stop"), int)


@pytest.mark.anyio
async def test_single_flight_types() -> None:
    assert_type(await flight.do("typing", add_async, 1, b=2), list[int])
    assert_type(await flight.do("typing", add, 1), int)
    assert_type(await flight.do_ex("typing", add_async, 1), Result[list[int]])


def test_single_flight_sync_types() -> None:
    assert_type(flight.do_sync("typing", add, 1, b=2), int)
    assert_type(flight.do_sync_ex("typing", add, 1), Result[int])


if TYPE_CHECKING:
    # Never executed: each line is a type error that only a kept signature reveals.
    charge("one")  # type: ignore[arg-type]
    charge(1, 2.0, 3)  # type: ignore[call-arg]
    unawaited = refund(1, "note")  # type: ignore[call-arg]
    unawaited = refund(user_id="1")  # type: ignore[arg-type]
    Account(1).deposit("2")  # type: ignore[arg-type]
    wrong: Callable[[str], str] = charge  # type: ignore[assignment]
    not_async: Callable[[int], list[int]] = refund  # type: ignore[assignment]
    # run / run_sync (with options or without) and single-flight check fn's own arguments.
    lock.run_sync("k", add)  # type: ignore[call-overload]
    lock.run_sync("k", add, "1")  # type: ignore[call-overload]
    lock.run_sync("k", add, 1, c=2)  # type: ignore[call-arg]
    unawaited_run = lock.run("k", add_async)  # type: ignore[call-overload]
    unawaited_run = lock.run("k", add_async, 1, "2")  # type: ignore[call-overload]
    lock.run_sync("k", add, timeout=5)  # type: ignore[call-arg, arg-type]
    lock.run_sync("k", add, "1", on_error="stop")  # type: ignore[call-arg, arg-type]
    lock.run_sync("k", add, 1, 2, 3, timeout=5)  # type: ignore[call-arg]
    lock.run_sync("k", add, 1, b=2, timeout=5)  # type: ignore[call-arg]
    unawaited_run = lock.run("k", add_async, timeout=5)  # type: ignore[call-arg, arg-type]
    unawaited_run = lock.run("k", add_async, "1", on_error="stop")  # type: ignore[call-arg, arg-type]
    unawaited_run = lock.run("k", add, 1, timeout="5")  # type: ignore[call-arg, arg-type]
    flight.do_sync("k", add)  # type: ignore[call-arg]
    flight.do_sync("k", add, "1")  # type: ignore[arg-type]
    unawaited_do = flight.do("k", add_async)  # type: ignore[call-overload]


def test_lock_contexts_are_standard_context_managers() -> None:
    """A LockContext is what the standard library's context-manager types expect, for the type
    checker and at run time."""
    sync_cm: AbstractContextManager[LockContext] = lock("typing")
    with sync_cm as held:
        assert held is sync_cm  # entering returns the context itself
        assert lock.locked("typing")
    assert not lock.locked("typing")


@pytest.mark.anyio
async def test_lock_contexts_are_standard_async_context_managers() -> None:
    """``AbstractAsyncContextManager`` and ``AsyncExitStack`` take a LockContext."""
    async_cm: AbstractAsyncContextManager[LockContext] = lock("typing")
    async with AsyncExitStack() as stack:
        assert await stack.enter_async_context(async_cm) is async_cm
        assert lock.locked("typing")
    assert not lock.locked("typing")
