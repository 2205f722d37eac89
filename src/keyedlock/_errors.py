"""The exceptions keyedlock raises.

Every exception specific to keyedlock derives from :class:`KeyedLockError`.
Misuse of the API raises the standard exception a Python programmer expects
(``TypeError`` for an unhashable key, ``ValueError`` for a negative timeout,
``RuntimeError`` for releasing a key nobody holds or for a blocking acquire
inside a running event loop).
"""

from __future__ import annotations

import contextlib
import copy
import copyreg
from collections.abc import Callable
from types import GetSetDescriptorType, MemberDescriptorType
from typing import Any, Final

__all__ = [
    "Abandoned",
    "Aborted",
    "KeyedLockError",
    "LeaseLost",
    "LockTimeout",
    "QueueFull",
    "exception_state",
    "follower_copy",
    "rebuild_exception",
    "shown_key",
]


def shown_key(key: object) -> str:
    """``repr(key)``, for a message that names ``key``: a key whose repr fails (an int of
    more digits than Python turns into text, a tuple holding one) is named by its type,
    rather than the message failing in its place."""
    try:
        return repr(key)
    except Exception as exc:
        if isinstance(key, int):
            return f"<int of {key.bit_length()} bits>"
        return f"<{type(key).__name__} key: its repr failed ({type(exc).__name__})>"


class KeyedLockError(Exception):
    """Base class of the exceptions specific to keyedlock."""


class LockTimeout(KeyedLockError, TimeoutError):
    """The key could not be acquired before ``timeout`` elapsed.

    Raised by the context manager, ``run``, ``run_sync`` and ``guard``; the
    plain ``acquire`` methods return ``False`` instead. It is a
    :class:`TimeoutError`, so ``except TimeoutError`` catches it too.
    """


class Aborted(KeyedLockError):
    """The wait was aborted because the holder's work failed.

    Raised in every caller that was queued on a key when a function run with
    ``on_error="stop"`` raised an exception. ``__cause__`` is that exception.
    Callers arriving afterwards start fresh.
    """


class QueueFull(KeyedLockError):
    """The key already has ``max_waiters`` callers queued; nothing was queued."""


class Abandoned(KeyedLockError):
    """The key's holder, an asyncio or trio task, ended without releasing it.

    Only a key taken with ``acquire()`` (or ``acquire_async()``) can be left
    so: nobody is bound to release it any more. The callers that were
    waiting for it raise this, and so do callers that would wait for it,
    until ``release(key)`` (by anyone) frees it. Like trio's
    ``BrokenResourceError`` for a ``Lock`` whose owner exited: a clear error
    instead of waiting forever. A thread that ends holding a key is only
    logged, and its waiters keep waiting: as with ``threading.Lock``, any
    thread may release it.
    """


class LeaseLost(KeyedLockError):
    """The lease on a key of a cluster scope was lost while the key was held.

    Raised when the holder leaves (the context's exit, ``run``, ``release``)
    after its lease ran out or the server forgot it: the process was stopped
    or cut off from the server longer than the lease, or the server restarted
    without its data. The key is released all the same (never another
    holder's grant), but another caller may have held it meanwhile: what the
    body wrote after the loss is protected only by the fencing token
    (``held.token``, passed to the resources it writes). ``held.lost`` turns
    True as soon as the loss is known, so a long body can check it between
    steps.
    """


# -- copying exceptions (single-flight followers get a copy of the leader's) --

_SLOT_WRAPPER: Final = type(BaseException.__init__)

#: (type, args, attributes, fields): see :func:`exception_state`.
ExceptionState = tuple[
    type[BaseException], tuple[object, ...], dict[str, object], dict[str, object]
]

#: The pickling of the exceptions whose state :func:`exception_state` describes: plain, or
#: that of a built-in base whose fields it carries itself (OSError's; ImportError's; and,
#: from Python 3.12, AttributeError's), which calls the class with its ``args`` too.
_REDUCES: Final = frozenset(
    {
        BaseException.__reduce__,
        OSError.__reduce__,
        ImportError.__reduce__,
        AttributeError.__reduce__,
    }
)


#: Descriptors of BaseException's (and object's) own, never carried as fields.
_OWN: Final = frozenset(vars(BaseException)) | frozenset(vars(object))


#: The state hooks of the exceptions :data:`_REDUCES` covers (AttributeError's own
#: ``__getstate__`` from Python 3.12).
_GETSTATES: Final = frozenset({object.__getstate__, AttributeError.__getstate__})


def _plainly_pickled(cls: type[BaseException]) -> bool:
    """True if ``cls`` has no copying or pickling of its own (none of the hooks ``copy``
    and ``pickle`` honour), only that of a built-in base in :data:`_REDUCES`."""
    return (
        cls.__reduce__ in _REDUCES
        and cls.__reduce_ex__ is object.__reduce_ex__
        and cls.__getstate__ in _GETSTATES
        and cls.__setstate__ is BaseException.__setstate__
        and not hasattr(cls, "__copy__")
        and cls not in copyreg.dispatch_table
    )


def _fields(cls: type[BaseException]) -> dict[str, Any]:
    """The fields of ``cls``'s instances kept outside their ``__dict__``: those of built-in
    bases that their C ``__init__`` fills (SyntaxError's ``filename`` and ``lineno``,
    AttributeError's ``name``, UnicodeError's ``start``, OSError's ``errno`` and
    BlockingIOError's ``characters_written``...) and ``__slots__``."""
    return {
        name: attr
        for base in reversed(cls.__mro__)
        for name, attr in vars(base).items()
        if name not in _OWN
        and not name.startswith("__")
        and (
            isinstance(attr, MemberDescriptorType)
            or (isinstance(attr, GetSetDescriptorType) and base.__module__ == "builtins")
        )
    }


def exception_state(
    exc: BaseException, dumps: Callable[[object], object] | None = None
) -> ExceptionState | None:
    """What rebuilds ``exc`` without calling its ``__init__`` again, or None.

    Copying or pickling an exception normally calls ``type(exc)(*exc.args)``:
    an ``__init__`` written in Python that formats its message from its
    parameters then sees the formatted message and changes ``args``. For
    such a class (with no pickling of its own) this returns (type, args,
    attributes, fields) for :func:`rebuild_exception`: its ``__dict__``, and
    the fields kept outside it that are set (see :func:`_fields`). With
    ``dumps`` (a serializer's, for another process), each field is its
    ``dumps``, and one it cannot carry is left out (a plain pickle of a
    built-in exception leaves them all out; an AttributeError's ``obj`` is
    often an object nothing can carry). None where a plain copy or pickle is
    already faithful.
    """
    cls = type(exc)
    if isinstance(cls.__init__, _SLOT_WRAPPER) or not _plainly_pickled(cls):
        return None
    if not hasattr(exc, "__dict__"):
        return None
    fields: dict[str, object] = {}
    for name, field in _fields(cls).items():
        try:
            value = field.__get__(exc, cls)
            if value is None and field.__objclass__.__module__ == "builtins":
                # A built-in base's field reads None where unset (a slot would raise): the
                # same to anyone reading it, not to its C code.
                continue
            fields[name] = value if dumps is None else dumps(value)
        except Exception:  # unset, or not carried
            continue
    return cls, exc.args, dict(vars(exc)), fields


def rebuild_exception(
    cls: type[BaseException],
    args: tuple[object, ...],
    attributes: dict[str, object],
    fields: dict[str, object] | None = None,
    loads: Callable[[Any], object] | None = None,
) -> BaseException:
    """The exception :func:`exception_state` described (``__init__`` is not called).

    ``loads``: the serializer's, for fields its ``dumps`` made; a field that
    cannot be loaded here (its class is the other program's own) is left out.
    """
    exc = cls.__new__(cls, *args)
    exc.args = args
    found = _fields(cls)
    if fields is None:  # (a state written before fields were carried apart: among them)
        fields = {name: attributes[name] for name in found if name in attributes}
        attributes = {name: value for name, value in attributes.items() if name not in found}
        loads = None
    exc.__dict__.update(attributes)
    for name, carried in fields.items():
        field = found.get(name)
        if field is None:
            continue
        # (Read-only: set by __new__ from the args; or a value the field refuses.)
        with contextlib.suppress(Exception):
            field.__set__(exc, carried if loads is None else loads(carried))
    return exc


def follower_copy(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for another caller (a single-flight follower), so tracebacks never
    mix across callers.

    Same type, args, attributes and ``__cause__``; the original when the type
    cannot be copied.
    """
    state = exception_state(exc)
    try:
        dup = copy.copy(exc) if state is None else rebuild_exception(*state)
    except Exception:
        return exc
    if type(dup) is not type(exc) or dup is exc:
        return exc
    dup.__cause__ = exc.__cause__
    dup.__context__ = exc.__context__
    dup.__suppress_context__ = exc.__suppress_context__
    notes = getattr(exc, "__notes__", None)
    if isinstance(notes, list):
        dup.__notes__ = list(notes)
    return dup
