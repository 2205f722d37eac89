"""run / run_sync / guard: results, arguments, key templates, callable keys, wrapping."""

from __future__ import annotations

import gc
import inspect
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from keyedlock import KeyedLock, LockTimeout

from ..support import Threads

# -- run_sync and run --------------------------------------------------------------------------


def test_run_sync_returns_the_result_and_holds_the_key(lock: KeyedLock) -> None:
    def work(a: int, b: int, *, scale: int) -> int:
        assert lock.locked("k")
        return (a + b) * scale

    assert lock.run_sync("k", work, 1, 2, scale=10) == 30
    assert len(lock) == 0


def test_run_sync_passes_keywords_named_like_its_own_parameters(lock: KeyedLock) -> None:
    def work(key: str, fn: str) -> str:
        return key + fn

    assert lock.run_sync("k", work, key="a", fn="b") == "ab"


def test_run_sync_propagates_the_exception_and_releases(lock: KeyedLock) -> None:
    def fail() -> None:
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        lock.run_sync("k", fail)
    assert len(lock) == 0


def test_run_sync_refuses_an_async_function(lock: KeyedLock) -> None:
    async def work() -> None:
        pass

    with pytest.raises(TypeError, match="run_sync needs a sync function"):
        _ = lock.run_sync("k", work)
    assert len(lock) == 0


async def _async_work() -> None:
    pass


def test_run_sync_refuses_a_coroutine_returned_by_a_sync_function(lock: KeyedLock) -> None:
    """A lambda (or a sync decorated function) returning a coroutine: refused as it returns,
    the coroutine closed (it never warns), the key free."""

    @lock.guard("k")
    def guarded() -> object:
        return _async_work()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (a coroutine never awaited would warn as it is freed)
        with pytest.raises(TypeError, match=r"fn returned a coroutine \(_async_work\)"):
            _ = lock.run_sync("k", lambda: _async_work())
        with pytest.raises(TypeError, match="use `await run"):
            guarded()
        gc.collect()
    assert not lock.locked("k")
    assert len(lock) == 0


def test_run_sync_times_out(lock: KeyedLock, threads: Threads) -> None:
    with lock("k"):
        attempt = threads.start(lambda: lock.run_sync("k", lambda: 1, timeout=0.01))
        with pytest.raises(LockTimeout):
            attempt.result()


@pytest.mark.anyio
async def test_run_awaits_an_async_function(lock: KeyedLock) -> None:
    async def work(a: int, *, b: int) -> int:
        assert lock.locked("k")
        await anyio.lowlevel.checkpoint()
        return a * b

    assert await lock.run("k", work, 6, b=7) == 42
    assert len(lock) == 0


@pytest.mark.anyio
async def test_run_calls_a_sync_function(lock: KeyedLock) -> None:
    def work(a: int) -> str:
        assert lock.locked("k")
        return str(a)

    assert await lock.run("k", work, 5) == "5"
    assert len(lock) == 0


@pytest.mark.anyio
async def test_run_propagates_the_exception_and_releases(lock: KeyedLock) -> None:
    async def fail() -> None:
        await anyio.lowlevel.checkpoint()
        raise KeyError("inside")

    with pytest.raises(KeyError, match="inside"):
        await lock.run("k", fail)
    assert len(lock) == 0


# -- guard: results and wrapping ---------------------------------------------------------------


def test_guard_sync_function(lock: KeyedLock) -> None:
    @lock.guard("job")
    def work(x: int) -> int:
        """Double it."""
        assert lock.locked("job")
        return 2 * x

    assert work(21) == 42
    assert work.__name__ == "work"
    assert work.__doc__ == "Double it."
    assert inspect.signature(work) == inspect.signature(work.__wrapped__)  # type: ignore[attr-defined]
    assert not inspect.iscoroutinefunction(work)
    assert len(lock) == 0


@pytest.mark.anyio
async def test_guard_async_function(lock: KeyedLock) -> None:
    @lock.guard("job")
    async def work(x: int) -> int:
        """Triple it."""
        assert lock.locked("job")
        await anyio.lowlevel.checkpoint()
        return 3 * x

    assert inspect.iscoroutinefunction(work)
    assert work.__name__ == "work"
    assert work.__doc__ == "Triple it."
    assert await work(3) == 9
    assert len(lock) == 0


def test_guard_excludes_concurrent_calls(lock: KeyedLock, threads: Threads) -> None:
    counter = {"n": 0}

    @lock.guard("counter")
    def bump() -> None:
        value = counter["n"]
        time.sleep(0)  # let other threads run between the read and the write
        counter["n"] = value + 1

    def many() -> None:
        for _ in range(200):
            bump()

    workers = [threads.start(many) for _ in range(4)]
    for worker in workers:
        worker.result()
    assert counter["n"] == 800


def test_guard_timeout(lock: KeyedLock, threads: Threads) -> None:
    @lock.guard("busy", timeout=0)
    def work() -> None:
        pass

    with lock("busy"), pytest.raises(LockTimeout):
        threads.start(work).result()
    work()


# -- guard: key templates ----------------------------------------------------------------------


def test_template_names_parameters(lock: KeyedLock) -> None:
    seen: list[bool] = []

    @lock.guard("checkout:{user_id}")
    def checkout(user_id: int, cart: str) -> None:
        seen.append(lock.locked(f"checkout:{user_id}"))

    checkout(7, "a")
    checkout(user_id=8, cart="b")
    checkout(9, cart="c")
    assert seen == [True, True, True]
    assert len(lock) == 0


def test_template_applies_defaults(lock: KeyedLock) -> None:
    keys: list[str] = []

    @lock.guard("{user_id}:{region}")
    def work(user_id: int, region: str = "eu") -> None:
        keys.extend(k for k in (f"{user_id}:eu", f"{user_id}:us") if lock.locked(k))

    work(1)
    work(2, "us")
    work(3, region="eu")
    assert keys == ["1:eu", "2:us", "3:eu"]


def test_template_positional_fields(lock: KeyedLock) -> None:
    keys: list[bool] = []

    @lock.guard("{0}/{1}")
    def work(a: str, b: str) -> None:
        keys.append(lock.locked(f"{a}/{b}"))

    work("x", "y")
    work(a="p", b="q")  # positional fields index the bound arguments, however passed
    assert keys == [True, True]


def test_template_attribute_and_index_access(lock: KeyedLock) -> None:
    @dataclass
    class Order:
        id: int
        lines: list[str]

    seen: list[bool] = []

    @lock.guard("order:{order.id}:{order.lines[0]}")
    def ship(order: Order) -> None:
        seen.append(lock.locked("order:12:widget"))

    ship(Order(12, ["widget"]))
    assert seen == [True]


def test_template_from_var_keyword_arguments(lock: KeyedLock) -> None:
    seen: list[bool] = []

    @lock.guard("tenant:{tenant}")
    def work(**options: Any) -> None:
        seen.append(lock.locked(f"tenant:{options['tenant']}"))

    work(tenant="acme")
    assert seen == [True]


def test_template_naming_the_var_keyword_parameter_is_refused_at_decoration(
    lock: KeyedLock,
) -> None:
    def work(**options: Any) -> None:
        pass

    with pytest.raises(ValueError, match=r"\*\*options.*name the keyword argument itself"):
        lock.guard("tenant:{options[tenant]}")(work)


def test_template_field_left_to_var_keyword_and_not_passed_is_a_type_error(
    lock: KeyedLock,
) -> None:
    @lock.guard("tenant:{tenant}")
    def work(**options: Any) -> None:
        raise AssertionError("never runs")

    with pytest.raises(TypeError, match="needs the keyword argument 'tenant'"):
        work(other="x")
    assert len(lock) == 0


def test_a_missing_index_inside_a_field_stays_a_key_error(lock: KeyedLock) -> None:
    @lock.guard("user:{user[name]}")
    def work(user: dict[str, int], **options: Any) -> None:
        raise AssertionError("never runs")

    with pytest.raises(KeyError, match="name"):
        work({"id": 1})


def test_template_without_fields_is_a_constant_key(lock: KeyedLock) -> None:
    seen: list[bool] = []

    @lock.guard("global")
    def work(x: int) -> None:
        seen.append(lock.locked("global"))

    work(1)
    assert seen == [True]


def test_template_naming_no_parameter_is_refused_at_decoration(lock: KeyedLock) -> None:
    def work(user_id: int) -> None:
        pass

    with pytest.raises(ValueError, match="usr_id"):
        lock.guard("checkout:{usr_id}")(work)


def test_malformed_template_is_refused_at_decoration(lock: KeyedLock) -> None:
    def work(user_id: int) -> None:
        pass

    with pytest.raises(ValueError, match="template"):
        lock.guard("checkout:{user_id")(work)


def test_a_template_with_an_unknown_conversion_is_refused_at_decoration(lock: KeyedLock) -> None:
    def work(user_id: int) -> None:
        pass

    with pytest.raises(ValueError, match="conversion !x"):
        lock.guard("user:{user_id!x}")(work)


def test_a_key_spec_that_is_neither_template_nor_callable_is_refused(lock: KeyedLock) -> None:
    def work() -> None:
        pass

    with pytest.raises(TypeError, match="template or a callable"):
        lock.guard(42)(work)  # type: ignore[arg-type]


# -- guard: callable keys ----------------------------------------------------------------------


def test_callable_key_gets_the_arguments(lock: KeyedLock) -> None:
    seen: list[bool] = []

    @lock.guard(lambda user_id, amount=0: f"wallet-{user_id}")
    def pay(user_id: int, amount: int = 0) -> None:
        seen.append(lock.locked(f"wallet-{user_id}"))

    pay(3, 10)
    pay(user_id=4)
    assert seen == [True, True]


def test_callable_key_returning_an_unhashable_key_is_refused(lock: KeyedLock) -> None:
    def unhashable(user_id: int) -> Any:
        return [user_id]

    @lock.guard(unhashable)
    def pay(user_id: int) -> None:
        pass

    with pytest.raises(TypeError, match="hashable"):
        pay(3)
    assert len(lock) == 0


# -- guard: methods ----------------------------------------------------------------------------


def test_guard_on_methods(lock: KeyedLock, threads: Threads) -> None:
    class Account:
        def __init__(self, number: int) -> None:
            self.number = number
            self.balance = 0

        @lock.guard("account:{self.number}")
        def deposit(self, amount: int) -> int:
            """Add ``amount``."""
            assert lock.locked(f"account:{self.number}")
            value = self.balance
            time.sleep(0)  # let other threads run between the read and the write
            self.balance = value + amount
            return self.balance

    first, second = Account(1), Account(2)
    assert first.deposit(5) == 5
    assert second.deposit(7) == 7
    assert Account.deposit.__name__ == "deposit"
    assert Account.deposit.__doc__ == "Add ``amount``."

    def many(account: Account) -> None:
        for _ in range(100):
            account.deposit(1)

    workers = [threads.start(partial(many, account)) for account in (first, second) * 2]
    for worker in workers:
        worker.result()
    assert (first.balance, second.balance) == (205, 207)


@pytest.mark.anyio
async def test_guard_on_async_methods(lock: KeyedLock) -> None:
    class Store:
        name = "main"

        @lock.guard("store:{self.name}:{item}")
        async def reserve(self, item: str) -> str:
            assert lock.locked(f"store:main:{item}")
            await anyio.lowlevel.checkpoint()
            return item

    assert await Store().reserve("apple") == "apple"
    assert len(lock) == 0


@pytest.mark.anyio
async def test_guarded_sync_function_is_refused_in_an_event_loop(lock: KeyedLock) -> None:
    @lock.guard("k")
    def work() -> None:
        pass

    with pytest.raises(RuntimeError, match="async with"):
        work()
