"""A caller's ticket in a single-flight group on Redis: its hold here, and its part there."""

from __future__ import annotations

from typing import Final

from ..._core import Hold
from .._contract import Outcome

__all__ = ["FOLLOWING", "LEADING", "NONE", "Ticket"]

#: A ticket's part in the call in Redis: none yet, following, leading.
NONE: Final = 0
FOLLOWING: Final = 1
LEADING: Final = 2


class Ticket(Hold):
    """One caller's ticket: its place in the local table, and its part in Redis."""

    __slots__ = ("lead", "member", "remote", "role")

    def __init__(self, owner: object) -> None:
        super().__init__(owner)
        self.member: str | None = None
        self.role = NONE
        self.lead = ""
        #: The outcome the call in Redis delivered to this ticket (a local leader).
        self.remote: Outcome | None = None
