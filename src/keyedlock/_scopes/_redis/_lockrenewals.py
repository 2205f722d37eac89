"""What a lock's cluster scope gives the renewal thread (:mod:`._renewal`) each round.

Every third of the lease the renewal thread asks each scope for its calls:
a ``renew`` per key it holds, a ``refresh`` per place it waits in
(:meth:`LockRenewals.renewals`), and a ``report`` per key whose count of
this process's callers queued behind its attempt changed
(:meth:`LockRenewals.reports`). A renewal refused, or one that cannot reach
the server until the lease is over, loses the hold's lease (see
:mod:`._attempt`). A place whose caller can never take the key (an asyncio
task whose event loop was closed while it waited) is withdrawn instead of
refreshed, and the key passed on to this process's next caller.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from time import monotonic
from typing import Any

from ..._core import Hold
from ..._runtime import never_runs_again
from ._attempt import HELD, Attempt, lose
from ._lockcalls import Refreshed, parse_refresh, refresh, renew, report
from ._lua import Call
from ._renewal import Renewal

__all__ = ["LockRenewals"]


class LockRenewals:
    """The renewal side of :class:`~._lockscope.RedisScope` (a mixin)."""

    __slots__ = ()

    held: dict[Hold, Attempt]
    changed_keys: set[Hashable]
    lease: float
    lease_ms: int

    #: (See WideScope.lost.)
    lost: Callable[[Hashable, Hold], None] | None

    def _behind(self, local_key: Hashable) -> tuple[Hold | None, int]:
        raise NotImplementedError

    def abandon(self, local_key: Hashable, hold: Hold) -> bool:
        raise NotImplementedError

    # -- this process's callers behind its attempts --------------------------------

    def reports(self) -> list[Call]:
        """The counts that changed since they were last sent (for the renewal thread)."""
        calls: list[Call] = []
        changed = self.changed_keys
        while changed:
            try:
                local_key = changed.pop()
            except KeyError:  # (emptied by another thread meanwhile)
                break
            holder, behind = self._behind(local_key)
            attempt = None if holder is None else self.held.get(holder)
            if attempt is None or attempt.behind == behind:
                continue  # (none yet: its acquire will carry the count)
            attempt.behind = behind
            names = attempt.key.names
            calls.append(report(names, attempt.waiter, behind=behind, keep_ms=self.lease_ms))
        return calls

    # -- renewal ------------------------------------------------------------

    def renewals(self) -> list[Renewal]:
        """This round's calls: a ``renew`` per held key, a ``refresh`` per waiting place."""
        sent = monotonic()
        calls: list[Renewal] = []
        lease_ms = self.lease_ms
        for hold, attempt in list(self.held.items()):
            names = attempt.key.names
            holder, behind = self._behind(attempt.key)
            if holder is not hold:
                behind = 0  # (its callers behind are another attempt's by now)
            attempt.behind = behind
            waiter = attempt.waiter
            if attempt.state == HELD:
                if not attempt.lost:
                    call = renew(names, waiter, lease_ms=lease_ms, behind=behind)
                    calls.append((call, self._renewed(hold, attempt, sent)))
            elif never_runs_again(hold._owner):
                self._drop_gone(hold, attempt)
            else:
                call = refresh(names, waiter, lease_ms=lease_ms, place_ms=lease_ms, behind=behind)
                calls.append((call, self._refreshed(attempt, sent)))
        return calls

    def _drop_gone(self, hold: Hold, attempt: Attempt) -> None:
        """``hold`` waits in Redis for a caller that can never take the key: its place is
        withdrawn (a key handed to it meanwhile goes on), and the key passed on here."""
        local_key = attempt.key
        if self.abandon(local_key, hold):  # (False: its caller's own undo came first)
            lost = self.lost
            if lost is not None:
                lost(local_key, hold)

    def _renewed(self, hold: Hold, attempt: Attempt, sent: float) -> Any:
        def done(reply: object) -> None:
            if reply == 1:
                attempt.expires = sent + self.lease
            elif self.held.get(hold) is attempt and (
                not isinstance(reply, BaseException) or monotonic() >= attempt.expires
            ):
                # Refused (not the owner), or unreachable until the lease was over.
                lose(
                    hold,
                    attempt,
                    "Redis could not be reached until the lease ran out"
                    if isinstance(reply, BaseException)
                    else "the renewal found it held by someone else or by nobody",
                )

        return done

    def _refreshed(self, attempt: Attempt, sent: float) -> Any:
        def done(reply: object) -> None:
            if not isinstance(reply, BaseException) and parse_refresh(reply) == Refreshed.HELD:
                attempt.expires = sent + self.lease  # handed the key: its lease was renewed

        return done
