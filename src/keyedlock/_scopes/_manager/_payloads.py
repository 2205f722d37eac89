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

from ..._errors import exception_state, rebuild_exception, shown_key

__all__ = ["dump_cause", "dump_error", "load_cause", "outcome", "pack_error", "pack_value"]


def dump_error(exc: BaseException) -> bytes:
    """``exc`` pickled to be raised again in another process: same type, args, attributes
    and notes, with its ``__cause__`` and ``__context__`` chain (no traceback).

    An exception whose ``__init__`` would change its ``args`` if called again
    (see :func:`~keyedlock._errors.exception_state`) travels as (type, args,
    attributes) and is rebuilt without calling ``__init__``; others pickle
    as usual. A linked exception that cannot be pickled is left out of the
    chain. Raises if ``exc`` itself cannot be pickled.
    """
    return _dump_linked(exc, {id(exc)}, 0)


def load_error(payload: bytes) -> BaseException:
    """The exception :func:`dump_error` pickled (raises if it cannot be rebuilt here)."""
    head, cause, context, suppress = pickle.loads(payload)
    if head[0] == _AS_PICKLED:
        exc = head[1]
    else:
        cls, args, attributes, *rest = head[1:]  # (from an older client: no fields apart)
        exc = rebuild_exception(cls, args, attributes, rest[0] if rest else None, pickle.loads)
    if not isinstance(exc, BaseException):
        raise TypeError(f"expected an exception, got {exc!r}")
    exc.__cause__ = _load_link(cause)
    exc.__context__ = _load_link(context)
    exc.__suppress_context__ = bool(suppress)
    return exc


_AS_PICKLED: Final = 0
_AS_STATE: Final = 1

#: How many exceptions deep a ``__cause__`` / ``__context__`` chain travels.
_CHAIN_DEPTH: Final = 8


def _pickled(value: object) -> bytes:
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)


def _dump_linked(exc: BaseException, seen: set[int], depth: int) -> bytes:
    state = exception_state(exc, _pickled)
    head: tuple[object, ...] = (_AS_PICKLED, exc) if state is None else (_AS_STATE, *state)
    links = (
        _dump_link(exc.__cause__, seen, depth),
        _dump_link(exc.__context__, seen, depth),
    )
    return pickle.dumps((head, *links, exc.__suppress_context__), pickle.HIGHEST_PROTOCOL)


def _dump_link(linked: BaseException | None, seen: set[int], depth: int) -> bytes | None:
    if linked is None or id(linked) in seen or depth >= _CHAIN_DEPTH:
        return None
    try:
        return _dump_linked(linked, seen | {id(linked)}, depth + 1)
    except Exception:
        return None  # a link that cannot travel is left out; the exception itself still does


def _load_link(payload: bytes | None) -> BaseException | None:
    if payload is None:
        return None
    try:
        return load_error(payload)
    except Exception:
        return None


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
            f"the result of the single-flight call for key {shown_key(key)} cannot be shared with "
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
            f"the single-flight call for key {shown_key(key)} raised {_type_name(exc)}: {exc}; "
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
            f"the outcome of the single-flight call for key {shown_key(key)} could not be "
            f"unpickled in this process: {exc!r}"
        ) from exc
    if is_error:
        raise shared
    return shared
