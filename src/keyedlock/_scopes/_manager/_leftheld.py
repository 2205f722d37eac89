"""Keys of a manager lock left held by a task that ended: found in its process, told to the manager.

A context always releases its key on exit; a hold taken with ``acquire()``
waits for a ``release(key)`` that may come from anyone. The manager sees
processes, not their threads and tasks (it frees a key when the process
holding it ends), so each process watches the owners of its own
``acquire()`` holds (:func:`~keyedlock._runtime.when_ended`, once per
owner) and tells the manager when one ends (``LEFT_HELD``, naming the owner
as the manager knows it). The manager, which knows which keys that owner
still holds, abandons them if it was a task: the key's waiters in every
process raise :class:`~keyedlock.Abandoned`, as callers that would wait for
it do, until ``release(key)`` frees it, the same policy as the process
scope's (:mod:`keyedlock._scopes._abandon`). A thread that ended holding a
key is logged only: any thread may release it, as with ``threading.Lock``.
This process keeps nothing per key: a key released by another process, or
handed on, needs no bookkeeping here.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Hashable
from typing import Any

from ..._ki import internal
from ..._log import logger
from ..._runtime import describe_owner, owner_text, when_ended
from ._client import client_for
from ._protocol import LEFT_HELD, encode
from ._transport import NoAnswer, deadline_for

__all__ = ["LeftHeld"]


@internal
class LeftHeld:
    """The owners of this process's ``acquire()`` holds of one manager lock, watched."""

    __slots__ = ("__weakref__", "address", "guard", "tid", "watching")

    def __init__(self, address: str, tid: int) -> None:
        self.address = address
        self.tid = tid
        self.guard = threading.Lock()
        #: Each owner whose end is watched (once), with its number on the wire (a thread's is
        #: only known in that thread).
        self.watching: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    def taken(self, owner: object, wire: int) -> None:
        """``owner`` (``wire`` to the manager) took a key with acquire(): watch its end."""
        with self.guard:
            if owner in self.watching:
                return
            self.watching[owner] = wire
        if not when_ended(owner, self.ended):  # (a trio task of a run it cannot reach)
            with self.guard:
                self.watching.pop(owner, None)

    def ended(self, owner: object) -> None:
        """``owner`` ended: the manager abandons a task's keys; the keys are logged."""
        with self.guard:
            wire = self.watching.pop(owner, None)
        if wire is None:
            return
        thread = describe_owner(owner)[0] == "thread"
        # A round trip: from a thread of its own, not from the task's event loop.
        with contextlib.suppress(RuntimeError):  # (at interpreter shutdown: nobody waits)
            threading.Thread(
                target=self._tell,
                args=(wire, owner_text(owner), not thread),
                name="keyedlock-left-held",
                daemon=True,
            ).start()

    def _tell(self, wire: int, who: str, abandon: bool) -> None:
        """Tell the manager that the owner ``wire`` (``who``) ended; log the keys it held."""
        try:
            data = encode(LEFT_HELD, self.tid, wire, who, abandon)
            keys: list[Hashable] = client_for(self.address).call(data, deadline_for(0))
        except (ConnectionError, RuntimeError, NoAnswer):
            return  # the manager is gone (or going, or stuck): nobody waits there any more
        for key in keys:
            if abandon:
                logger.warning(
                    "key %r of a KeyedLockManager lock was left held by %s, which ended "
                    "without releasing it (in process %d); the callers waiting for it, in "
                    "every process, raise Abandoned",
                    key,
                    who,
                    os.getpid(),
                )
            else:
                logger.warning(
                    "key %r of a KeyedLockManager lock is still held by %s, which ended "
                    "without releasing it (in process %d); its waiters wait until someone "
                    "calls release(key)",
                    key,
                    who,
                    os.getpid(),
                )
