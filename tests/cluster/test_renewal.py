"""The renewal thread on its own: what ``settle`` waits for.

``settle`` is what tests (and interpreter exit) use to know that nothing is left for the
thread to send: a chore queued or running. A renewal round is no such thing; it comes every
third of a lease whether anything was left over or not.
"""

from __future__ import annotations

import threading
from typing import Any

from keyedlock._scopes._redis._renewal import Renewer

from ..support import WAIT


class SlowMember:
    """A member whose renewal round blocks until the test lets it go."""

    period = 0.01
    link: Any = None

    def __init__(self) -> None:
        self.in_round = threading.Event()
        self.go = threading.Event()

    def renewals(self) -> list[Any]:
        self.in_round.set()
        self.go.wait(WAIT)
        return []

    def forked(self) -> None:
        pass


def test_a_renewal_round_in_progress_is_not_a_chore_left_over() -> None:
    renewer = Renewer()
    member = SlowMember()
    renewer.add(member)
    try:
        assert member.in_round.wait(WAIT), "no renewal round came"
        assert renewer.settle(0), "a renewal round counted as a chore left over"
    finally:
        member.go.set()
