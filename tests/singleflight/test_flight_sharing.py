"""One execution per key at a time: every concurrent caller gets its value or its error."""

from __future__ import annotations

import contextlib
import errno
import gc
import threading
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from keyedlock import Result, SingleFlight, flight

from ..conformance.scopes import Scope
from ..support import WAIT, Threads, table_of, wait_until, wait_until_async
from .flight_support import traceback_functions, wait_followers, wait_followers_async

FOLLOWERS = 8


class FetchError(Exception):
    """The error the shared call raises in these tests."""


class NeedsKeyword(Exception):
    """An exception type that cannot be built from its args at all (so cannot be copied)."""

    def __new__(cls, *, code: int) -> NeedsKeyword:
        return super().__new__(cls, code)

    def __init__(self, *, code: int) -> None:
        super().__init__(code)
        self.code = code


class KeywordOnly(Exception):
    """An exception whose ``__init__`` takes keywords only: copied without calling it."""

    def __init__(self, *, code: int) -> None:
        super().__init__(code)
        self.code = code


class Coded(Exception):
    """An exception whose ``__init__`` builds its message: args differ from the init arguments."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error {code}")
        self.code = code


class ConfigSyntaxError(SyntaxError):
    """A SyntaxError of a parser of its own: SyntaxError's C __init__ fills its fields."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message, ("app.cfg", line, 1, "key = ", line, 7))


class MissingSetting(AttributeError):
    """An AttributeError naming what is missing (its ``name`` and ``obj`` fields)."""

    def __init__(self, setting: str) -> None:
        super().__init__(f"no setting {setting!r}", name=setting, obj="settings")


class MissingAttribute(AttributeError):
    """An AttributeError whose ``obj`` is an object no serializer carries (a lock)."""

    def __init__(self, name: str, obj: object) -> None:
        super().__init__(f"no attribute {name!r}", name=name, obj=obj)


class BadBytes(UnicodeDecodeError):
    """A UnicodeDecodeError whose fields (encoding, object, start, end, reason) are C-level."""

    def __init__(self, data: bytes) -> None:
        super().__init__("utf-8", data, 1, 2, "invalid start byte")


class MissingFile(FileNotFoundError):
    """An OSError whose own __init__ builds its arguments (its fields are C-level too)."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ENOENT, f"no file at {path}", path)


class Undecodable(UnicodeDecodeError):
    """A UnicodeDecodeError that leaves its C fields unset (str() is then empty)."""

    def __init__(self, what: str) -> None:
        Exception.__init__(self, f"bad bytes in {what}")


class PartialWrite(BlockingIOError):
    """A BlockingIOError with ``characters_written`` (a C-level field of another kind)."""

    def __init__(self, written: int) -> None:
        super().__init__(errno.EAGAIN, f"would block after {written} bytes")
        self.characters_written = written


class ThrottledBase(Exception):
    __slots__ = ("retry_after",)


class Throttled(ThrottledBase):
    """A slot set to None: set, unlike an unset one (which raises when read)."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"throttled; retry after {retry_after}")
        self.retry_after = retry_after


class ModuleMissing(ImportError):
    """An ImportError whose own __init__ builds its message (ImportError pickles itself)."""

    def __init__(self, module: str) -> None:
        super().__init__(f"no module {module!r}", name=module, path="/srv/plugins")


class Slotted(Exception):
    """An exception that keeps a field in a slot, not in its ``__dict__``."""

    __slots__ = ("code",)

    def __init__(self, code: int) -> None:
        super().__init__(f"error {code}")
        self.code = code


#: Errors built by an ``__init__`` of their own, with fields kept outside ``__dict__``, and
#: the fields a follower's copy must have as the leader's did.
FIELD_ERRORS: dict[str, tuple[Callable[[], Exception], tuple[str, ...]]] = {
    "SyntaxError": (
        lambda: ConfigSyntaxError("unexpected end", 3),
        ("msg", "filename", "lineno", "offset", "text", "end_lineno", "end_offset"),
    ),
    "AttributeError": (lambda: MissingSetting("db"), ("name", "obj")),
    "UnicodeDecodeError": (
        lambda: BadBytes(b"a\xffc"),
        ("encoding", "object", "start", "end", "reason"),
    ),
    "__slots__": (lambda: Slotted(4), ("code",)),
    "OSError": (lambda: MissingFile("/srv/app.toml"), ("errno", "strerror", "filename")),
    "unset fields": (lambda: Undecodable("header"), ()),
    "BlockingIOError": (lambda: PartialWrite(7), ("errno", "characters_written")),
    "a slot set to None": (lambda: Throttled(None), ("retry_after",)),
    "ImportError": (lambda: ModuleMissing("plugin"), ("msg", "name", "path")),
}


class Value:
    """A value that can be weakly referenced, to see whether anything keeps it."""


# -- sharing ---------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrent_callers_share_one_call(sf: SingleFlight) -> None:
    gate = anyio.Event()
    calls: list[str] = []

    async def fetch(name: str) -> str:
        calls.append(name)
        await gate.wait()
        return "value"

    results: dict[str, Result[str]] = {}
    plain: list[str] = []

    async def caller(name: str) -> None:
        results[name] = await sf.do_ex("k", fetch, name)

    async def plain_caller() -> None:
        plain.append(await sf.do("k", fetch, "plain"))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "leader")
            await wait_until_async(lambda: calls == ["leader"], "the leader runs the call")
            for i in range(FOLLOWERS):
                tg.start_soon(caller, f"follower-{i}")
            tg.start_soon(plain_caller)
            await wait_followers_async(sf, "k", FOLLOWERS + 1)
            assert sf.in_flight("k")
            assert len(sf) == 1
            gate.set()

    assert calls == ["leader"]
    assert results == {name: Result("value", True) for name in results}
    assert len(results) == FOLLOWERS + 1
    assert plain == ["value"]
    assert not sf.in_flight("k")


def test_concurrent_threads_share_one_call(sf: SingleFlight, threads: Threads) -> None:
    gate = threading.Event()
    calls: list[str] = []

    def fetch(name: str) -> str:
        calls.append(name)
        assert gate.wait(WAIT)
        return "value"

    leader = threads.start(lambda: sf.do_sync_ex("k", fetch, "leader"), "leader")
    wait_until(lambda: calls == ["leader"], "the leader runs the call")
    followers = [
        threads.start(lambda: sf.do_sync_ex("k", fetch, "follower"), "follower")
        for _ in range(FOLLOWERS)
    ]
    plain = threads.start(lambda: sf.do_sync("k", fetch, "plain"), "plain")
    wait_followers(sf, "k", FOLLOWERS + 1)
    assert sf.in_flight("k")
    assert len(sf) == 1
    gate.set()

    assert leader.result() == Result("value", True)
    for handle in followers:
        assert handle.result() == Result("value", True)
    assert plain.result() == "value"
    assert calls == ["leader"]


@pytest.mark.anyio
async def test_a_caller_alone_is_not_shared(sf: SingleFlight) -> None:
    async def fetch() -> int:
        return 1

    def fetch_sync() -> int:
        return 2

    assert await sf.do_ex("k", fetch) == Result(1, False)
    assert await sf.do_ex("k", fetch_sync) == Result(2, False)
    assert await sf.do("k", fetch) == 1


def test_a_thread_alone_is_not_shared(sf: SingleFlight) -> None:
    assert sf.do_sync_ex("k", lambda: 1) == Result(1, False)
    assert sf.do_sync("k", lambda: 2) == 2


@pytest.mark.anyio
async def test_calls_run_again_once_the_previous_one_finished(sf: SingleFlight) -> None:
    calls = 0

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        return calls

    assert [await sf.do("k", fetch) for _ in range(3)] == [1, 2, 3]


@pytest.mark.anyio
async def test_different_keys_run_in_parallel(sf: SingleFlight) -> None:
    started = {"a": anyio.Event(), "b": anyio.Event()}

    async def fetch(mine: str, other: str) -> str:
        started[mine].set()
        await started[other].wait()  # each waits for the other: only parallel calls finish
        return mine

    results: dict[str, str] = {}

    async def caller(mine: str, other: str) -> None:
        results[mine] = await sf.do(mine, fetch, mine, other)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "a", "b")
            tg.start_soon(caller, "b", "a")
    assert results == {"a": "a", "b": "b"}


def test_different_keys_run_in_parallel_in_threads(sf: SingleFlight, threads: Threads) -> None:
    barrier = threading.Barrier(2, timeout=WAIT)

    def fetch(key: str) -> str:
        barrier.wait()  # both calls must be running at once to pass
        return key

    a = threads.start(lambda: sf.do_sync("a", fetch, "a"))
    b = threads.start(lambda: sf.do_sync("b", fetch, "b"))
    assert (a.result(), b.result()) == ("a", "b")


@pytest.mark.anyio
async def test_a_sync_fn_runs_inline_in_the_calling_task(sf: SingleFlight) -> None:
    def where() -> tuple[int, int]:
        return threading.get_ident(), anyio.get_current_task().id

    here = (threading.get_ident(), anyio.get_current_task().id)
    assert await sf.do("k", where) == here


@pytest.mark.anyio
async def test_arguments_reach_fn(sf: SingleFlight) -> None:
    async def join(a: int, b: int, *, sep: str) -> str:
        return f"{a}{sep}{b}"

    assert await sf.do("k", join, 1, 2, sep="-") == "1-2"


def test_arguments_reach_fn_in_threads(sf: SingleFlight) -> None:
    def join(a: int, b: int, *, sep: str) -> str:
        return f"{a}{sep}{b}"

    assert sf.do_sync("k", join, 1, 2, sep="-") == "1-2"
    assert sf.do_sync_ex("k", join, 3, 4, sep="+") == Result("3+4", False)


# -- errors ----------------------------------------------------------------


def check_follower_error(scope: Scope, error: BaseException, original: BaseException) -> None:
    """``error`` is a copy of ``original`` made for a follower (in another process for a
    remote scope: its cause is a copy too)."""
    assert type(error) is type(original)
    assert error is not original
    assert error.args == original.args
    if scope.remote:
        cause, expected = error.__cause__, original.__cause__
        assert expected is not None
        assert type(cause) is type(expected)
        assert cause is not None
        assert cause.args == expected.args
    else:
        assert error.__cause__ is original.__cause__
    assert error.__suppress_context__ == original.__suppress_context__
    assert getattr(error, "__notes__", None) == getattr(original, "__notes__", None)
    assert "failing_call" in traceback_functions(original)
    assert "failing_call" not in traceback_functions(error), "the leader's frames leaked"


@pytest.mark.anyio
async def test_errors_reach_every_caller_as_copies(flight_scope: Scope, sf: SingleFlight) -> None:
    gate = anyio.Event()
    cause = KeyError("root cause")
    raised: list[FetchError] = []

    async def failing_call() -> str:
        await gate.wait()
        error = FetchError("boom", 42)
        error.add_note("while fetching")
        raised.append(error)
        raise error from cause

    errors: dict[str, BaseException] = {}

    async def caller(name: str) -> None:
        with pytest.raises(FetchError) as info:
            await sf.do("k", failing_call)
        errors[name] = info.value

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller, "leader")
            await wait_until_async(lambda: sf.in_flight("k"), "the leader runs the call")
            for i in range(FOLLOWERS):
                tg.start_soon(caller, f"follower-{i}")
            await wait_followers_async(sf, "k", FOLLOWERS)
            gate.set()

    [original] = raised
    assert errors.pop("leader") is original
    assert len(errors) == FOLLOWERS
    for error in errors.values():
        check_follower_error(flight_scope, error, original)
    assert len({id(error) for error in errors.values()}) == FOLLOWERS, "copies are distinct"


def test_errors_reach_every_thread_as_copies(
    flight_scope: Scope, sf: SingleFlight, threads: Threads
) -> None:
    gate = threading.Event()
    cause = KeyError("root cause")
    raised: list[FetchError] = []

    def failing_call() -> str:
        assert gate.wait(WAIT)
        error = FetchError("boom", 42)
        raised.append(error)
        raise error from cause

    leader = threads.start(lambda: sf.do_sync("k", failing_call), "leader")
    wait_until(lambda: sf.in_flight("k"), "the leader runs the call")
    followers = [
        threads.start(lambda: sf.do_sync("k", failing_call), "follower") for _ in range(FOLLOWERS)
    ]
    wait_followers(sf, "k", FOLLOWERS)
    gate.set()

    with pytest.raises(FetchError) as info:
        leader.result()
    [original] = raised
    assert info.value is original
    copies = []
    for handle in followers:
        with pytest.raises(FetchError) as info:
            handle.result()
        check_follower_error(flight_scope, info.value, original)
        copies.append(info.value)
    assert len({id(error) for error in copies}) == FOLLOWERS


async def two_callers_of_a_failing_call(
    sf: SingleFlight,
    make: Callable[[], BaseException],
    expected: type[BaseException] | tuple[type[BaseException], ...],
) -> tuple[BaseException, list[BaseException]]:
    """A leader and one follower of a call that raises ``make()``: the error it raised,
    and what each caller raised (``expected``), leader first."""
    gate = anyio.Event()
    raised: list[BaseException] = []

    async def failing_call() -> None:
        await gate.wait()
        error = make()
        raised.append(error)
        raise error

    errors: list[BaseException] = []

    async def caller() -> None:
        with pytest.raises(expected) as info:
            await sf.do("k", failing_call)
        errors.append(info.value)

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await wait_until_async(lambda: sf.in_flight("k"), "the leader runs the call")
            tg.start_soon(caller)
            await wait_followers_async(sf, "k", 1)
            gate.set()

    [original] = raised
    return original, errors


def follower_copy_of(original: BaseException, errors: list[BaseException]) -> BaseException:
    """The one error in ``errors`` that is not ``original``: the follower's copy."""
    [copy] = [error for error in errors if error is not original]
    return copy


@pytest.mark.anyio
async def test_an_uncopyable_error_is_delivered_as_is(
    flight_scope: Scope, sf: SingleFlight
) -> None:
    """In one process, an error that cannot be copied reaches every caller as the object
    itself; in another process (a remote scope), the follower gets a TypeError naming it."""
    original, errors = await two_callers_of_a_failing_call(
        sf, lambda: NeedsKeyword(code=7), (NeedsKeyword, TypeError)
    )
    leader, follower = errors
    assert leader is original
    if flight_scope.remote:
        assert isinstance(follower, TypeError)
        assert "could not be unpickled" in str(follower)
        assert isinstance(follower.__cause__, TypeError)
    else:
        assert follower is original


@pytest.mark.anyio
async def test_an_error_that_builds_its_message_keeps_its_args(sf: SingleFlight) -> None:
    """A copy has the original's args even when the type's __init__ formats its message."""
    original, errors = await two_callers_of_a_failing_call(sf, lambda: Coded(5), Coded)
    copy = follower_copy_of(original, errors)
    assert original.args == ("error 5",)
    assert copy.args == original.args, "the follower's error says something else"
    assert str(copy) == str(original)
    assert isinstance(copy, Coded)
    assert copy.code == 5


@pytest.mark.anyio
@pytest.mark.parametrize("kind", FIELD_ERRORS)
async def test_an_errors_fields_outside_its_dict_are_copied(sf: SingleFlight, kind: str) -> None:
    """A follower's copy of an error whose own __init__ is not called again still has the
    fields a built-in base's C __init__ filled (and its slots): same str(), same fields."""
    make, fields = FIELD_ERRORS[kind]
    expected = type(make())
    original, errors = await two_callers_of_a_failing_call(sf, make, expected)
    copy = follower_copy_of(original, errors)
    assert type(copy) is expected
    assert copy.args == original.args
    assert str(copy) == str(original)
    for field in fields:
        assert getattr(copy, field) == getattr(original, field), field


@pytest.mark.anyio
async def test_a_field_that_cannot_travel_is_left_out(
    sf: SingleFlight, flight_scope: Scope
) -> None:
    """Another process's follower gets the error without the fields its serializer cannot
    carry (as a plain pickle leaves them all out); a follower here gets them all."""
    held = threading.Lock()
    original, errors = await two_callers_of_a_failing_call(
        sf, lambda: MissingAttribute("db", held), MissingAttribute
    )
    copy = follower_copy_of(original, errors)
    assert isinstance(copy, MissingAttribute)
    assert str(copy) == "no attribute 'db'"
    assert copy.name == "db"
    assert copy.obj is (None if flight_scope.remote else held)


@pytest.mark.anyio
async def test_an_error_with_a_keyword_only_init_is_copied(sf: SingleFlight) -> None:
    original, errors = await two_callers_of_a_failing_call(
        sf, lambda: KeywordOnly(code=3), KeywordOnly
    )
    copy = follower_copy_of(original, errors)
    assert type(copy) is KeywordOnly
    assert isinstance(copy, KeywordOnly)  # (for the type checker)
    assert copy.args == (3,)
    assert copy.code == 3


@pytest.mark.anyio
async def test_errors_are_never_kept(sf: SingleFlight) -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise FetchError("first call fails")
        return "second call works"

    with pytest.raises(FetchError):
        await sf.do("k", flaky)
    assert await sf.do("k", flaky) == "second call works"
    assert calls == 2


def test_errors_are_never_kept_in_threads(sf: SingleFlight) -> None:
    outcomes = iter([FetchError("first call fails"), "second call works"])

    def flaky() -> object:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(FetchError):
        sf.do_sync("k", flaky)
    assert sf.do_sync("k", flaky) == "second call works"


# -- nothing retained ------------------------------------------------------


@pytest.mark.anyio
async def test_nothing_is_retained_once_a_call_finishes(
    flight_scope: Scope, sf: SingleFlight
) -> None:
    gate = anyio.Event()

    async def make() -> Value:
        await gate.wait()
        return Value()

    refs: list[weakref.ref[Value]] = []

    async def caller() -> None:
        refs.append(weakref.ref(await sf.do("k", make)))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(caller)
            await wait_until_async(lambda: sf.in_flight("k"), "the leader runs the call")
            tg.start_soon(caller)
            await wait_followers_async(sf, "k", 1)
            gate.set()

    assert len(sf) == 0
    if not flight_scope.remote:
        assert table_of(sf)._holds == {}
        assert table_of(sf).results == {}
    gc.collect()
    assert [ref() for ref in refs] == [None, None], "the shared value is still referenced"


def _shared_in_threads(sf: SingleFlight, threads: Threads, followers: int) -> list[Any]:
    """A call led by a thread and shared with ``followers`` threads: a weak reference to
    the value each caller got (the leader's first)."""
    gate = threading.Event()

    def make() -> Value:
        assert gate.wait(WAIT)
        return Value()

    def call() -> weakref.ref[Value]:
        return weakref.ref(sf.do_sync("k", make))

    leader = threads.start(call, "leader")
    wait_until(lambda: sf.in_flight("k"), "the leader runs the call")
    others = [threads.start(call, f"follower {n}") for n in range(followers)]
    wait_followers(sf, "k", followers)
    gate.set()
    return [leader.result(), *(other.result() for other in others)]


def test_nothing_is_retained_in_threads(sf: SingleFlight, threads: Threads) -> None:
    refs = _shared_in_threads(sf, threads, 1)
    assert len(sf) == 0
    gc.collect()
    assert [ref() for ref in refs] == [None, None], "the shared value is still referenced"


def test_a_shared_value_goes_with_its_last_caller_without_the_collector(threads: Threads) -> None:
    """No cycle keeps a shared value (thread followers wait in a queue that their holds
    refer to): once its callers dropped it, it is gone at once, the cyclic garbage
    collector off."""
    gc.collect()
    gc.disable()
    try:
        refs = _shared_in_threads(SingleFlight(), threads, 2)
        assert [ref() for ref in refs] == [None, None, None], "a cycle keeps the value"
    finally:
        gc.enable()


# -- introspection ---------------------------------------------------------


@pytest.mark.anyio
async def test_len_and_in_flight_follow_the_calls(flight_scope: Scope, sf: SingleFlight) -> None:
    gates = {key: anyio.Event() for key in ("a", "b")}

    async def fetch(key: str) -> str:
        await gates[key].wait()
        return key

    assert len(sf) == 0
    assert not sf.in_flight("a")
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sf.do, "a", fetch, "a")
            tg.start_soon(sf.do, "b", fetch, "b")
            await wait_until_async(lambda: len(sf) == 2, "both calls run")
            assert sf.in_flight("a")
            assert sf.in_flight("b")
            assert not sf.in_flight("c")
            if not flight_scope.remote:  # a proxy's repr asks nothing of the manager
                assert "in_flight=2" in repr(sf)
            gates["a"].set()
            await wait_until_async(lambda: len(sf) == 1, "the call for a ends")
            assert not sf.in_flight("a")
            assert sf.in_flight("b")
            gates["b"].set()
    assert len(sf) == 0


def test_the_module_default_is_a_single_flight_without_ttl() -> None:
    assert isinstance(flight, SingleFlight)
    assert flight.ttl == 0
    assert flight.do_sync(("keyedlock-tests", "default"), lambda: 5) == 5
    assert len(flight) == 0


def test_result_is_a_frozen_value() -> None:
    result = Result("v", True)
    assert (result.value, result.shared) == ("v", True)
    assert result == Result("v", True)
    assert result != Result("v", False)
    with pytest.raises(AttributeError):
        result.shared = False  # type: ignore[misc]


@pytest.mark.anyio
async def test_followers_never_see_what_the_leaders_caller_does_to_its_error(
    sf: SingleFlight,
) -> None:
    """The followers' copies are made as the call fails: notes, attributes and chaining that
    the leader's caller adds to its own exception afterwards stay its own."""
    gate = anyio.Event()
    seen: dict[str, FetchError] = {}

    async def failing_call() -> None:
        await gate.wait()
        raise FetchError("down")

    async def leader() -> None:
        try:
            await sf.do("k", failing_call)
        except FetchError as exc:
            seen["leader"] = exc
            exc.add_note("leader's note")
            exc.retry = True  # type: ignore[attr-defined]
            with contextlib.suppress(FetchError):
                raise exc from KeyError("leader's cause")

    async def follower() -> None:
        with pytest.raises(FetchError) as info:
            await sf.do("k", failing_call)
        seen["follower"] = info.value

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(leader)
            await wait_until_async(lambda: sf.in_flight("k"), "the leader runs the call")
            tg.start_soon(follower)
            await wait_followers_async(sf, "k", 1)
            gate.set()

    copy = seen["follower"]
    assert copy is not seen["leader"]
    assert getattr(copy, "__notes__", None) is None
    assert not hasattr(copy, "retry")
    assert copy.__cause__ is None
