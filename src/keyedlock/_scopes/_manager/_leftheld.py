"""Keys of a manager lock left held by a task that ended: found in its process, told to the manager.

A context always releases its key on exit; a hold taken with ``acquire()``
waits for a ``release(key)`` that may come from anyone. The manager sees
processes, not their threads and tasks (it frees a key when the process
holding it ends), so each process watches the owners of its own
``acquire()`` holds (:func:`~keyedlock._runtime.when_ended`, once per
owner). When a task ends still holding a key, the process tells the manager
(``LEFT_HELD``): the hold is *abandoned* there, and the key's waiters in
every process raise :class:`~keyedlock.Abandoned`, as callers that would
wait for it do, until ``release(key)`` frees it; the same policy as the
process scope's (:mod:`keyedlock._scopes._abandon`). A thread that ends
holding a key is logged only: any thread may release it, as with
``threading.Lock``.
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
from ._transport import NoAnswer

__all__ = ["LeftHeld"]


@internal
class LeftHeld:
    """This process's ``acquire()`` holds of one manager lock, and their owners' ends."""

    __slots__ = ("__weakref__", "address", "guard", "held", "tid", "watching")

    def __init__(self, address: str, tid: int) -> None:
        self.address = address
        self.tid = tid
        self.guard = threading.Lock()
        #: key -> (owner, the serial of its hold): the last hold of each key taken here with
        #: acquire(), until this process releases the key (an entry left by a release from
        #: another process is told to the manager at its owner's end, which says no).
        self.held: dict[Hashable, tuple[Any, int]] = {}
        #: The owners whose end is watched already (once each).
        self.watching: weakref.WeakSet[Any] = weakref.WeakSet()

    def taken(self, key: Hashable, owner: object, serial: int) -> None:
        """``owner`` took ``key`` with acquire() (its hold ``serial``): watch its end."""
        with self.guard:
            self.held[key] = (owner, serial)
            if owner in self.watching:
                return
            self.watching.add(owner)
        if not when_ended(owner, self.ended):  # (a trio task of a run it cannot reach)
            with self.guard:
                self.watching.discard(owner)

    def released(self, key: Hashable) -> None:
        """This process released ``key``."""
        with self.guard:
            self.held.pop(key, None)

    def ended(self, owner: object) -> None:
        """``owner`` ended: the keys it still holds are logged, and a task's are abandoned."""
        with self.guard:
            self.watching.discard(owner)
            left = [(key, serial) for key, (who, serial) in self.held.items() if who is owner]
            for key, _ in left:
                del self.held[key]
        if not left:
            return
        if describe_owner(owner)[0] == "thread":
            for key, _ in left:
                logger.warning(
                    "key %r of a KeyedLockManager lock is still held by %s, which ended "
                    "without releasing it (in process %d); its waiters wait until someone "
                    "calls release(key)",
                    key,
                    owner_text(owner),
                    os.getpid(),
                )
            return
        # A round trip each: from a thread of its own, not from the task's event loop.
        with contextlib.suppress(RuntimeError):  # (at interpreter shutdown: nobody waits)
            threading.Thread(
                target=self._tell,
                args=(owner_text(owner), left),
                name="keyedlock-left-held",
                daemon=True,
            ).start()

    def _tell(self, who: str, left: list[tuple[Hashable, int]]) -> None:
        """Tell the manager of each key ``who`` left held; log those it abandons."""
        for key, serial in left:
            try:
                data = encode(LEFT_HELD, self.tid, key, serial, who)
                abandoned = client_for(self.address).call(data)
            except (ConnectionError, RuntimeError, NoAnswer):
                continue  # the manager is gone (or going): nobody waits there any more
            if abandoned:
                logger.warning(
                    "key %r of a KeyedLockManager lock was left held by %s, which ended "
                    "without releasing it (in process %d); the callers waiting for it, in "
                    "every process, raise Abandoned",
                    key,
                    who,
                    os.getpid(),
                )
