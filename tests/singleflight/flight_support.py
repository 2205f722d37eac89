"""Helpers of the single-flight tests: waiting for followers, and exceptions' tracebacks."""

from __future__ import annotations

from collections.abc import Hashable

from keyedlock import SingleFlight

from ..support import wait_until, wait_until_async

__all__ = ["traceback_functions", "wait_followers", "wait_followers_async"]


def wait_followers(group: SingleFlight, key: Hashable, count: int) -> None:
    """Wait (bounded) until ``count`` callers wait on the call in flight for ``key``."""
    local = group._local(key)  # the backend's key (a scope may map keys)
    wait_until(
        lambda: group._backend.waiters(local) == count, f"{count} follower(s) wait on {key!r}"
    )


async def wait_followers_async(group: SingleFlight, key: Hashable, count: int) -> None:
    """As :func:`wait_followers`, from an asyncio or trio task (lets the other tasks run)."""
    local = group._local(key)
    await wait_until_async(
        lambda: group._backend.waiters(local) == count, f"{count} follower(s) wait on {key!r}"
    )


def traceback_functions(exc: BaseException) -> set[str]:
    """Names of the functions whose frames ``exc``'s traceback passes through."""
    names = set()
    tb = exc.__traceback__
    while tb is not None:
        names.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return names
