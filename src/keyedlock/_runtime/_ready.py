"""An awaitable that is already done, for the paths that have nothing to wait for."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Final, cast

__all__ = ["READY"]


class _Ready:
    """An awaitable that is already done: awaiting it returns None at once.

    ``__await__`` is a C-level callable that makes a fresh empty iterator, so
    awaiting it runs no Python frame and creates no coroutine. It is falsy
    (an empty ``__len__``), so that as the result of ``__exit__`` it never
    suppresses an exception.
    """

    __slots__ = ()
    __await__ = ().__iter__
    __len__ = ().__len__


#: The awaitable the uncontended paths return when they have nothing better.
READY: Final[Awaitable[None]] = cast("Awaitable[None]", _Ready())
