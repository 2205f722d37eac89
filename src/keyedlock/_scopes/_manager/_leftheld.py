"""Keys of a manager lock left held by a task that ended: found in its process, told to the manager.

A context always releases its key on exit; a hold taken with ``acquire()``
waits for a ``release(key)`` that may come from anyone. The manager sees
processes, not their threads and tasks (it frees a key when the process
holding it ends), so each process watches the owners of its own
``acquire()`` holds (:func:`~keyedlock._runtime.when_ended`, once per
owner) and tells the manager when one ends (``LEFT_HELD``, naming the owner
as the manager knows it). The manager, which knows which keys that owner
still holds from ``acquire()`` (ACQUIRE says so; a context's key is
released by its exit, wherever that runs), abandons them if it was a task:
the key's waiters in every
process raise :class:`~keyedlock.Abandoned`, as callers that would wait for
it do, until ``release(key)`` frees it, the same policy as the process
scope's (:mod:`keyedlock._scopes._abandon`). A thread that ended holding a
key is logged only: any thread may release it, as with ``threading.Lock``.
This process keeps nothing per key: a key released by another process, or
handed on, needs no bookkeeping here.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Hashable
from typing import Any

from ..._ki import internal
from ..._log import logger
from ..._runtime import describe_owner, owner_text, when_ended
from ._client import client_for
from ._owners import owner_id
from ._protocol import LEFT_HELD, encode
from ._transport import NoAnswer, deadline_for

__all__ = ["LeftHeld", "left_held_for"]

#: Each lock's watch in this process, by (process id, manager address, lock id): every proxy
#: of one lock shares it, so an owner's end is told (and logged) once; a fork child makes its
#: own (whenever its backends ask: before or after any at-fork handler). Held weakly, by the
#: backends.
_watches: weakref.WeakValueDictionary[tuple[int, str, int], LeftHeld] = (
    weakref.WeakValueDictionary()
)


def left_held_for(address: str, tid: int) -> LeftHeld:
    """This process's watch of the lock ``tid`` of the manager at ``address``."""
    key = (os.getpid(), address, tid)
    watch = _watches.get(key)
    if watch is None:  # (two threads racing here may make two: an end is then told twice)
        watch = _watches.setdefault(key, LeftHeld(address, tid))
    return watch


@internal
class LeftHeld:
    """The owners of this process's ``acquire()`` holds of one manager lock, watched."""

    __slots__ = ("__weakref__", "address", "ended_owners", "guard", "reporting", "tid", "watching")

    def __init__(self, address: str, tid: int) -> None:
        self.address = address
        self.tid = tid
        self.guard = threading.Lock()
        #: Each owner whose end is watched (once), with its number on the wire (a thread's is
        #: only known in that thread).
        self.watching: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
        #: Owners that ended, not yet told: (wire number, name, abandon).
        self.ended_owners: list[tuple[int, str, bool]] = []
        #: True while a thread tells the manager (it takes every end queued meanwhile).
        self.reporting = False

    def taken(self, owner: object) -> None:
        """``owner`` took a key with acquire(): watch its end. Called in the owner's own
        thread, where its number on the wire is known (once per owner)."""
        with self.guard:
            if owner in self.watching:
                return
            self.watching[owner] = owner_id(owner)
        if not when_ended(owner, self.ended):  # (a trio task of a run it cannot reach)
            with self.guard:
                self.watching.pop(owner, None)

    def ended(self, owner: object) -> None:
        """``owner`` ended: queued for the manager, which abandons a task's keys."""
        abandon = describe_owner(owner)[0] != "thread"
        with self.guard:
            wire = self.watching.pop(owner, None)
            if wire is None:
                return
            self.ended_owners.append((wire, owner_text(owner), abandon))
            if self.reporting:
                return  # (the running report takes it)
            self.reporting = True
        # Round trips: from a thread of its own, not from the task's event loop.
        try:
            threading.Thread(target=self._report, name="keyedlock-left-held", daemon=True).start()
        except RuntimeError:  # at interpreter shutdown: nobody waits any more
            with self.guard:
                self.reporting = False

    def _report(self) -> None:
        """Tell the manager of the owners that ended, in batches, until none is left."""
        try:
            while True:
                with self.guard:
                    batch = self.ended_owners
                    if not batch:
                        self.reporting = False
                        return
                    self.ended_owners = []
                self._tell(batch)
        except BaseException:  # (not expected: the next end starts a report again)
            with self.guard:
                self.reporting = False
            raise

    def _tell(self, batch: list[tuple[int, str, bool]]) -> None:
        """Tell the manager that the owners of ``batch`` ended; log the keys they held."""
        try:
            data = encode(LEFT_HELD, self.tid, batch)
            left: list[tuple[str, bool, Hashable]] = client_for(self.address).call(
                data, deadline_for(0)
            )
        except (ConnectionError, RuntimeError, NoAnswer):
            return  # the manager is gone (or going, or stuck): nobody waits there any more
        for who, abandoned, key in left:
            if abandoned:
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
