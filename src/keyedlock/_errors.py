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
from collections.abc import Callable
from types import MemberDescriptorType
from typing import Final

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
]


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

ExceptionState = tuple[type[BaseException], tuple[object, ...], dict[str, object]]


def _fields(cls: type[BaseException]) -> dict[str, MemberDescriptorType]:
    """The fields of ``cls``'s instances kept outside their ``__dict__``: those of built-in
    bases that their C ``__init__`` fills (SyntaxError's ``filename`` and ``lineno``,
    AttributeError's ``name``, UnicodeError's ``start``...) and ``__slots__``."""
    return {
        name: attr
        for base in reversed(cls.__mro__)
        for name, attr in vars(base).items()
        if isinstance(attr, MemberDescriptorType) and not name.startswith("__")
    }


def exception_state(
    exc: BaseException, portable: Callable[[object], object] | None = None
) -> ExceptionState | None:
    """What rebuilds ``exc`` without calling its ``__init__`` again, or None.

    Copying or pickling an exception normally calls ``type(exc)(*exc.args)``:
    an ``__init__`` written in Python that formats its message from its
    parameters then sees the formatted message and changes ``args``. For
    such a class (with no pickling of its own) this returns (type, args,
    attributes) for :func:`rebuild_exception`: the attributes are its
    ``__dict__`` and the fields kept outside it (see :func:`_fields`); with
    ``portable`` (a serializer's ``dumps``), only the fields it can carry (a
    plain pickle of a built-in exception leaves them out, and an
    AttributeError's ``obj`` is often an object nothing can carry). None
    where a plain copy or pickle is already faithful.
    """
    cls = type(exc)
    if isinstance(cls.__init__, _SLOT_WRAPPER) or cls.__reduce__ is not BaseException.__reduce__:
        return None
    if not hasattr(exc, "__dict__"):
        return None
    attributes: dict[str, object] = {}
    for name, field in _fields(cls).items():
        try:
            value = field.__get__(exc, cls)
            if portable is not None:
                portable(value)
        except Exception:  # unset, or not carried
            continue
        attributes[name] = value
    attributes.update(vars(exc))
    return cls, exc.args, attributes


def rebuild_exception(
    cls: type[BaseException], args: tuple[object, ...], attributes: dict[str, object]
) -> BaseException:
    """The exception :func:`exception_state` described (``__init__`` is not called)."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    fields = _fields(cls)
    for name, value in attributes.items():
        field = fields.get(name)
        if field is None:
            exc.__dict__[name] = value
            continue
        with contextlib.suppress(AttributeError, TypeError):  # read-only: set by __new__
            field.__set__(exc, value)
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
