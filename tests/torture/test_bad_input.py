"""Bad input at every public entry point: the documented exception, a clear message, no trace.

Each case is a row of a table: what to call, the exception the README's "Errors" section and the
docstrings promise (``TypeError`` for a wrong type or an unhashable or unsupported key,
``ValueError`` for a value out of range, ``RuntimeError`` for misuse), and a regex its message
must match. After every case the object must still work: nothing held or queued
(``len() == 0``, the keys the cases use are free) and a normal acquire and release, or a
single-flight call, succeeds.

The lock API is swept over its three scopes (:class:`~keyedlock.KeyedLock`,
:class:`~keyedlock.FileKeyedLock`, the manager's
:class:`~keyedlock.multiprocessing.KeyedLockProxy`), single-flight over
:class:`~keyedlock.SingleFlight` and the manager's
:class:`~keyedlock.multiprocessing.SingleFlightProxy`. Async cases run under asyncio and trio;
"outside any event loop" cases drive the coroutine by hand in a thread that runs no loop.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from keyedlock import FileKeyedLock, KeyedLock, LockContext, LockTimeout, SingleFlight
from keyedlock.multiprocessing import KeyedLockManager, KeyedLockProxy, SingleFlightProxy

from ..support import WAIT, start_thread, wait_until

pytestmark = [
    # The manager process is forked while helper threads of earlier tests may linger.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

AnyLock = KeyedLock | FileKeyedLock | KeyedLockProxy
AnyFlight = SingleFlight | SingleFlightProxy
LockCall = Callable[[Any], object]
AsyncLockCall = Callable[[Any], Coroutine[Any, Any, object]]

LOCKS = ["KeyedLock", "FileKeyedLock", "KeyedLockProxy"]
FLIGHTS = ["SingleFlight", "SingleFlightProxy"]
#: The key every misuse case uses, and the one the usability check takes afterwards.
KEY = "k"
USABLE = "usable"
#: An int too large for a float: still a number of seconds, and a finite one.
HUGE = 10**400

HAS_FORK = "fork" in multiprocessing.get_all_start_methods()
LINUX = sys.platform.startswith("linux")


def nothing() -> None:
    pass


async def nothing_async() -> None:
    pass


class BadUnpickle:
    """Hashable and picklable here, but its pickle cannot be loaded (in the manager)."""

    def __hash__(self) -> int:
        return 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BadUnpickle)

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, ("not a number",))


def untyped(fn: object) -> Any:
    """``fn``, to call with arguments its signature refuses (what the tests are about)."""
    return fn


def drive(coroutine: Coroutine[Any, Any, object]) -> object:
    """Run ``coroutine`` in this thread, which runs no event loop, up to its first suspension."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    finally:
        coroutine.close()
    raise AssertionError("the coroutine suspended outside any event loop instead of raising")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manager() -> Iterator[KeyedLockManager]:
    if not HAS_FORK:
        pytest.skip("the manager tests start the manager with fork")
    with KeyedLockManager(ctx=multiprocessing.get_context("fork")) as running:
        yield running


def make_lock(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> AnyLock:
    if kind == "KeyedLock":
        return KeyedLock()
    if kind == "FileKeyedLock":
        if not LINUX:
            pytest.skip("FileKeyedLock needs Linux")
        return FileKeyedLock(tmp_path / "keys.lock")
    running: KeyedLockManager = request.getfixturevalue("manager")
    return running.KeyedLock()


def make_flight(kind: str, request: pytest.FixtureRequest) -> AnyFlight:
    if kind == "SingleFlight":
        return SingleFlight()
    running: KeyedLockManager = request.getfixturevalue("manager")
    return running.SingleFlight()


def assert_usable(lock: AnyLock) -> None:
    """Nothing is left held or queued, and the lock still works (from a thread)."""
    assert len(lock) == 0, f"keys left behind: {lock!r}"
    for key in (KEY, USABLE):
        assert not lock.locked(key), f"{key!r} is left held"
        assert lock.waiters(key) == 0
    assert lock.acquire(USABLE, timeout=WAIT)
    assert lock.locked(USABLE)
    lock.release(USABLE)
    with lock(USABLE, timeout=WAIT):
        assert lock.locked(USABLE)
    assert not lock.locked(USABLE)
    assert len(lock) == 0


async def assert_usable_async(lock: AnyLock) -> None:
    """As :func:`assert_usable`, from an asyncio or trio task."""
    assert len(lock) == 0, f"keys left behind: {lock!r}"
    assert not lock.locked(KEY)
    assert await lock.acquire_async(USABLE, timeout=WAIT)
    lock.release(USABLE)
    async with lock(USABLE, timeout=WAIT):
        assert lock.locked(USABLE)
    assert len(lock) == 0


def assert_flight_usable(flight: AnyFlight) -> None:
    assert len(flight) == 0, f"calls left in flight: {flight!r}"
    assert not flight.in_flight(KEY)
    assert flight.do_sync(USABLE, lambda: 42) == 42
    assert not flight.in_flight(USABLE)
    assert len(flight) == 0


@pytest.fixture(params=LOCKS)
def any_lock(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyLock]:
    lock = make_lock(request.param, request, tmp_path)
    yield lock
    assert_usable(lock)


@pytest.fixture
def file_lock(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyLock]:
    lock = make_lock("FileKeyedLock", request, tmp_path)
    yield lock
    assert_usable(lock)


@pytest.fixture
def proxy_lock(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyLock]:
    lock = make_lock("KeyedLockProxy", request, tmp_path)
    yield lock
    assert_usable(lock)


@pytest.fixture(params=FLIGHTS)
def any_flight(request: pytest.FixtureRequest) -> Iterator[AnyFlight]:
    flight = make_flight(request.param, request)
    yield flight
    assert_flight_usable(flight)


@pytest.fixture
def proxy_flight(request: pytest.FixtureRequest) -> Iterator[AnyFlight]:
    flight = make_flight("SingleFlightProxy", request)
    yield flight
    assert_flight_usable(flight)


# -- keys ---------------------------------------------------------------------------------------


def use_with(lock: Any, key: Any) -> None:
    with lock(key):
        pass


async def use_async_with(lock: Any, key: Any) -> None:
    async with lock(key):
        pass


#: Every lock entry point that takes a key, from a thread.
KEY_USES: dict[str, Callable[[Any, Any], object]] = {
    "with": use_with,
    "acquire": lambda lock, key: lock.acquire(key),
    "acquire(timeout)": lambda lock, key: lock.acquire(key, timeout=WAIT),
    "acquire(blocking=False)": lambda lock, key: lock.acquire(key, blocking=False),
    "release": lambda lock, key: lock.release(key),
    "locked": lambda lock, key: lock.locked(key),
    "waiters": lambda lock, key: lock.waiters(key),
    "run_sync": lambda lock, key: lock.run_sync(key, nothing),
    "guard (key callable)": lambda lock, key: lock.guard(lambda: key)(nothing)(),
}

#: The same, from an asyncio or trio task.
ASYNC_KEY_USES: dict[str, Callable[[Any, Any], Coroutine[Any, Any, object]]] = {
    "async with": use_async_with,
    "acquire_async": lambda lock, key: lock.acquire_async(key),
    "acquire_async(timeout=0)": lambda lock, key: lock.acquire_async(key, timeout=0),
    "run": lambda lock, key: lock.run(key, nothing),
    "guard async (key callable)": lambda lock, key: lock.guard(lambda: key)(nothing_async)(),
}

#: Single-flight entry points that take a key, from a thread.
FLIGHT_KEY_USES: dict[str, Callable[[Any, Any], object]] = {
    "do_sync": lambda flight, key: flight.do_sync(key, nothing),
    "do_sync_ex": lambda flight, key: flight.do_sync_ex(key, nothing),
    "forget": lambda flight, key: flight.forget(key),
    "in_flight": lambda flight, key: flight.in_flight(key),
    "coalesce (key callable)": lambda flight, key: flight.coalesce(lambda: key)(nothing)(),
}

ASYNC_FLIGHT_KEY_USES: dict[str, Callable[[Any, Any], Coroutine[Any, Any, object]]] = {
    "do": lambda flight, key: flight.do(key, nothing),
    "do_ex": lambda flight, key: flight.do_ex(key, nothing_async),
    "coalesce async (key callable)": lambda flight, key: flight.coalesce(lambda: key)(
        nothing_async
    )(),
}

#: Unhashable keys: a TypeError that says so, in every scope.
UNHASHABLE: list[Any] = [[KEY], {KEY: 1}, {KEY}, bytearray(b"k")]

#: Hashable keys FileKeyedLock refuses (only str, bytes and int; bool is refused).
FILE_UNSUPPORTED: list[tuple[Any, str]] = [
    (1.5, "str, bytes or int"),
    (math.nan, "str, bytes or int"),
    (None, "str, bytes or int"),
    ((KEY, 1), "str, bytes or int"),
    (frozenset({KEY}), "str, bytes or int"),
    (object(), "str, bytes or int"),
    (memoryview(b"k"), "str, bytes or int"),
    (True, "bool"),
    (False, "bool"),
]

#: Hashable keys the manager cannot take: they do not pickle, or not back in the manager.
UNPICKLABLE: list[Any] = [threading.Lock(), lambda: None, BadUnpickle()]


def key_id(key: object) -> str:
    return type(key).__name__


@pytest.mark.parametrize("key", UNHASHABLE, ids=key_id)
@pytest.mark.parametrize("use", KEY_USES.values(), ids=KEY_USES.keys())
def test_unhashable_keys(any_lock: AnyLock, use: Callable[[Any, Any], object], key: Any) -> None:
    with pytest.raises(TypeError, match="unhashable"):
        use(any_lock, key)


@pytest.mark.anyio
@pytest.mark.parametrize("key", UNHASHABLE, ids=key_id)
@pytest.mark.parametrize("use", ASYNC_KEY_USES.values(), ids=ASYNC_KEY_USES.keys())
async def test_unhashable_keys_in_tasks(
    any_lock: AnyLock, use: Callable[[Any, Any], Coroutine[Any, Any, object]], key: Any
) -> None:
    with pytest.raises(TypeError, match="unhashable"):
        await use(any_lock, key)
    await assert_usable_async(any_lock)


@pytest.mark.parametrize(("key", "match"), FILE_UNSUPPORTED, ids=key_id)
@pytest.mark.parametrize("use", KEY_USES.values(), ids=KEY_USES.keys())
def test_file_lock_keys_are_str_bytes_or_int(
    file_lock: AnyLock, use: Callable[[Any, Any], object], key: Any, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        use(file_lock, key)


@pytest.mark.anyio
@pytest.mark.parametrize(("key", "match"), FILE_UNSUPPORTED, ids=key_id)
@pytest.mark.parametrize("use", ASYNC_KEY_USES.values(), ids=ASYNC_KEY_USES.keys())
async def test_file_lock_keys_are_str_bytes_or_int_in_tasks(
    file_lock: AnyLock,
    use: Callable[[Any, Any], Coroutine[Any, Any, object]],
    key: Any,
    match: str,
) -> None:
    with pytest.raises(TypeError, match=match):
        await use(file_lock, key)
    await assert_usable_async(file_lock)


class StrKey(str):
    """A str subclass: a str key like any other."""


class _EqualMeta(type):
    """A metaclass with an equality of its own: its classes are unhashable."""

    def __eq__(cls, other: object) -> bool:
        return cls is other


class OddStrKey(str, metaclass=_EqualMeta):
    """A str subclass whose class is unhashable: a str key still (the key types are
    compared, never hashed)."""


@pytest.mark.parametrize(
    "key", [7, -(2**200), "", b"", "\udcff", StrKey("sub"), OddStrKey("odd")], ids=repr
)
def test_file_lock_takes_every_str_bytes_and_int(file_lock: AnyLock, key: Any) -> None:
    """The supported key types, odd values included, work (the control of the sweep above)."""
    with file_lock(key, timeout=WAIT):
        assert file_lock.locked(key)
    assert not file_lock.locked(key)


@pytest.mark.parametrize("key", UNPICKLABLE, ids=key_id)
@pytest.mark.parametrize("use", KEY_USES.values(), ids=KEY_USES.keys())
def test_manager_keys_must_pickle(
    proxy_lock: AnyLock, use: Callable[[Any, Any], object], key: Any
) -> None:
    with pytest.raises(TypeError, match="pickl"):
        use(proxy_lock, key)


@pytest.mark.anyio
@pytest.mark.parametrize("key", UNPICKLABLE, ids=key_id)
@pytest.mark.parametrize("use", ASYNC_KEY_USES.values(), ids=ASYNC_KEY_USES.keys())
async def test_manager_keys_must_pickle_in_tasks(
    proxy_lock: AnyLock, use: Callable[[Any, Any], Coroutine[Any, Any, object]], key: Any
) -> None:
    with pytest.raises(TypeError, match="pickl"):
        await use(proxy_lock, key)
    await assert_usable_async(proxy_lock)


@pytest.mark.parametrize("key", UNHASHABLE, ids=key_id)
@pytest.mark.parametrize("use", FLIGHT_KEY_USES.values(), ids=FLIGHT_KEY_USES.keys())
def test_single_flight_unhashable_keys(
    any_flight: AnyFlight, use: Callable[[Any, Any], object], key: Any
) -> None:
    with pytest.raises(TypeError, match="unhashable"):
        use(any_flight, key)


@pytest.mark.anyio
@pytest.mark.parametrize("key", UNHASHABLE, ids=key_id)
@pytest.mark.parametrize("use", ASYNC_FLIGHT_KEY_USES.values(), ids=ASYNC_FLIGHT_KEY_USES.keys())
async def test_single_flight_unhashable_keys_in_tasks(
    any_flight: AnyFlight, use: Callable[[Any, Any], Coroutine[Any, Any, object]], key: Any
) -> None:
    with pytest.raises(TypeError, match="unhashable"):
        await use(any_flight, key)


@pytest.mark.parametrize("key", UNPICKLABLE, ids=key_id)
@pytest.mark.parametrize("use", FLIGHT_KEY_USES.values(), ids=FLIGHT_KEY_USES.keys())
def test_manager_single_flight_keys_must_pickle(
    proxy_flight: AnyFlight, use: Callable[[Any, Any], object], key: Any
) -> None:
    with pytest.raises(TypeError, match="pickl"):
        use(proxy_flight, key)


UNEQUAL_TO_ITSELF: list[Any] = [math.nan, ("order", math.nan)]


def acquire_and_release(lock: Any, key: Any) -> None:
    assert lock.acquire(key, timeout=WAIT)
    lock.release(key)


@pytest.mark.parametrize("key", UNEQUAL_TO_ITSELF, ids=["nan", "tuple-with-nan"])
@pytest.mark.parametrize("take", [acquire_and_release, use_with], ids=["acquire", "with"])
def test_a_key_unequal_to_itself_never_sticks_in_the_manager(
    manager: KeyedLockManager, take: Callable[[Any, Any], None], key: Any
) -> None:
    """NaN is hashable and picklable, but the copy the manager unpickles never equals the key
    it holds: refused at once (TypeError), or released like any key; never held for good."""
    proxy_lock = manager.KeyedLock()
    with contextlib.suppress(TypeError):  # refused at the boundary: fine
        take(proxy_lock, key)
    assert len(proxy_lock) == 0, f"{key!r} is held for good in the manager"


@pytest.mark.parametrize("key", UNEQUAL_TO_ITSELF, ids=["nan", "tuple-with-nan"])
def test_a_call_keyed_unequal_to_itself_never_sticks_in_the_manager(
    manager: KeyedLockManager, key: Any
) -> None:
    proxy_flight = manager.SingleFlight()
    with contextlib.suppress(TypeError):  # refused at the boundary: fine
        assert proxy_flight.do_sync(key, lambda: 42) == 42
    assert len(proxy_flight) == 0, f"a call of {key!r} is in flight for good in the manager"


# -- timeouts -----------------------------------------------------------------------------------

BAD_TIMEOUTS: list[tuple[Any, type[Exception], str]] = [
    (-1, ValueError, ">= 0"),
    (-1e-9, ValueError, ">= 0"),
    (-math.inf, ValueError, ">= 0"),
    (math.nan, ValueError, "NaN"),
    ("1", TypeError, "number"),
    (b"1", TypeError, "number"),
    (True, TypeError, "number"),
    (1j, TypeError, "number"),
    ([1], TypeError, "number"),
    (Decimal("1"), TypeError, "number"),  # a number, but not a real one (numbers.Real)
    (Fraction(-HUGE, 3), ValueError, ">= 0"),  # (too large for a float, and negative)
]

TIMEOUT_USES: dict[str, Callable[[Any, Any], object]] = {
    "klock(key)": lambda lock, timeout: lock(KEY, timeout=timeout),
    "acquire": lambda lock, timeout: lock.acquire(KEY, timeout=timeout),
    "run_sync": lambda lock, timeout: lock.run_sync(KEY, nothing, timeout=timeout),
    "guard": lambda lock, timeout: lock.guard(KEY, timeout=timeout),
}

ASYNC_TIMEOUT_USES: dict[str, Callable[[Any, Any], Coroutine[Any, Any, object]]] = {
    "acquire_async": lambda lock, timeout: lock.acquire_async(KEY, timeout=timeout),
    "run": lambda lock, timeout: lock.run(KEY, nothing, timeout=timeout),
}


def value_id(value: object) -> str:
    return repr(value) if not isinstance(value, type) else value.__name__


@pytest.mark.parametrize(("timeout", "error", "match"), BAD_TIMEOUTS, ids=value_id)
@pytest.mark.parametrize("use", TIMEOUT_USES.values(), ids=TIMEOUT_USES.keys())
def test_bad_timeouts(
    any_lock: AnyLock,
    use: Callable[[Any, Any], object],
    timeout: Any,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        use(any_lock, timeout)


@pytest.mark.anyio
@pytest.mark.parametrize(("timeout", "error", "match"), BAD_TIMEOUTS, ids=value_id)
@pytest.mark.parametrize("use", ASYNC_TIMEOUT_USES.values(), ids=ASYNC_TIMEOUT_USES.keys())
async def test_bad_timeouts_in_tasks(
    any_lock: AnyLock,
    use: Callable[[Any, Any], Coroutine[Any, Any, object]],
    timeout: Any,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        await use(any_lock, timeout)
    await assert_usable_async(any_lock)


@pytest.mark.parametrize("timeout", [1, 0, math.inf, math.nan, "1"], ids=repr)
def test_a_non_blocking_acquire_takes_no_timeout(any_lock: AnyLock, timeout: Any) -> None:
    with pytest.raises(ValueError, match="non-blocking"):
        any_lock.acquire(KEY, blocking=False, timeout=timeout)


#: Timeouts with no practical end: each one simply waits (as None does).
UNBOUNDED = [math.inf, 1e300]
UNBOUNDED_IDS = ["inf", "1e300"]


def with_timeout(lock: Any, timeout: Any) -> bool:
    with lock(KEY, timeout=timeout):
        return bool(lock.locked(KEY))


def acquire_release(lock: Any, timeout: Any) -> bool:
    acquired = bool(lock.acquire(KEY, timeout=timeout))
    lock.release(KEY)
    return acquired


def guarded_call(lock: Any, timeout: Any) -> bool:
    return bool(lock.guard(KEY, timeout=timeout)(lambda: lock.locked(KEY))())


UNBOUNDED_USES: dict[str, Callable[[Any, Any], bool]] = {
    "with": with_timeout,
    "acquire": acquire_release,
    "run_sync": lambda lock, timeout: bool(
        lock.run_sync(KEY, lambda: lock.locked(KEY), timeout=timeout)
    ),
    "guard": guarded_call,
}


@pytest.mark.parametrize("timeout", UNBOUNDED, ids=UNBOUNDED_IDS)
@pytest.mark.parametrize("use", UNBOUNDED_USES.values(), ids=UNBOUNDED_USES.keys())
def test_unbounded_timeouts_are_accepted(
    any_lock: AnyLock, use: Callable[[Any, Any], bool], timeout: Any
) -> None:
    assert use(any_lock, timeout) is True


def test_a_timeout_too_large_for_a_float_is_accepted(any_lock: AnyLock) -> None:
    """10**400 seconds is a number >= 0, and finite: it waits like 1e300 does."""
    for name, use in UNBOUNDED_USES.items():
        assert use(any_lock, HUGE) is True, name


def test_a_real_number_that_is_not_a_float_is_a_timeout(any_lock: AnyLock) -> None:
    """Any ``numbers.Real`` is a number of seconds (a Fraction here; NumPy's numbers too), as
    for ``threading.Lock``; and one too large for a float waits like ``inf``."""
    for name, use in UNBOUNDED_USES.items():
        assert use(any_lock, Fraction(1, 2)) is True, name
        assert use(any_lock, Fraction(HUGE, 3)) is True, name


async def async_with_timeout(lock: Any, timeout: Any) -> bool:
    async with lock(KEY, timeout=timeout):
        return bool(lock.locked(KEY))


async def acquire_async_release(lock: Any, timeout: Any) -> bool:
    acquired = bool(await lock.acquire_async(KEY, timeout=timeout))
    lock.release(KEY)
    return acquired


async def run_timeout(lock: Any, timeout: Any) -> bool:
    return bool(await lock.run(KEY, lambda: lock.locked(KEY), timeout=timeout))


ASYNC_UNBOUNDED_USES: dict[str, Callable[[Any, Any], Coroutine[Any, Any, bool]]] = {
    "async with": async_with_timeout,
    "acquire_async": acquire_async_release,
    "run": run_timeout,
}


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", UNBOUNDED, ids=UNBOUNDED_IDS)
@pytest.mark.parametrize("use", ASYNC_UNBOUNDED_USES.values(), ids=ASYNC_UNBOUNDED_USES.keys())
async def test_unbounded_timeouts_are_accepted_in_tasks(
    any_lock: AnyLock, use: Callable[[Any, Any], Coroutine[Any, Any, bool]], timeout: Any
) -> None:
    assert await use(any_lock, timeout) is True
    await assert_usable_async(any_lock)


@pytest.mark.parametrize("timeout", UNBOUNDED, ids=UNBOUNDED_IDS)
def test_an_unbounded_timeout_waits_for_the_key(any_lock: AnyLock, timeout: Any) -> None:
    """Queued behind a holder, an unbounded timeout neither fails nor gives up: it waits."""

    def waiter() -> bool:
        acquired = bool(any_lock.acquire(KEY, timeout=timeout))
        if acquired:
            any_lock.release(KEY)
        return acquired

    assert any_lock.acquire(KEY)
    try:
        handle = start_thread(waiter, "unbounded-waiter")
        wait_until(
            lambda: any_lock.waiters(KEY) == 1 or handle.finished.is_set(), "the waiter queued"
        )
        assert not handle.finished.is_set(), "the waiter did not wait"
    finally:
        any_lock.release(KEY)
    assert handle.result() is True


# -- on_error and max_waiters ---------------------------------------------------------------------

BAD_ON_ERROR: list[Any] = ["abort", "STOP", "Stop", " stop", "", None, True, False, 0, ["stop"]]

ON_ERROR_USES: dict[str, Callable[[Any, Any], object]] = {
    "run_sync": lambda lock, on_error: lock.run_sync(KEY, nothing, on_error=on_error),
    "guard": lambda lock, on_error: lock.guard(KEY, on_error=on_error),
    "guard (async def)": lambda lock, on_error: lock.guard(KEY, on_error=on_error)(nothing_async),
}


@pytest.mark.parametrize("on_error", BAD_ON_ERROR, ids=repr)
@pytest.mark.parametrize("use", ON_ERROR_USES.values(), ids=ON_ERROR_USES.keys())
def test_bad_on_error(any_lock: AnyLock, use: Callable[[Any, Any], object], on_error: Any) -> None:
    with pytest.raises(ValueError, match="on_error must be 'continue' or 'stop'"):
        use(any_lock, on_error)


@pytest.mark.anyio
@pytest.mark.parametrize("on_error", BAD_ON_ERROR, ids=repr)
async def test_bad_on_error_in_tasks(any_lock: AnyLock, on_error: Any) -> None:
    with pytest.raises(ValueError, match="on_error must be 'continue' or 'stop'"):
        await any_lock.run(KEY, nothing_async, on_error=on_error)
    await assert_usable_async(any_lock)


BAD_MAX_WAITERS: list[tuple[Any, type[Exception], str]] = [
    (-1, ValueError, "max_waiters must be >= 0"),
    (-(2**70), ValueError, "max_waiters must be >= 0"),
    (True, TypeError, "max_waiters must be an int"),
    (False, TypeError, "max_waiters must be an int"),
    (1.5, TypeError, "max_waiters must be an int"),
    (2.0, TypeError, "max_waiters must be an int"),
    (math.inf, TypeError, "max_waiters must be an int"),
    (math.nan, TypeError, "max_waiters must be an int"),
    ("2", TypeError, "max_waiters must be an int"),
]


def lock_maker(kind: str) -> Callable[[pytest.FixtureRequest, Path, Any], object]:
    def make(request: pytest.FixtureRequest, tmp_path: Path, max_waiters: Any) -> object:
        if kind == "KeyedLock":
            return KeyedLock(max_waiters=max_waiters)
        if kind == "FileKeyedLock":
            if not LINUX:
                pytest.skip("FileKeyedLock needs Linux")
            return FileKeyedLock(tmp_path / "keys.lock", max_waiters=max_waiters)
        running: KeyedLockManager = request.getfixturevalue("manager")
        return running.KeyedLock(max_waiters=max_waiters)

    return make


@pytest.mark.parametrize(("max_waiters", "error", "match"), BAD_MAX_WAITERS, ids=value_id)
@pytest.mark.parametrize("kind", LOCKS)
def test_bad_max_waiters(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    kind: str,
    max_waiters: Any,
    error: type[Exception],
    match: str,
) -> None:
    with pytest.raises(error, match=match):
        lock_maker(kind)(request, tmp_path, max_waiters)


@pytest.mark.parametrize("kind", LOCKS)
def test_good_max_waiters_are_kept(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    for max_waiters in (None, 0, 1, 2**70):
        made = lock_maker(kind)(request, tmp_path, max_waiters)
        assert isinstance(made, KeyedLock | FileKeyedLock | KeyedLockProxy)
        assert made.max_waiters == max_waiters
        assert_usable(made)


# -- misuse of the lock API, from a thread -------------------------------------------------


def release_twice(lock: Any) -> None:
    assert lock.acquire(KEY)
    lock.release(KEY)
    lock.release(KEY)


def exit_twice(lock: Any) -> None:
    ctx = lock(KEY)
    ctx.__enter__()
    ctx.__exit__(None, None, None)
    ctx.__exit__(None, None, None)


def exit_without_enter(lock: Any) -> None:
    lock(KEY).__exit__(None, None, None)


def reuse_context(lock: Any) -> None:
    ctx = lock(KEY)
    with ctx:
        pass
    with ctx:
        raise AssertionError("a used context entered again")


def reuse_context_in_its_body(lock: Any) -> None:
    ctx = lock(KEY)
    with ctx, ctx:
        raise AssertionError("a context entered twice at once")


def nested_with(lock: Any) -> None:
    with lock(KEY), lock(KEY):
        raise AssertionError("a key taken twice by one owner")


def reacquire(lock: Any) -> None:
    with lock(KEY):
        lock.acquire(KEY)


def reacquire_with_timeout(lock: Any) -> None:
    with lock(KEY):
        lock.acquire(KEY, timeout=WAIT)


def run_sync_while_holding(lock: Any) -> None:
    with lock(KEY):
        lock.run_sync(KEY, nothing)


def exit_twice_after_an_exception(lock: Any) -> None:
    ctx = lock(KEY)
    ctx.__enter__()
    ctx.__exit__(ValueError, ValueError("body"), None)
    ctx.__exit__(ValueError, ValueError("body"), None)


#: (call, exception, message regex): misuse from a thread, in every scope.
LOCK_MISUSE: dict[str, tuple[LockCall, type[Exception], str]] = {
    "release of a key never acquired": (
        lambda lock: lock.release("never"),
        RuntimeError,
        "release of key 'never', which is not held",
    ),
    "release twice": (release_twice, RuntimeError, "which is not held"),
    "exit twice": (exit_twice, RuntimeError, "not entered"),
    "exit twice after an exception": (exit_twice_after_an_exception, RuntimeError, "not entered"),
    "exit without enter": (exit_without_enter, RuntimeError, "not entered"),
    "context reused": (reuse_context, RuntimeError, "already used"),
    "context entered twice at once": (reuse_context_in_its_body, RuntimeError, "already used"),
    "nested with of one key": (nested_with, RuntimeError, "already held by this owner"),
    "blocking re-acquire": (reacquire, RuntimeError, "already held by this owner"),
    "re-acquire with a timeout": (reacquire_with_timeout, RuntimeError, "already held"),
    "run_sync while holding": (run_sync_while_holding, RuntimeError, "already held"),
    "run_sync of an async def": (
        lambda lock: lock.run_sync(KEY, nothing_async),
        TypeError,
        "run_sync needs a sync function",
    ),
    "run_sync of a non-callable": (
        lambda lock: lock.run_sync(KEY, 42),
        TypeError,
        "fn must be callable",
    ),
    "guard: key neither template nor callable": (
        lambda lock: lock.guard(42)(nothing),
        TypeError,
        "str.format template or a callable",
    ),
    "guard: field that is not a parameter": (
        lambda lock: lock.guard("user:{user}")(nothing),
        ValueError,
        r"names \{user\}, which is not a parameter",
    ),
    "guard: malformed template": (
        lambda lock: lock.guard("user:{")(nothing),
        ValueError,
        "invalid key template",
    ),
    "guard: positional field of a function without parameters": (
        lambda lock: lock.guard("user:{0}")(nothing),
        ValueError,
        r"\{0\}",
    ),
    "guard: positional field past the positional parameters": (
        lambda lock: lock.guard("{0}:{1}")(lambda user: user),
        ValueError,
        r"\{1\}",
    ),
    "guard: key callable returning an unhashable key": (
        lambda lock: lock.guard(lambda: [KEY])(nothing)(),
        TypeError,
        "unhashable",
    ),
    "guard of a non-callable": (
        lambda lock: lock.guard(KEY)(42)(),
        TypeError,
        "callable",
    ),
}


@pytest.mark.parametrize(
    ("call", "error", "match"), LOCK_MISUSE.values(), ids=list(LOCK_MISUSE.keys())
)
def test_lock_misuse(any_lock: AnyLock, call: LockCall, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(any_lock)


def test_exit_after_someone_else_released(any_lock: AnyLock) -> None:
    """The context's hold was released by another caller and the key has a new holder: the
    exit raises, and the new holder keeps the key."""
    ctx = any_lock(KEY)
    ctx.__enter__()
    any_lock.release(KEY)
    assert any_lock.acquire(KEY, blocking=False)  # the new holder
    with pytest.raises(RuntimeError, match="already released by another caller"):
        ctx.__exit__(None, None, None)
    assert any_lock.locked(KEY), "the exit took the key from its new holder"
    any_lock.release(KEY)


def test_a_context_whose_enter_timed_out_is_used_up(any_lock: AnyLock) -> None:
    """A context whose wait timed out cannot be entered again, and holds nothing."""
    assert any_lock.acquire(KEY)
    ctx = any_lock(KEY, timeout=0)
    try:
        with pytest.raises(LockTimeout, match="busy"):
            ctx.__enter__()
    finally:
        any_lock.release(KEY)
    with pytest.raises(RuntimeError, match="already used"):
        ctx.__enter__()


# -- misuse from an event loop, and of the async API without one -----------------------------------


async def enter_with_in_loop(lock: Any) -> None:
    with lock(KEY):
        raise AssertionError("a blocking with ran inside an event loop")


async def acquire_in_loop(lock: Any) -> None:
    lock.acquire(KEY)


async def acquire_with_timeout_in_loop(lock: Any) -> None:
    lock.acquire(KEY, timeout=WAIT)


async def run_sync_in_loop(lock: Any) -> None:
    lock.run_sync(KEY, nothing)


async def guarded_def_in_loop(lock: Any) -> None:
    lock.guard(KEY)(nothing)()


async def reacquire_async(lock: Any) -> None:
    async with lock(KEY):
        await lock.acquire_async(KEY)


async def nested_async_with(lock: Any) -> None:
    async with lock(KEY), lock(KEY):
        raise AssertionError("a key taken twice by one task")


async def run_while_holding(lock: Any) -> None:
    async with lock(KEY):
        await lock.run(KEY, nothing)


async def aexit_twice(lock: Any) -> None:
    ctx = lock(KEY)
    await ctx.__aenter__()
    await ctx.__aexit__(None, None, None)
    await ctx.__aexit__(None, None, None)


async def aexit_without_enter(lock: Any) -> None:
    await lock(KEY).__aexit__(None, None, None)


async def reuse_context_async(lock: Any) -> None:
    ctx = lock(KEY)
    async with ctx:
        pass
    async with ctx:
        raise AssertionError("a used context entered again")


async def release_never_acquired_in_task(lock: Any) -> None:
    lock.release("never")


async def run_non_callable(lock: Any) -> None:
    await lock.run(KEY, 42)


BLOCKING_IN_LOOP = r"would block this thread, which is running an event loop.*async with"

ASYNC_LOCK_MISUSE: dict[str, tuple[AsyncLockCall, type[Exception], str]] = {
    "with inside a running loop": (enter_with_in_loop, RuntimeError, BLOCKING_IN_LOOP),
    "blocking acquire inside a running loop": (acquire_in_loop, RuntimeError, BLOCKING_IN_LOOP),
    "acquire(timeout) inside a running loop": (
        acquire_with_timeout_in_loop,
        RuntimeError,
        BLOCKING_IN_LOOP,
    ),
    "run_sync inside a running loop": (run_sync_in_loop, RuntimeError, BLOCKING_IN_LOOP),
    "guarded def inside a running loop": (guarded_def_in_loop, RuntimeError, BLOCKING_IN_LOOP),
    "re-acquire by the holding task": (reacquire_async, RuntimeError, "already held"),
    "nested async with of one key": (nested_async_with, RuntimeError, "already held"),
    "run while holding": (run_while_holding, RuntimeError, "already held"),
    "async exit twice": (aexit_twice, RuntimeError, "not entered"),
    "async exit without enter": (aexit_without_enter, RuntimeError, "not entered"),
    "async context reused": (reuse_context_async, RuntimeError, "already used"),
    "release of a key never acquired": (
        release_never_acquired_in_task,
        RuntimeError,
        "which is not held",
    ),
    "run of a non-callable": (run_non_callable, TypeError, "fn must be callable"),
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "error", "match"), ASYNC_LOCK_MISUSE.values(), ids=list(ASYNC_LOCK_MISUSE.keys())
)
async def test_lock_misuse_in_tasks(
    any_lock: AnyLock, call: AsyncLockCall, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await call(any_lock)
    await assert_usable_async(any_lock)


@pytest.mark.anyio
async def test_a_non_blocking_acquire_is_allowed_in_a_loop(any_lock: AnyLock) -> None:
    """The control of the cases above: trying once never blocks, so a loop may do it."""
    assert any_lock.acquire(KEY, blocking=False)
    assert not any_lock.acquire(KEY, timeout=0)  # held by this task: a try just fails
    any_lock.release(KEY)
    await assert_usable_async(any_lock)


NEEDS_A_TASK = "async API needs a running asyncio task or trio task"

#: The async API called where no event loop runs (the coroutine is driven by hand).
OUTSIDE_ANY_LOOP: dict[str, AsyncLockCall] = {
    "async with": lambda lock: use_async_with(lock, KEY),
    "acquire_async": lambda lock: lock.acquire_async(KEY),
    "acquire_async(timeout=0)": lambda lock: lock.acquire_async(KEY, timeout=0),
    "run": lambda lock: lock.run(KEY, nothing),
    "guarded async def": lambda lock: lock.guard(KEY)(nothing_async)(),
}


@pytest.mark.parametrize("call", OUTSIDE_ANY_LOOP.values(), ids=OUTSIDE_ANY_LOOP.keys())
def test_async_api_outside_any_event_loop(any_lock: AnyLock, call: AsyncLockCall) -> None:
    with pytest.raises(RuntimeError, match=NEEDS_A_TASK):
        drive(call(any_lock))


# -- misuse of single-flight ----------------------------------------------------------------------


def recurse_sync(flight: Any) -> object:
    return flight.do_sync(KEY, lambda: flight.do_sync(KEY, nothing))


FLIGHT_MISUSE: dict[str, tuple[LockCall, type[Exception], str]] = {
    "do_sync of an async def": (
        lambda flight: flight.do_sync(KEY, nothing_async),
        TypeError,
        "do_sync needs a sync function",
    ),
    "do_sync_ex of an async def": (
        lambda flight: flight.do_sync_ex(KEY, nothing_async),
        TypeError,
        "needs a sync function",
    ),
    "do_sync of None": (lambda flight: flight.do_sync(KEY, None), TypeError, "fn must be callable"),
    "do_sync of a str": (
        lambda flight: flight.do_sync(KEY, "fn"),
        TypeError,
        "fn must be callable",
    ),
    "do_sync_ex of an int": (
        lambda flight: flight.do_sync_ex(KEY, 42),
        TypeError,
        "fn must be callable",
    ),
    "do_sync joining its own call": (recurse_sync, RuntimeError, "same task or thread"),
    "coalesce: key neither template nor callable": (
        lambda flight: flight.coalesce(42)(nothing),
        TypeError,
        "str.format template or a callable",
    ),
    "coalesce: field that is not a parameter": (
        lambda flight: flight.coalesce("item:{item}")(nothing),
        ValueError,
        r"names \{item\}, which is not a parameter",
    ),
    "coalesce: malformed template": (
        lambda flight: flight.coalesce("item:{")(nothing),
        ValueError,
        "invalid key template",
    ),
    "coalesce: positional field of a function without parameters": (
        lambda flight: flight.coalesce("item:{0}")(nothing),
        ValueError,
        r"\{0\}",
    ),
    "coalesce: key callable returning an unhashable key": (
        lambda flight: flight.coalesce(lambda: [KEY])(nothing)(),
        TypeError,
        "unhashable",
    ),
    "coalesce of a non-callable": (
        lambda flight: flight.coalesce(KEY)(42)(),
        TypeError,
        "callable",
    ),
}


@pytest.mark.parametrize(
    ("call", "error", "match"), FLIGHT_MISUSE.values(), ids=list(FLIGHT_MISUSE.keys())
)
def test_single_flight_misuse(
    any_flight: AnyFlight, call: LockCall, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call(any_flight)


async def recurse_async(flight: Any) -> object:
    async def inner() -> object:
        return await flight.do(KEY, nothing_async)

    return await flight.do(KEY, inner)


async def do_sync_in_loop(flight: Any) -> object:
    return flight.do_sync(KEY, nothing)


async def do_sync_ex_in_loop(flight: Any) -> object:
    return flight.do_sync_ex(KEY, nothing)


async def coalesced_def_in_loop(flight: Any) -> object:
    return flight.coalesce(KEY)(nothing)()


async def do_non_callable(flight: Any) -> object:
    return await flight.do(KEY, 42)


async def do_ex_non_callable(flight: Any) -> object:
    return await flight.do_ex(KEY, None)


#: A blocking single-flight call inside a loop: the message points to the async call to use.
FLIGHT_BLOCKING_IN_LOOP = r"event loop.*await \S*do(_ex)?\("

ASYNC_FLIGHT_MISUSE: dict[str, tuple[AsyncLockCall, type[Exception], str]] = {
    "do_sync inside a running loop": (do_sync_in_loop, RuntimeError, FLIGHT_BLOCKING_IN_LOOP),
    "do_sync_ex inside a running loop": (
        do_sync_ex_in_loop,
        RuntimeError,
        FLIGHT_BLOCKING_IN_LOOP,
    ),
    "coalesced def inside a running loop": (
        coalesced_def_in_loop,
        RuntimeError,
        FLIGHT_BLOCKING_IN_LOOP,
    ),
    "do joining its own call": (recurse_async, RuntimeError, "same task or thread"),
    "do of a non-callable": (do_non_callable, TypeError, "fn must be callable"),
    "do_ex of None": (do_ex_non_callable, TypeError, "fn must be callable"),
}


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("call", "error", "match"), ASYNC_FLIGHT_MISUSE.values(), ids=list(ASYNC_FLIGHT_MISUSE.keys())
)
async def test_single_flight_misuse_in_tasks(
    any_flight: AnyFlight, call: AsyncLockCall, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        await call(any_flight)
    assert len(any_flight) == 0
    assert await any_flight.do(USABLE, lambda: 42) == 42


FLIGHT_OUTSIDE_ANY_LOOP: dict[str, AsyncLockCall] = {
    "do": lambda flight: flight.do(KEY, nothing),
    "do_ex": lambda flight: flight.do_ex(KEY, nothing_async),
    "coalesced async def": lambda flight: flight.coalesce(KEY)(nothing_async)(),
}


@pytest.mark.parametrize(
    "call", FLIGHT_OUTSIDE_ANY_LOOP.values(), ids=FLIGHT_OUTSIDE_ANY_LOOP.keys()
)
def test_single_flight_async_api_outside_any_event_loop(
    any_flight: AnyFlight, call: AsyncLockCall
) -> None:
    with pytest.raises(RuntimeError, match=NEEDS_A_TASK):
        drive(call(any_flight))


# -- constructors ---------------------------------------------------------------------------------

BAD_TTLS: list[tuple[Any, type[Exception], str]] = [
    (-1, ValueError, "finite number of seconds >= 0"),
    (-1e-9, ValueError, "finite number of seconds >= 0"),
    (math.nan, ValueError, "finite number of seconds >= 0"),
    (math.inf, ValueError, "finite number of seconds >= 0"),
    (-math.inf, ValueError, "finite number of seconds >= 0"),
    ("1", TypeError, "ttl must be a number"),
    (None, TypeError, "ttl must be a number"),
    (True, TypeError, "ttl must be a number"),
    (1j, TypeError, "ttl must be a number"),
    ([1], TypeError, "ttl must be a number"),
    (Decimal("1"), TypeError, "ttl must be a number"),
]


def flight_maker(kind: str) -> Callable[[pytest.FixtureRequest, Any], object]:
    def make(request: pytest.FixtureRequest, ttl: Any) -> object:
        if kind == "SingleFlight":
            return SingleFlight(ttl=ttl)
        running: KeyedLockManager = request.getfixturevalue("manager")
        return running.SingleFlight(ttl=ttl)

    return make


@pytest.mark.parametrize(("ttl", "error", "match"), BAD_TTLS, ids=value_id)
@pytest.mark.parametrize("kind", FLIGHTS)
def test_bad_ttl(
    request: pytest.FixtureRequest, kind: str, ttl: Any, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        flight_maker(kind)(request, ttl)


@pytest.mark.parametrize("kind", FLIGHTS)
def test_a_huge_ttl_is_kept_or_refused_as_out_of_range(
    request: pytest.FixtureRequest, kind: str
) -> None:
    """An int too large for a float: a ValueError like an infinite ttl, or kept as given; never
    an exception the documentation does not name."""
    refused: ValueError | None = None
    try:
        made = flight_maker(kind)(request, HUGE)
    except ValueError as exc:
        refused = exc
    if refused is not None:
        assert "ttl" in str(refused)
    else:
        assert isinstance(made, SingleFlight | SingleFlightProxy)
        assert_flight_usable(made)


def start_manager(ctx: Any) -> None:
    manager = KeyedLockManager(ctx=ctx)
    try:
        manager.start()
    finally:
        manager.shutdown()


ON_LINUX = pytest.mark.skipif(not LINUX, reason="FileKeyedLock needs Linux")

#: Constructors given what they cannot take: (make, exception, message regex).
CONSTRUCTORS = [
    pytest.param(
        lambda _: untyped(KeyedLock)(3), TypeError, "positional", id="KeyedLock(positional)"
    ),
    pytest.param(
        lambda _: untyped(SingleFlight)(1), TypeError, "positional", id="SingleFlight(positional)"
    ),
    pytest.param(
        lambda tmp: untyped(FileKeyedLock)(tmp / "keys.lock", 3),
        TypeError,
        "positional",
        id="FileKeyedLock(path, positional)",
        marks=ON_LINUX,
    ),
    pytest.param(
        lambda _: untyped(FileKeyedLock)(42),
        TypeError,
        "PathLike",
        id="FileKeyedLock(int)",
        marks=ON_LINUX,
    ),
    pytest.param(
        lambda _: untyped(FileKeyedLock)(4.5),
        TypeError,
        "PathLike",
        id="FileKeyedLock(float)",
        marks=ON_LINUX,
    ),
    pytest.param(
        lambda _: untyped(FileKeyedLock)([KEY]),
        TypeError,
        "PathLike",
        id="FileKeyedLock(list)",
        marks=ON_LINUX,
    ),
    pytest.param(
        lambda tmp: FileKeyedLock(tmp),
        IsADirectoryError,
        "directory",
        id="FileKeyedLock(a directory)",
        marks=ON_LINUX,
    ),
    pytest.param(
        lambda _: FileKeyedLock("/dev/null"),
        ValueError,
        "not a regular file",
        id="FileKeyedLock(a device)",
        marks=ON_LINUX,
    ),
    pytest.param(lambda _: LockContext(), TypeError, "LockContext", id="LockContext()"),
    pytest.param(
        lambda _: KeyedLockProxy(),
        TypeError,
        r"KeyedLockManager\.KeyedLock\(\)",
        id="KeyedLockProxy()",
    ),
    pytest.param(
        lambda _: SingleFlightProxy(),
        TypeError,
        r"KeyedLockManager\.SingleFlight\(\)",
        id="SingleFlightProxy()",
    ),
    pytest.param(
        lambda _: untyped(KeyedLockManager)("fork"),
        TypeError,
        "positional",
        id="KeyedLockManager(positional)",
    ),
    pytest.param(
        lambda _: start_manager("fork"), TypeError, "ctx", id="KeyedLockManager(ctx='fork')"
    ),
    pytest.param(lambda _: start_manager(42), TypeError, "ctx", id="KeyedLockManager(ctx=42)"),
    pytest.param(
        lambda _: KeyedLockManager().KeyedLock(),
        RuntimeError,
        "not started",
        id="KeyedLock() of a manager not started",
    ),
]


@pytest.mark.parametrize(("make", "error", "match"), CONSTRUCTORS)
def test_bad_constructor_arguments(
    tmp_path: Path, make: Callable[[Path], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make(tmp_path)


@pytest.mark.skipif(not LINUX, reason="FileKeyedLock needs Linux")
def test_file_lock_path_is_a_str_whatever_it_was_given_as(tmp_path: Path) -> None:
    """``path`` is a ``str``: a bytes path is refused (TypeError), or decoded."""
    for given in (str(tmp_path / "a.lock"), tmp_path / "b.lock", bytes(tmp_path / "c.lock")):
        try:
            lock = untyped(FileKeyedLock)(given)
        except TypeError:
            if isinstance(given, bytes):
                continue  # refused: fine
            raise
        assert isinstance(lock.path, str), f"FileKeyedLock({given!r}).path is {lock.path!r}"
        assert_usable(lock)
