"""The cluster scope's calls from asyncio and trio tasks (the async half of :class:`~._link.Link`).

asyncio tasks use redis-py's asyncio client of their own loop (see :mod:`._loops`); trio
tasks run the sync calls in trio's worker threads, so that the trio run never blocks. Those
threads are counted by two capacity limiters of keyedlock's own per trio run, never trio's
default one: a wait (a blocking pop, which holds its thread until it is woken or times out,
and after a cancellation until its pop returns) by :data:`WAIT_THREADS`, every other call
(a try, a release, a renewal of a place) by :data:`CALL_THREADS`. So calls never queue
behind waits, nor the program's own ``trio.to_thread`` calls behind either; getting a
thread is bounded by the caller's time (a timed call that finds none free raises
:class:`~._failures.NoThread`, a wait that finds none is a pop that timed out).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Callable
from functools import partial
from time import monotonic
from typing import Any, Final, NoReturn

import redis.exceptions

from ..._ki import internal
from ..._runtime import running_loop
from ._failures import (
    DOWN,
    NoAnswer,
    NoThread,
    RedisUnavailable,
    cluster_node_error,
    redirected,
)
from ._loops import Late, LoopClients
from ._lua import Call

__all__ = ["CALL_THREADS", "WAIT_THREADS", "AsyncCalls"]

#: How many of a trio run's worker threads may block in a wait (a pop) at once; callers
#: beyond it wait for one, in order. A wait holds a connection too, as in any runtime.
WAIT_THREADS: Final = 1000
#: How many of a trio run's worker threads may run the other calls at once.
CALL_THREADS: Final = 64

#: The trio RunVars holding each run's two limiters (made on first use: trio is optional).
_run_vars: dict[str, Any] = {}


@internal
class AsyncCalls:
    """The async calls of a :class:`~._link.Link`, over its sync ones (in trio) and the
    asyncio clients of its loops (``loops``)."""

    __slots__ = ()

    loops: LoopClients
    #: The server, as errors name it, and whether it is a Redis Cluster (see Link).
    server: str
    cluster: bool

    def unavailable(
        self, exc: BaseException, pool: Any = None, kind: type[RedisUnavailable] = RedisUnavailable
    ) -> RedisUnavailable:
        raise NotImplementedError

    def moved(self, exc: redis.exceptions.ResponseError) -> NoReturn:
        """Raise for a MOVED or ASK reply: a cluster client's own (its slot map changed), or,
        from a server not known as a cluster, the error saying to pass a cluster client."""
        if self.cluster:
            raise exc
        raise cluster_node_error(exc, self.server) from exc

    def run(self, call: Call, wait: float | None = None) -> Any:
        raise NotImplementedError

    def command(self, key: bytes, *args: object) -> Any:
        raise NotImplementedError

    def pop(self, key: bytes, block: float) -> bytes | None:
        raise NotImplementedError

    async def _in_trio_thread(
        self, call: Callable[[float | None], Any], shielded: bool, wait: float | None
    ) -> Any:
        """``call(left)`` in a worker thread of the trio run (see the module docstring),
        ``left`` being what remains of ``wait`` when the thread starts. No thread free
        within ``wait``: :class:`~._failures.NoThread` (nothing was sent)."""
        import trio

        limiter = _limiter("keyedlock.redis.calls", CALL_THREADS)
        if wait is None:
            run: Callable[[], Any] = partial(call, None)
        else:
            deadline = monotonic() + wait
            limiter = _Bounded(limiter, trio.current_time() + wait)

            def run() -> Any:
                return call(max(0.001, deadline - monotonic()))

        try:
            with trio.CancelScope(shield=shielded):
                return await trio.to_thread.run_sync(run, limiter=limiter)
        except _NoThread:
            raise NoThread(
                f"no worker thread of this trio run was free within {wait:.3g} s for a call "
                f"to {self.server} ({CALL_THREADS} calls were running)"
            ) from None

    async def run_async(self, call: Call, wait: float | None = None) -> Any:
        """As :meth:`run`, from an asyncio or trio task."""
        loop = running_loop()
        if loop is None:
            return await self._in_trio_thread(partial(self.run, call), False, wait)
        side = self.loops.get(loop) or await self.loops.open(loop)
        if wait is None:
            try:
                return await side.run(call)
            except DOWN as exc:
                raise self.unavailable(exc) from exc
            except redis.exceptions.ResponseError as exc:
                if not redirected(exc):
                    raise
                self.moved(exc)
        bound = asyncio.timeout(max(wait, 0.001))
        try:
            async with bound:
                return await side.run(call)
        except DOWN as exc:  # (first: a cluster that is down answers with a ResponseError)
            if bound.expired():
                late = Late(f"within {wait:.3g} s")
                raise self.unavailable(late, None, NoAnswer) from None
            raise self.unavailable(exc) from exc
        except redis.exceptions.ResponseError as exc:
            if not redirected(exc):
                raise
            self.moved(exc)

    async def finish_async(self, call: Call) -> tuple[Any, BaseException | None]:
        """As :meth:`run_async`, but finished even if the task is cancelled meanwhile (a
        release, a conclusion: the server must know before the task goes on). Returns the
        reply and the cancellation that came meanwhile (None under trio, whose shield
        delivers it at the next checkpoint), for the caller to raise once the reply is
        handled."""
        if running_loop() is None:
            return await self._in_trio_thread(lambda _: self.run(call), True, None), None
        inner = asyncio.ensure_future(self.run_async(call))
        try:
            return await asyncio.shield(inner), None
        except asyncio.CancelledError as exc:
            if inner.cancelled():
                raise  # the call itself was cancelled (its loop is closing)
            cancelled = exc
        with _anyio_shield():
            while not inner.done():  # cancelled meanwhile: the call goes on to its end
                try:
                    await asyncio.wait((inner,))
                except asyncio.CancelledError as exc:
                    cancelled = exc
        if inner.cancelled() or inner.exception() is not None:
            raise cancelled  # the call did not go through: the caller hands it on
        return inner.result(), cancelled

    async def command_async(self, key: bytes, *args: object) -> Any:
        """As :meth:`command`, from an asyncio or trio task."""
        loop = running_loop()
        if loop is None:
            return await self._in_trio_thread(lambda _: self.command(key, *args), False, None)
        side = self.loops.get(loop) or await self.loops.open(loop)
        try:
            return await side.command(*args)
        except DOWN as exc:
            raise self.unavailable(exc) from exc

    async def pop_async(self, key: bytes, block: float) -> bytes | None:
        """As :meth:`pop`, from an asyncio or trio task; cancellation stops waiting."""
        loop = running_loop()
        if loop is None:
            import trio

            # A thread not free within ``block`` is a pop that timed out (its caller asks
            # again, and keeps its own deadline); one found later pops for what is left.
            until = monotonic() + block
            limiter: Any = _Bounded(  # (trio takes any limiter-like object; typed as its own)
                _limiter("keyedlock.redis.waits", WAIT_THREADS), trio.current_time() + block
            )
            try:
                return await trio.to_thread.run_sync(
                    lambda: self.pop(key, max(0.001, until - monotonic())),
                    abandon_on_cancel=True,
                    limiter=limiter,
                )
            except _NoThread:
                return None
        side = self.loops.get(loop) or await self.loops.open(loop)
        block = max(0.001, block)
        try:
            return await side.pop(key, block)
        except Late as exc:
            raise self.unavailable(exc, None, NoAnswer) from None
        except DOWN as exc:
            raise self.unavailable(exc) from exc


def _anyio_shield() -> contextlib.AbstractContextManager[object]:
    """A shield from anyio's cancel scopes, if anyio is in use: a cancelled scope cancels
    its task again at every turn of the loop, which would make the wait for a finishing
    call a busy loop. (A plain cancellation still reaches the task, and is kept.)"""
    anyio = sys.modules.get("anyio")
    if anyio is None:
        return contextlib.nullcontext()
    shield: contextlib.AbstractContextManager[object] = anyio.CancelScope(shield=True)
    return shield


class _NoThread(Exception):
    """No worker thread was free by the deadline (raised before any thread started)."""


class _Bounded:
    """A trio run's limiter, with a deadline (trio time) on getting a thread: raises
    :class:`_NoThread` once it passes (trio's ``to_thread`` then starts nothing)."""

    __slots__ = ("deadline", "limiter")

    def __init__(self, limiter: Any, deadline: float) -> None:
        self.limiter = limiter
        self.deadline = deadline

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        import trio

        with trio.move_on_at(self.deadline):
            await self.limiter.acquire_on_behalf_of(borrower)
            return
        raise _NoThread

    def release_on_behalf_of(self, borrower: object) -> None:
        self.limiter.release_on_behalf_of(borrower)


def _limiter(name: str, threads: int) -> Any:
    """The trio run's :class:`trio.CapacityLimiter` called ``name`` (made on first use)."""
    import trio

    var = _run_vars.get(name)
    if var is None:
        var = _run_vars.setdefault(name, trio.lowlevel.RunVar(name))
    try:
        return var.get()
    except LookupError:
        limiter = trio.CapacityLimiter(threads)
        var.set(limiter)
        return limiter
