"""Which of keyedlock's functions trio must not interrupt with Ctrl-C.

trio raises a KeyboardInterrupt at once only in code that is not
*KI-protected*; inside protected code it defers it to the task's next
checkpoint. keyedlock's state changes are consistent at every point a signal
can land already (see the core's docstring), and on top of that its internal
functions are marked protected for trio, as trio asks of libraries: the first
time keyedlock is used under trio, since trio is never imported before.
Functions that call the user's code (``run``, ``guard``, the single-flight
call) are never marked: a Ctrl-C inside the user's function is the user's.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["internal", "protect_with"]

T = TypeVar("T")

#: Held weakly: the classes a lock makes for itself (see _recording) go with it.
_marked: weakref.WeakSet[Callable[..., Any]] = weakref.WeakSet()
_marked_lock = threading.Lock()
_enable: Callable[[Callable[..., Any]], object] | None = None


def _functions(obj: object) -> list[Callable[..., Any]]:
    if not isinstance(obj, type):
        return [obj] if callable(obj) else []
    found: list[Callable[..., Any]] = []
    for value in vars(obj).values():
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property):
            found.extend(f for f in (value.fget, value.fset) if f is not None)
        elif inspect.isfunction(value):
            found.append(value)
    return found


def internal(obj: T) -> T:
    """Mark a function, or every function defined in a class's own body, as internal.

    Returns ``obj`` unchanged: no wrapper, no cost at call time.
    """
    for fn in _functions(obj):
        with _marked_lock:
            _marked.add(fn)
        if _enable is not None:
            _enable(fn)
    return obj


def protect_with(enable: Callable[[Callable[..., Any]], object]) -> None:
    """Protect every internal function, now and later, with ``enable`` (trio's
    ``enable_ki_protection``, which marks the function's code object)."""
    global _enable
    _enable = enable
    with _marked_lock:
        marked = list(_marked)
    for fn in marked:
        enable(fn)
