"""What resets itself in a fork child: each registered object's ``forked()`` runs there.

A child has only the thread that forked: what the parent's other threads held,
waited for or ran does not exist in it, and a lock one of them held stays held
forever. The backends register here to start afresh in the child.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Protocol

__all__ = ["Forkable", "reset_in_child"]


class Forkable(Protocol):
    def forked(self) -> None:
        """In a fork child: drop what the parent's threads held; take new locks."""
        ...


#: The registered objects (held weakly: a dropped backend needs no reset).
_live: weakref.WeakSet[Forkable] = weakref.WeakSet()


def reset_in_child(obj: Forkable) -> None:
    """Call ``obj.forked()`` in every fork child of this process, as long as ``obj`` lives."""
    _live.add(obj)


def _in_child() -> None:
    for obj in list(_live):
        with contextlib.suppress(Exception):
            obj.forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_in_child)
