"""Holds whose owner ended while holding their key: found, logged, and their waiters told.

A context always releases its key on exit, so only a key taken with
``acquire()`` can outlive its owner (the thread or task that took it). When
callers wait for a key, the table tells :class:`Abandonment` which hold they
wait behind (``KeyTable.on_wait``); it asks the runtime layer to report that
hold's owner's end (:func:`~keyedlock._runtime.when_ended`, once per owner).
If the owner ends still holding the key, the hold is *abandoned*: logged, and
the core ends its waiters' wait with :class:`~keyedlock.Abandoned` (see
``KeyTable.abandon``), which callers that would wait for it get too, until
``release(key)`` frees it. The uncontended path registers nothing.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Hashable
from functools import partial
from typing import Any, Final

from .._core import Hold, KeyTable
from .._errors import Abandoned, shown_key
from .._ki import internal
from .._log import logger
from .._runtime import describe_owner, owner_text, when_ended

__all__ = ["Abandonment", "abandoned_error"]


def abandoned_error(key: Hashable, who: str) -> Abandoned:
    """What the callers of ``key`` raise once ``who`` (its holder's owner, named) ended
    holding it: every scope's words."""
    return Abandoned(
        f"key {shown_key(key)} is held by {who}, which ended without releasing it; "
        "nobody is bound to release it (release(key) still can)"
    )


#: The size of an owner's set of taken keys at which it is first pruned.
_FIRST_PRUNE = 16


class _Taken:
    """The keys one owner took with ``acquire()`` (see :meth:`Abandonment.taken`), and the
    size at which they are pruned next."""

    __slots__ = ("keys", "prune_at")

    def __init__(self, *keys: Hashable) -> None:
        self.keys: set[Hashable] = set(keys)
        self.prune_at = _FIRST_PRUNE


_NOTHING_TAKEN: Final = _Taken()


@internal
class Abandonment:
    """Watches the owners of the holds of one table that others wait for."""

    def __init__(self, table: KeyTable, wide: bool = False) -> None:
        self.table = table
        #: A table of a local-then-wide scope: callers of other processes wait for its keys
        #: too, which it cannot tell (see :meth:`ended`).
        self.wide = wide
        # (Re-entrant: a watched hold freed by the collector, inside a section under the
        # guard, forgets itself under it too: see _forget.)
        self.guard = threading.RLock()
        #: owner -> {key: the owner's hold of it that someone waited behind}, the holds
        #: referred to weakly: a released hold (its context, the waiters it had) is not
        #: kept alive by its watch.
        self.watched: weakref.WeakKeyDictionary[Any, dict[Hashable, weakref.ref[Hold]]] = (
            weakref.WeakKeyDictionary()
        )
        #: owner -> the keys it took with ``acquire()`` while nobody here waited for them
        #: (see :meth:`taken`): the keys only, not the holds (each acquisition would cost a
        #: weak reference); pruned as the set doubles.
        self.taken_by: weakref.WeakKeyDictionary[Any, _Taken] = weakref.WeakKeyDictionary()

    def watch(self, key: Hashable, holder: Hold) -> None:
        """``table.on_wait``: callers wait behind ``holder`` (a hold taken with ``acquire()``:
        a context always releases its key on exit); watch its owner."""
        owner = holder._owner
        with self.guard:
            holds = self.watched.get(owner)
            if holds is not None:
                seen = holds.get(key)
                if seen is None or seen() is not holder:
                    self._prune(holds)
                    holds[key] = self._ref(owner, key, holder)
                return
            self.watched[owner] = {key: self._ref(owner, key, holder)}
        if not when_ended(owner, self.ended):  # (held weakly there)
            with self.guard:
                self.watched.pop(owner, None)

    def taken(self, key: Hashable, holder: Hold) -> None:
        """``holder`` took ``key`` with ``acquire()``, in a scope whose callers may wait in
        other processes (who cannot be seen from here): watch its owner from now on."""
        owner = holder._owner
        taken = self.taken_by.get(owner)
        if taken is not None and key in taken.keys:
            return  # (taken before: only its owner adds to its set, and it runs now)
        with self.guard:
            taken = self.taken_by.get(owner)
            if taken is not None:
                keys = taken.keys
                keys.add(key)
                if len(keys) >= taken.prune_at:
                    # Drop the keys it no longer holds, then again once the set has doubled
                    # (amortized: at most one look-up per key added).
                    holder_of = self.table.holder
                    keys -= {k for k in keys if getattr(holder_of(k), "_owner", None) is not owner}
                    taken.prune_at = max(_FIRST_PRUNE, 2 * len(keys))
                return
            self.taken_by[owner] = _Taken(key)
        if not when_ended(owner, self.ended):  # (held weakly there)
            with self.guard:
                self.taken_by.pop(owner, None)

    def _ref(self, owner: object, key: Hashable, holder: Hold) -> weakref.ref[Hold]:
        """A weak reference to ``holder`` whose end forgets its entry (and with it the key)."""
        return weakref.ref(holder, partial(_forget, weakref.ref(self), weakref.ref(owner), key))

    def _prune(self, holds: dict[Hashable, weakref.ref[Hold]]) -> None:
        """Forget the holds that no longer hold their key (under the guard)."""
        holder = self.table.holder
        try:
            entries = list(holds.items())
        except RuntimeError:  # a hold freed meanwhile forgot itself (see _forget): next time
            return
        for key, hold in entries:
            if holder(key) is not hold():
                holds.pop(key, None)

    def ended(self, owner: object) -> None:
        """The owner ended: each of its holds still holding its key is abandoned."""
        with self.guard:
            holds = self.watched.pop(owner, {})
            taken = self.taken_by.pop(owner, _NOTHING_TAKEN).keys
        found = [(key, seen()) for key, seen in holds.items()]
        holder_of = self.table.holder
        found += [(key, holder_of(key)) for key in taken if key not in holds]
        for key, hold in found:
            if hold is None or hold._owner is not owner or holder_of(key) is not hold:
                continue
            if not hold._watched:  # (a context's hold: its exit releases it)
                continue
            who = owner_text(owner)
            if describe_owner(owner)[0] == "thread":
                # threading.Lock's convention: any thread may release, so a thread that
                # ends may have left the key for another one to release. Said, not broken.
                logger.warning(
                    "key %r is still held by %s, which ended without releasing it (in process "
                    "%d); its waiters wait until someone calls release(key)",
                    key,
                    who,
                    os.getpid(),
                )
                continue
            if self.table.abandon(key, hold, abandoned_error(key, who)):
                logger.warning(
                    "key %r was left held by %s, which ended without releasing it "
                    "(in process %d); the callers waiting for it raise Abandoned%s",
                    key,
                    who,
                    os.getpid(),
                    " in this process; those of other processes wait until release(key) "
                    "here, or this process's end, frees it"
                    if self.wide
                    else "",
                )


def _forget(
    abandonment: weakref.ref[Abandonment],
    owner: weakref.ref[Any],
    key: Hashable,
    seen: weakref.ref[Hold],
) -> None:
    """A watched hold was freed: drop its entry, if it is still the key's."""
    watcher = abandonment()
    watched_owner = owner()
    if watcher is None or watched_owner is None:
        return
    with watcher.guard:
        holds = watcher.watched.get(watched_owner)
        if holds is not None and holds.get(key) is seen:
            del holds[key]
