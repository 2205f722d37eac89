"""Single-flight outcomes on the wire: a leader's value or exception, as bytes, and back.

An outcome is one tag byte and a body::

    v<serializer.dumps(value)>     the call returned a value (a str is UTF-8 encoded)
    E<serializer.dumps(chain)>     the call raised: the exception and its chain (see below)
    e<serializer.dumps(state)>     the call raised: the exception alone (its chain could not
                                   be carried)
    t<utf-8 text>                  the call raised an exception the serializer cannot carry

An exception travels as ``(type, args, attributes)`` when its ``__init__`` would change its
``args`` if called again (see :func:`~keyedlock._errors.exception_state`), otherwise as
itself; either way followers raise the same type with the same ``args``, attributes and
notes. A chain is ``(state, cause chain, context chain, suppress_context)``, up to
:data:`CHAIN_DEPTH` links deep, so followers in other processes see the same ``__cause__``
and ``__context__``. One the serializer cannot carry (with the default, :mod:`pickle`: a
class defined in a function, an attribute holding a lock) reaches them as a TypeError
describing it, and a result the serializer cannot carry makes every caller, the leader
included, raise TypeError.
"""

from __future__ import annotations

from collections.abc import Hashable
from functools import partial
from typing import Any, Protocol

from ..._errors import exception_state, rebuild_exception, shown_key
from .._contract import Outcome

__all__ = ["Serializer", "decode", "encode_error", "encode_value", "type_name"]


class Serializer(Protocol):
    """What ``serializer=`` takes: the :mod:`pickle` module, or anything with its two calls."""

    def dumps(self, obj: Any, /) -> bytes | str: ...

    def loads(self, data: bytes, /) -> Any: ...


def _dumps(serializer: Serializer, obj: object) -> bytes:
    data = serializer.dumps(obj)
    return data.encode() if isinstance(data, str) else bytes(data)


def type_name(obj: object) -> str:
    cls = type(obj)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def encode_value(
    serializer: Serializer, value: object, key: Hashable
) -> tuple[bytes, TypeError | None]:
    """The value for the followers, or (if it cannot be serialized) a TypeError for everyone:
    (its bytes, None) or (the TypeError's bytes, the TypeError)."""
    try:
        return b"v" + _dumps(serializer, value), None
    except Exception as exc:
        error = TypeError(
            f"the result of the single-flight call for key {shown_key(key)} cannot be shared with "
            f"other processes: a {type_name(value)!r} object cannot be serialized ({exc})"
        )
        error.__cause__ = exc
        return encode_error(serializer, error, key), error


#: How many exceptions deep a ``__cause__`` / ``__context__`` chain travels.
CHAIN_DEPTH = 8


def _state(serializer: Serializer, exc: BaseException) -> tuple[object, ...]:
    state = exception_state(exc, partial(_dumps, serializer))
    return (0, exc) if state is None else (1, *state)


#: The context of a chain that is its cause (``raise ... from`` inside ``except``): sent once.
_SAME_AS_CAUSE = "cause"


def _chain(
    serializer: Serializer, exc: BaseException, seen: frozenset[int], depth: int
) -> tuple[object, ...]:
    cause = exc.__cause__
    context = exc.__context__
    return (
        _state(serializer, exc),
        _link(serializer, cause, seen, depth),
        _SAME_AS_CAUSE
        if context is cause and cause is not None
        else _link(serializer, context, seen, depth),
        exc.__suppress_context__,
    )


def _link(
    serializer: Serializer, linked: BaseException | None, seen: frozenset[int], depth: int
) -> tuple[object, ...] | None:
    if linked is None or id(linked) in seen or depth >= CHAIN_DEPTH:
        return None
    return _chain(serializer, linked, seen | {id(linked)}, depth + 1)


def _rebuilt(serializer: Serializer, state: Any) -> BaseException:
    if state[0] == 0:
        exc = state[1]
    else:
        cls, args, attributes, *rest = state[1:]  # (written before fields were carried: none)
        exc = rebuild_exception(cls, args, attributes, rest[0] if rest else None, serializer.loads)
    if not isinstance(exc, BaseException):
        raise TypeError(f"expected an exception, got {exc!r}")
    return exc


def _unchained(serializer: Serializer, chain: Any) -> BaseException:
    state, cause, context, suppress = chain
    exc = _rebuilt(serializer, state)
    exc.__cause__ = _unchained_link(serializer, cause)
    exc.__context__ = (
        exc.__cause__ if context == _SAME_AS_CAUSE else _unchained_link(serializer, context)
    )
    exc.__suppress_context__ = bool(suppress)
    return exc


def _unchained_link(serializer: Serializer, chain: Any) -> BaseException | None:
    if chain is None:
        return None
    try:
        return _unchained(serializer, chain)
    except Exception:
        return None  # a link that cannot be rebuilt here is left out; the exception is not


def encode_error(serializer: Serializer, exc: BaseException, key: Hashable) -> bytes:
    """The leader's exception for the followers, with its chain if that can be serialized
    (a description if the exception itself cannot be)."""
    try:
        return b"E" + _dumps(serializer, _chain(serializer, exc, frozenset({id(exc)}), 0))
    except Exception:
        pass
    try:
        return b"e" + _dumps(serializer, _state(serializer, exc))
    except Exception as why:
        text = (
            f"the single-flight call for key {shown_key(key)} raised {type_name(exc)}: {exc}; the "
            f"exception cannot be serialized to share it with other processes ({why})"
        )
        try:
            return b"e" + _dumps(serializer, (0, TypeError(text)))
        except Exception:
            return b"t" + text.encode("utf-8", "replace")


def decode(serializer: Serializer, data: bytes, key: Hashable) -> Outcome:
    """What :func:`encode_value` or :func:`encode_error` made, as an :class:`Outcome`."""
    tag, body = data[:1], data[1:]
    try:
        if tag == b"v":
            return Outcome(serializer.loads(body), None)
        if tag == b"t":
            return Outcome(None, TypeError(body.decode("utf-8", "replace")))
        if tag == b"E":
            exc = _unchained(serializer, serializer.loads(body))
        elif tag == b"e":
            exc = _rebuilt(serializer, serializer.loads(body))
        else:
            raise ValueError(f"unknown outcome tag {tag!r}")
    except Exception as why:
        error = TypeError(
            f"the outcome of the single-flight call for key {shown_key(key)} could not be "
            f"deserialized in this process: {why!r}"
        )
        error.__cause__ = why
        return Outcome(None, error)
    return Outcome(None, exc)
