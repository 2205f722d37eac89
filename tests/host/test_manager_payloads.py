"""Exceptions crossing to other processes: type, args, notes and the cause/context chain."""

from __future__ import annotations

import pickle
import sys
import threading
from typing import Any, SupportsIndex

import pytest

from keyedlock._errors import follower_copy
from keyedlock._scopes._manager._payloads import dump_error, load_error
from keyedlock._scopes._redis._outcomes import decode, encode_error
from keyedlock.multiprocessing import KeyedLockManager

from ..support import wait_until


class Coded(Exception):
    """An exception whose ``__init__`` formats its message (copied without calling it)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"error {code}")
        self.code = code


def raised_from(exc: BaseException, cause: BaseException | None) -> BaseException:
    try:
        raise exc from cause
    except BaseException as caught:
        return caught


def test_the_chain_travels_with_the_exception() -> None:
    root = KeyError("root")
    middle = raised_from(Coded(5), root)
    try:
        try:
            raise middle
        except Coded:
            raise ValueError("top") from None
    except ValueError as top:
        top.add_note("a note")
        copy = load_error(dump_error(top))
    assert type(copy) is ValueError
    assert copy.args == ("top",)
    assert copy.__notes__ == ["a note"]
    assert copy.__cause__ is None
    assert copy.__suppress_context__ is True
    context = copy.__context__
    assert isinstance(context, Coded)
    assert context.args == ("error 5",)
    assert context.code == 5
    assert isinstance(context.__cause__, KeyError)
    assert context.__cause__.args == ("root",)


def test_a_link_that_cannot_be_pickled_is_left_out() -> None:
    unpicklable = RuntimeError(threading.Lock())
    copy = load_error(dump_error(raised_from(ValueError("top"), unpicklable)))
    assert copy.args == ("top",)
    assert copy.__cause__ is None
    assert copy.__suppress_context__ is True


def test_a_cycle_in_the_chain_ends() -> None:
    first, second = ValueError("first"), KeyError("second")
    first.__context__, second.__context__ = second, first
    copy = load_error(dump_error(first))
    assert isinstance(copy.__context__, KeyError)
    assert copy.__context__.__context__ is None


def test_a_long_chain_is_cut() -> None:
    exc: BaseException = ValueError(0)
    for i in range(1, 50):
        exc = raised_from(ValueError(i), exc)
    copy: BaseException | None = load_error(dump_error(exc))
    depth = 0
    while copy is not None:
        depth += 1
        copy = copy.__cause__
    assert 2 <= depth < 50


class Settings:
    """A class of this program's own (another program may not have it)."""


class MissingSetting(AttributeError):
    """An AttributeError whose ``obj`` is an instance of :class:`Settings`."""

    def __init__(self, setting: str) -> None:
        super().__init__(f"no setting {setting!r}", name=setting, obj=Settings())


@pytest.mark.parametrize("scope", ["manager", "redis"])
def test_a_field_the_other_process_cannot_load_is_left_out(
    scope: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A field carried across processes (AttributeError's ``obj``) whose class the other
    program does not have is left out there; the exception itself arrives."""
    error = MissingSetting("db")
    copy: BaseException | None
    if scope == "manager":
        payload = dump_error(error)
        monkeypatch.delattr(sys.modules[__name__], "Settings")  # (the other program's view)
        copy = load_error(payload)
    else:
        data = encode_error(pickle, error, "k")
        monkeypatch.delattr(sys.modules[__name__], "Settings")
        copy = decode(pickle, data, "k").error
    assert isinstance(copy, MissingSetting)
    assert str(copy) == "no setting 'db'"
    assert copy.name == "db"
    assert copy.obj is None


class Named(AttributeError):
    """An AttributeError whose own __init__ builds its message, naming the attribute."""

    def __init__(self, attribute: str) -> None:
        super().__init__(f"no attribute {attribute!r}", name=attribute)
        self.hint = "see the docs"


@pytest.mark.parametrize("scope", ["manager", "redis"])
def test_an_error_sent_before_fields_travelled_apart_keeps_them(scope: str) -> None:
    """An exception state written by the previous version (its fields among its attributes,
    as a client of the same manager or a leader sharing the Redis server may still send)
    is rebuilt with its fields where they belong."""
    state = (1, Named, ("no attribute 'colour'",), {"name": "colour", "hint": "see the docs"})
    if scope == "manager":
        copy = load_error(pickle.dumps((state, None, None, False)))
    else:
        error = decode(pickle, b"e" + pickle.dumps(state), "k").error
        assert error is not None
        copy = error
    assert type(copy) is Named
    assert str(copy) == "no attribute 'colour'"
    assert copy.name == "colour"
    assert vars(copy) == {"hint": "see the docs"}


class PluginMissing(ImportError):
    """An exception with pickling of its own (``__reduce_ex__``): it drops a lock that
    belongs to the process that raised it."""

    def __init__(self, plugin: str) -> None:
        super().__init__(f"plugin {plugin!r} is not installed", name=plugin)
        self.plugin = plugin
        self.lock = threading.Lock()

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        return (type(self), (self.plugin,))


class MarksCopies(ImportError):
    """An exception with unpickling of its own (``__setstate__``)."""

    def __init__(self, module: str) -> None:
        super().__init__(f"no module {module!r}", name=module)

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        super().__setstate__(state)
        self.copied = True


def test_an_errors_own_pickling_is_used_for_its_copies() -> None:
    """A class that copies or pickles itself is copied its own way, in this process and
    across processes, never rebuilt field by field."""
    error = PluginMissing("foo")
    copy = follower_copy(error)
    assert type(copy) is PluginMissing
    assert copy.lock is not error.lock
    sent = load_error(dump_error(error))
    assert type(sent) is PluginMissing
    assert str(sent) == "plugin 'foo' is not installed"
    outcome = decode(pickle, encode_error(pickle, error, "k"), "k").error
    assert type(outcome) is PluginMissing
    assert vars(follower_copy(MarksCopies("x"))).get("copied") is True


def _resident(pid: int) -> int:
    """The resident memory of process ``pid`` (bytes)."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_manager_keeps_no_outcome_once_its_call_ended() -> None:
    """A large value, shared and delivered: the manager lets it go at once, not when the
    connection that carried it serves its next request (it may never)."""
    size = 64 << 20
    with KeyedLockManager() as manager:
        flight = manager.SingleFlight()
        pid = manager.pid
        assert pid is not None
        before = _resident(pid)
        assert len(flight.do_sync("k", lambda: b"x" * size)) == size
        wait_until(lambda: _resident(pid) < before + size // 4, "the manager let the value go")
