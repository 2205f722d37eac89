"""``is_awaitable`` answers as ``inspect.isawaitable`` does, the first time and the next;
``is_async_callable`` as asking ``inspect`` about a callable and about its type's ``__call__``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import types
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import pytest

from keyedlock._validate import is_async_callable, is_awaitable


class Waitable:
    def __await__(self) -> Generator[Any, None, int]:
        yield
        return 1


class NotWaitable(Waitable):
    __await__ = None  # type: ignore[assignment]


class Proxy:
    """An object that says it is of another class (as wrapt's proxies say they are of their
    target's)."""

    def __init__(self, says: type) -> None:
        self.says = says

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        return self.says


class _HidesFlagsMeta(type):
    """A metaclass whose attribute hides its classes' ``__flags__`` (a heap class)."""

    __flags__ = 0


async def coroutine_function() -> int:
    return 1


@types.coroutine
def generator_coroutine() -> Generator[Any, None, int]:
    yield
    return 1


def generator() -> Generator[int, None, None]:
    yield 1


def plain() -> int:
    return 1


def same_answers(value: object, expected: bool) -> None:
    assert inspect.isawaitable(value) is expected
    for _ in range(3):  # (the first answer is looked up, the next ones may be kept)
        assert is_awaitable(value) is expected


@pytest.mark.parametrize(
    "value", [1, None, "s", b"b", 1.5, (), [], {}, object(), plain, NotWaitable(), Proxy(int)]
)
def test_a_plain_value_is_not_awaitable(value: object) -> None:
    same_answers(value, False)


def test_a_type_that_defines_await_is_awaitable() -> None:
    same_answers(Waitable(), True)


@pytest.mark.parametrize(
    "make", [coroutine_function, generator_coroutine, generator], ids=lambda f: f.__name__
)
def test_coroutines_and_generators(make: Callable[[], Any]) -> None:
    first, second = make(), make()  # (the second after an answer for the first was kept)
    try:
        same_answers(first, make is not generator)
        same_answers(second, make is not generator)
    finally:
        first.close()
        second.close()


def test_a_generator_found_plain_leaves_generator_coroutines_awaitable() -> None:
    plain_one, coroutine = generator(), generator_coroutine()
    try:
        same_answers(plain_one, False)
        same_answers(coroutine, True)  # (a generator too: its code's flag says so)
    finally:
        plain_one.close()
        coroutine.close()


def test_an_asyncio_future_is_awaitable() -> None:
    loop = asyncio.new_event_loop()
    try:
        same_answers(loop.create_future(), True)
    finally:
        loop.close()


def test_an_object_answers_for_the_class_it_says_it_is_of() -> None:
    same_answers(Proxy(Proxy), False)
    same_answers(Proxy(types.CoroutineType), True)  # (of a type found plain just before)


def test_a_class_registered_after_a_no_is_awaitable() -> None:
    class Late:
        pass

    same_answers(Late(), False)
    Awaitable.register(Late)
    same_answers(Late(), True)


def test_answers_stay_right_for_many_classes() -> None:
    kinds = [type(f"Kind{i}", (), {}) for i in range(600)]
    for kind in kinds:
        same_answers(kind(), False)
    same_answers(Waitable(), True)
    same_answers(kinds[0](), False)


@pytest.mark.parametrize("metaclass", [type, "hides its flags"])
def test_a_type_found_plain_is_not_kept_alive(metaclass: type | str) -> None:
    """inspect.isawaitable keeps nothing alive (abc's caches are weak): neither may this, for
    a class made per call (as dataclasses.make_dataclass or a factory makes one), even one
    whose metaclass hides the flag that tells a class made at run time."""
    import gc
    import weakref

    meta = _HidesFlagsMeta if metaclass == "hides its flags" else type

    def make() -> object:
        return meta("Local", (), {})()

    value = make()
    kind = weakref.ref(type(value))
    same_answers(value, False)
    del value
    gc.collect()
    assert kind() is None


def test_a_value_returned_through_do_is_not_kept_alive() -> None:
    """A MagicMock's class refers to the mock (its magic methods' proxies): kept, the class
    would keep the value a sync fn returned to ``SingleFlight.do`` alive after the call."""
    import gc
    import weakref
    from unittest.mock import MagicMock

    from keyedlock import SingleFlight

    flight = SingleFlight()
    value = asyncio.run(flight.do("k", MagicMock))
    ref = weakref.ref(value)
    del value
    gc.collect()
    assert ref() is None


class _AsyncCall:
    async def __call__(self) -> None:
        return None


class _SyncCall:
    def __call__(self) -> None:
        return None


async def _async_fn() -> None:
    return None


def _sync_fn() -> None:
    return None


@pytest.mark.parametrize(
    "fn",
    [
        _sync_fn,
        _async_fn,
        functools.partial(_async_fn),
        functools.partial(_sync_fn),
        _AsyncCall(),
        _SyncCall(),
        _AsyncCall().__call__,
        _SyncCall().__call__,
        len,
        dict,
        [].append,
        object.__init__,
        str.upper,
        (1).__add__,
        type("Meta", (type,), {"__call__": _AsyncCall.__call__})("K", (), {}),
    ],
)
def test_is_async_callable_asks_about_call_only_where_it_can_be_async(fn: Any) -> None:
    """Skipping the question about ``type(fn).__call__`` for the C-called types changes no
    answer: the same as asking about both."""
    both = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)
    assert is_async_callable(fn) == both


class _EqualMeta(type):
    """A metaclass with an equality of its own: its classes are unhashable."""

    def __eq__(cls, other: object) -> bool:
        return cls is other


class _SaysFunctionMeta(type):
    """A metaclass whose classes hash and compare as ``FunctionType``."""

    def __eq__(cls, other: object) -> bool:
        return other is types.FunctionType or cls is other

    def __hash__(cls) -> int:
        return hash(types.FunctionType)


def test_a_class_with_an_unhashable_metaclass_is_answered() -> None:
    """A class whose metaclass defines ``__eq__`` is unhashable: asked about one of its
    callables, the check answers as ``inspect`` does, and never hashes it (about one of
    its values, ``inspect.isawaitable`` itself raises: abc hashes the class)."""

    class Handler(metaclass=_EqualMeta):
        def __call__(self) -> int:
            return 1

    class AsyncHandler(metaclass=_EqualMeta):
        async def __call__(self) -> int:
            return 1

    with pytest.raises(TypeError, match="unhashable") as expected:
        inspect.isawaitable(Handler())
    with pytest.raises(TypeError, match=str(expected.value)):
        is_awaitable(Handler())
    assert is_async_callable(Handler()) is False
    assert is_async_callable(AsyncHandler()) is True


def test_a_class_that_compares_equal_to_a_c_called_type_is_asked_about() -> None:
    """Equal to ``FunctionType`` by its metaclass's word: its async ``__call__`` is still
    found (no metaclass's equality decides)."""

    class AsyncHandler(metaclass=_SaysFunctionMeta):
        async def __call__(self) -> int:
            return 1

    assert is_async_callable(AsyncHandler()) is True


def test_do_sync_and_do_take_a_callable_of_an_unhashable_metaclass() -> None:
    from keyedlock import SingleFlight

    class Handler(metaclass=_EqualMeta):
        def __call__(self) -> int:
            return 1

    flight = SingleFlight()
    assert flight.do_sync("k", Handler()) == 1

    async def main() -> int:
        return await flight.do("k", Handler())

    assert asyncio.run(main()) == 1
