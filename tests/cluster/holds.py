"""Keys held across a server's stop, left as a test expects: the healthy ones cleanly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from keyedlock import LeaseLost
from keyedlock._scopes._redis import renewer

from ..support import WAIT


@contextlib.contextmanager
def held(stopped: list[Any], healthy: list[Any]) -> Iterator[None]:
    """Enter every context; at the end leave the ``healthy`` ones (their exit raises
    LeaseLost if a lease was lost meanwhile), then the ``stopped`` ones (whose leases may
    be lost, or their server away), and wait for the clean-ups left to send."""
    for ctx in stopped + healthy:
        ctx.__enter__()
    try:
        yield
    finally:
        for ctx in healthy:
            ctx.__exit__(None, None, None)
        for ctx in stopped:
            with contextlib.suppress(LeaseLost, ConnectionError):
                ctx.__exit__(None, None, None)
        assert renewer.settle(WAIT)
