"""Argument checks done once, at the public boundary, with clear messages; and whether a
function is async, or returned something to await."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
from abc import get_cache_token
from collections.abc import Callable, Hashable
from types import CoroutineType, GeneratorType
from typing import Any, Final, Literal

from ._errors import shown_key

__all__ = [
    "OnError",
    "check_flag",
    "check_fn",
    "check_key",
    "check_max_threads",
    "check_max_waiters",
    "check_not_generator",
    "check_on_error",
    "check_sync_fn",
    "check_timeout",
    "check_ttl",
    "check_warn_after",
    "is_async_callable",
    "is_awaitable",
    "returned_coroutine",
    "seconds",
]

OnError = Literal["continue", "stop"]


def check_key(key: object) -> Hashable:
    """Return ``key`` if hashable; TypeError naming the problem otherwise."""
    try:
        hash(key)
    except TypeError:
        raise TypeError(
            f"keys must be hashable, got unhashable {type(key).__name__!r}: {shown_key(key)}"
        ) from None
    return key


def seconds(value: object, name: str, none: str = "") -> float:
    """``value``, a real number of seconds (``numbers.Real``: ``int``, ``float``,
    ``Fraction``, NumPy's numbers; not ``bool``), as a float: TypeError for anything else,
    naming the argument. An ``int`` (or other real) too large for a float is ``inf`` (or
    ``-inf``, for the checks to refuse).
    ``none`` is added to the message (" or None" where None is allowed)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds{none}, got {value!r}")
    real: Any = value  # (numbers.Real compares with 0; its stubs do not say so)
    try:
        return float(real)
    except OverflowError:  # longer than any float: forever (or refused, if negative)
        return math.inf if real > 0 else -math.inf


def check_timeout(timeout: float | None) -> float | None:
    """Normalize a timeout: None or ``inf`` waits forever, 0 tries once.

    Negative, NaN and non-numbers are refused.
    """
    if timeout is None:
        return None
    if type(timeout) is not float and type(timeout) is not int:  # (every usual call: no ABC)
        timeout = seconds(timeout, "timeout", " or None")
    if timeout != timeout:  # NaN
        raise ValueError("timeout must not be NaN")
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 (0 tries once), got {timeout!r}")
    if timeout == math.inf:
        return None
    try:
        return float(timeout)
    except OverflowError:  # an int beyond any float: longer than forever is forever
        return None


def check_on_error(on_error: object) -> bool:
    """True for ``"stop"``, False for ``"continue"``; ValueError otherwise."""
    if on_error == "continue":
        return False
    if on_error == "stop":
        return True
    raise ValueError(f"on_error must be 'continue' or 'stop', got {on_error!r}")


def check_max_waiters(max_waiters: int | None) -> int | None:
    if max_waiters is None:
        return None
    if isinstance(max_waiters, bool) or not isinstance(max_waiters, int):
        raise TypeError(f"max_waiters must be an int >= 0 or None, got {max_waiters!r}")
    if max_waiters < 0:
        raise ValueError(f"max_waiters must be >= 0 or None, got {max_waiters!r}")
    return max_waiters


def check_max_threads(max_threads: object) -> int:
    """A cap on helper threads: an int >= 1 (TypeError / ValueError otherwise)."""
    if isinstance(max_threads, bool) or not isinstance(max_threads, int):
        raise TypeError(f"max_threads must be an int >= 1, got {max_threads!r}")
    if max_threads < 1:
        raise ValueError(
            f"max_threads must be >= 1 (the most helper threads that wait for keys at once), "
            f"got {max_threads!r}"
        )
    return max_threads


def check_flag(value: object, name: str = "fast_acquire") -> bool:
    """A keyword flag: True or False exactly (TypeError for anything else)."""
    if value is True or value is False:
        return value
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_fn(fn: object) -> None:
    """TypeError unless ``fn`` is callable."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")


#: Callables whose type's ``__call__`` is C code, never a coroutine function: for these,
#: asking ``inspect`` about it (twice the cost of asking about ``fn``) can only say no.
_C_CALLED: Final = frozenset(
    {
        type,
        types.FunctionType,
        types.MethodType,
        types.BuiltinFunctionType,
        types.MethodWrapperType,
        types.WrapperDescriptorType,
        types.MethodDescriptorType,
        functools.partial,
    }
)


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for an ``async def`` function (or a partial of one), or an object whose
    ``__call__`` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    kind = type(fn)
    # (Looked up only for a type whose metaclass is ``type``: its hash and equality are
    # type's own. Another metaclass may define them, or leave the class unhashable.)
    known = type(kind) is type and kind in _C_CALLED
    return not known and inspect.iscoroutinefunction(kind.__call__)


#: ``type.__flags__`` bit of a class made at run time (``Py_TPFLAGS_HEAPTYPE``).
_HEAP_TYPE: Final = 1 << 9

#: static type -> the abc cache token when :func:`is_awaitable` found a value of it not
#: awaitable. Only static types (int, str, dict, ...: made once, by C code) are kept, so
#: nothing that a program makes and drops is kept alive, as abc keeps nothing either.
_plain: dict[type, object] = {}


def is_awaitable(value: object) -> bool:
    """``inspect.isawaitable(value)``, exactly: for the result of a function that may be
    sync or async, without its two frames and ABC check for the plain values of a sync one.

    For a value that is no coroutine nor generator and whose ``__class__`` is its
    type, that is ``isinstance(value, collections.abc.Awaitable)``: an answer of the
    type's, which the abc module keeps until an ABC registers a class (a new cache
    token). A False for a static type is kept here as long.
    """
    kind = type(value)
    if kind is CoroutineType:  # an async def's
        return True
    # Only a type whose metaclass is ``type`` is looked up or kept: its hash, equality and
    # ``__flags__`` are type's own (another metaclass may define them, or hide the flag).
    plain = type(kind) is type
    token = get_cache_token()  # (read first: a class registered meanwhile makes it old)
    if plain and _plain.get(kind) == token and value.__class__ is kind:
        return False
    answer = inspect.isawaitable(value)
    if (
        not answer
        and plain
        and not kind.__flags__ & _HEAP_TYPE
        and kind is not GeneratorType
        and value.__class__ is kind
    ):
        _plain[kind] = token
    return answer


def check_not_generator(fn: Callable[..., Any], decorator: str, why: str) -> None:
    """TypeError if ``fn`` is a generator function (``def`` or ``async def`` with ``yield``):
    calling it only makes the generator, and its body runs later, as it is iterated, out of
    the ``decorator``'s reach (``why`` says what would go wrong)."""
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"{decorator} cannot wrap the generator function {fn!r}: {why}")


def check_sync_fn(fn: object, what: str, instead: str) -> None:
    """TypeError unless ``fn`` is a callable that is not async (``what`` needs a sync one)."""
    check_fn(fn)
    assert callable(fn)
    if is_async_callable(fn):
        raise TypeError(f"{what} needs a sync function; use `{instead}` for {fn!r}")


def returned_coroutine(result: CoroutineType[Any, Any, Any], what: str, instead: str) -> TypeError:
    """The error for a sync ``fn`` that returned a coroutine (a lambda or wrapper around an
    ``async def``): its work would run after the key was let go, if ever. A coroutine not
    started yet is closed unrun, so that it does not warn later as never awaited (one
    already started belongs to whoever started it: it is left as it is)."""
    if inspect.getcoroutinestate(result) == inspect.CORO_CREATED:
        result.close()
    return TypeError(
        f"{what} needs a sync function, but fn returned a coroutine ({result.__qualname__}), "
        f"which it would never await; use `{instead}`"
    )


def check_warn_after(warn_after: object) -> float | None:
    """``warn_after``: None (off), or a finite number of seconds > 0."""
    if warn_after is None:
        return None
    value = seconds(warn_after, "warn_after", " or None")
    if not value > 0 or math.isinf(value):
        raise ValueError(f"warn_after must be a finite number of seconds > 0, got {warn_after!r}")
    return value


def check_ttl(ttl: object) -> float:
    """A single-flight ``ttl``: a finite number of seconds >= 0."""
    value = seconds(ttl, "ttl")
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"ttl must be a finite number of seconds >= 0, got {ttl!r}")
    return value
