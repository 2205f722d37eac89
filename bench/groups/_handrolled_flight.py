"""Single-flight written by hand, the way an application usually writes it.

These are baselines, not recommendations: a dict from each key to the future
of its call in flight. The first caller of a key creates the future, runs the
call, sets the future's result (or exception) and deletes the entry; callers
arriving meanwhile await the future. They are written plainly, as a user
would, without micro-optimizations.

:class:`AsyncFlight` awaits the shared future directly, the shortest form; a
follower cancelled while it waits then cancels the future, and with it every
other follower. :class:`AsyncFlightShielded` is the same with the usual fix,
``await asyncio.shield(future)``. Neither hands the call on when the caller
running it is cancelled: its followers get the cancellation.
:class:`ThreadFlight` is the threaded form, a ``concurrent.futures.Future``
per call under a guard lock.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Future
from typing import Any

__all__ = ["AsyncFlight", "AsyncFlightShielded", "ThreadFlight"]


class AsyncFlight:
    """asyncio: dict of ``asyncio.Future``; followers ``await`` the future."""

    def __init__(self) -> None:
        self.calls: dict[Hashable, asyncio.Future[Any]] = {}

    async def do(self, key: Hashable, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        fut = self.calls.get(key)
        if fut is not None:
            return await fut
        fut = asyncio.get_running_loop().create_future()
        self.calls[key] = fut
        try:
            value = await fn(*args)
        except Exception as exc:
            fut.set_exception(exc)
            raise
        except BaseException:
            fut.cancel()
            raise
        else:
            fut.set_result(value)
            return value
        finally:
            del self.calls[key]


class AsyncFlightShielded:
    """asyncio: the same dict of futures; followers ``await asyncio.shield(future)``."""

    def __init__(self) -> None:
        self.calls: dict[Hashable, asyncio.Future[Any]] = {}

    async def do(self, key: Hashable, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        fut = self.calls.get(key)
        if fut is not None:
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self.calls[key] = fut
        try:
            value = await fn(*args)
        except Exception as exc:
            fut.set_exception(exc)
            raise
        except BaseException:
            fut.cancel()
            raise
        else:
            fut.set_result(value)
            return value
        finally:
            del self.calls[key]


class ThreadFlight:
    """Threads: dict of ``concurrent.futures.Future`` under a guard lock."""

    def __init__(self) -> None:
        self.guard = threading.Lock()
        self.calls: dict[Hashable, Future[Any]] = {}

    def do(self, key: Hashable, fn: Callable[..., Any], *args: Any) -> Any:
        with self.guard:
            fut = self.calls.get(key)
            leader = fut is None
            if fut is None:
                fut = self.calls[key] = Future()
        if not leader:
            return fut.result()
        try:
            value = fn(*args)
        except BaseException as exc:
            self._done(key)
            fut.set_exception(exc)
            raise
        self._done(key)
        fut.set_result(value)
        return value

    def _done(self, key: Hashable) -> None:
        with self.guard:
            del self.calls[key]
