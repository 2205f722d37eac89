"""What crosses to other processes as opaque bytes: shared outcomes, and abort causes.

The manager never unpickles these; the client processes do. An exception
travels so that the other side raises the same type, ``args`` and
attributes, even when its class's ``__init__`` formats its message (see
:func:`~keyedlock._errors.exception_state`); one that cannot be pickled
travels as a stand-in that describes it.
"""

from __future__ import annotations

import pickle
from collections.abc import Hashable
from typing import Any, Final

from ..._errors import exception_state, rebuild_exception

__all__ = ["dump_cause", "dump_error", "load_cause", "outcome", "pack_error", "pack_value"]


def dump_error(exc: BaseException) -> bytes:
    """``exc`` pickled to be raised again in another process: same type, args and attributes.

    An exception whose ``__init__`` would change its ``args`` if called again
    (see :func:`~keyedlock._errors.exception_state`) travels as (type, args,
    attributes) and is rebuilt without calling ``__init__``; others pickle
    as usual. Raises if it cannot be pickled.
    """
    state = exception_state(exc)
    payload: tuple[object, ...] = (_AS_PICKLED, exc) if state is None else (_AS_STATE, *state)
    return pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)


def load_error(payload: bytes) -> BaseException:
    """The exception :func:`_dump_error` pickled (raises if it cannot be rebuilt here)."""
    state = pickle.loads(payload)
    exc = state[1] if state[0] == _AS_PICKLED else rebuild_exception(*state[1:])
    if not isinstance(exc, BaseException):
        raise TypeError(f"expected an exception, got {exc!r}")
    return exc


_AS_PICKLED: Final = 0
_AS_STATE: Final = 1


def load_cause(payload: bytes) -> BaseException:
    try:
        return load_error(payload)
    except Exception as exc:
        return RuntimeError(f"the holder's exception could not be unpickled here: {exc!r}")


def dump_cause(exc: BaseException) -> bytes:
    """``exc`` pickled for the waiters it aborts; a stand-in if it cannot be pickled."""
    try:
        return dump_error(exc)
    except Exception:
        return dump_error(RuntimeError(f"{_type_name(exc)}: {exc} (not picklable)"))


def _type_name(obj: object) -> str:
    cls = type(obj)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def pack_value(value: object, key: Hashable) -> tuple[bytes, TypeError | None]:
    """The pickled result for the followers, or a pickled TypeError (also returned)."""
    try:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL), None
    except Exception as exc:
        error = TypeError(
            f"the result of the single-flight call for key {key!r} cannot be shared with "
            f"other processes: a {_type_name(value)!r} object cannot be pickled ({exc})"
        )
        error.__cause__ = exc
        return dump_error(error), error


def pack_error(exc: BaseException, key: Hashable) -> bytes:
    """The leader's exception pickled for the followers; a TypeError if it cannot be."""
    try:
        return dump_error(exc)
    except Exception as why:
        stand_in = TypeError(
            f"the single-flight call for key {key!r} raised {_type_name(exc)}: {exc}; "
            f"the exception cannot be pickled to share it with other processes ({why})"
        )
        return dump_error(stand_in)


def outcome(reply: object, key: Hashable) -> Any:
    """A follower's share of a finished call: its value, or raise (a copy of) its exception."""
    assert isinstance(reply, tuple)
    is_error, payload = reply[1]
    try:
        shared = load_error(payload) if is_error else pickle.loads(payload)
    except Exception as exc:
        raise TypeError(
            f"the outcome of the single-flight call for key {key!r} could not be "
            f"unpickled in this process: {exc!r}"
        ) from exc
    if is_error:
        raise shared
    return shared
