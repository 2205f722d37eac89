"""One call shared across runtimes: threads, asyncio loops and trio runs, each in its own thread.

A sync function started by a thread is shared with asyncio and trio callers; an async function
started by an asyncio or trio task is shared with callers of every runtime, threads included.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Literal

import anyio
import pytest

from keyedlock import Result, SingleFlight

from ..support import WAIT, AsyncioThread, Handle, TaskCancelled, Threads, TrioThread, wait_until
from .flight_support import traceback_functions, wait_followers

Runtime = Literal["thread", "asyncio", "asyncio-2", "trio"]
RUNTIMES: tuple[Runtime, ...] = ("thread", "asyncio", "asyncio-2", "trio")


class FetchError(Exception):
    """The error the shared call raises in these tests."""


class Callers:
    """Starts callers of one :class:`SingleFlight` in threads, two asyncio loops and a trio run.

    A thread calls ``do_sync_ex`` with the sync function; a task calls ``do_ex`` with the
    async one, or with the sync one when ``sync`` is true.
    """

    def __init__(
        self,
        sf: SingleFlight,
        threads: Threads,
        loops: dict[Runtime, AsyncioThread | TrioThread],
    ) -> None:
        self.sf = sf
        self.threads = threads
        self.loops = loops

    def start(
        self,
        runtime: Runtime,
        name: str,
        fetch_sync: Callable[[str], str],
        fetch_async: Callable[[str], Coroutine[Any, Any, str]],
        *,
        sync: bool = False,
    ) -> Handle[Result[str]]:
        sf = self.sf
        if runtime == "thread":
            return self.threads.start(lambda: sf.do_sync_ex("k", fetch_sync, name), name)
        task: Callable[[], Coroutine[Any, Any, Result[str]]]
        if sync:
            task = lambda: sf.do_ex("k", fetch_sync, name)  # noqa: E731
        else:
            task = lambda: sf.do_ex("k", fetch_async, name)  # noqa: E731
        return self.loops[runtime].submit(task, name)


@pytest.fixture
def callers(
    sf: SingleFlight, threads: Threads, asyncio_thread: AsyncioThread, trio_thread: TrioThread
) -> Iterator[Callers]:
    second_loop = AsyncioThread("asyncio-2")
    try:
        yield Callers(
            sf, threads, {"asyncio": asyncio_thread, "asyncio-2": second_loop, "trio": trio_thread}
        )
    finally:
        second_loop.close()


class GatedCall:
    """A call that ends when the test thread sets ``gate``, in a sync and an async version."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.gate = threading.Event()
        self.calls: list[str] = []
        self.error = error
        self.raised: list[BaseException] = []

    def _finish(self, name: str) -> str:
        if self.error is not None:
            self.raised.append(self.error)
            raise self.error
        return name

    def fetch_sync(self, name: str) -> str:
        self.calls.append(name)
        assert self.gate.wait(WAIT)
        return self._finish(name)

    async def fetch_async(self, name: str) -> str:
        self.calls.append(name)
        assert await anyio.to_thread.run_sync(self.gate.wait, WAIT, abandon_on_cancel=True)
        return self._finish(name)


def start_followers(callers: Callers, call: GatedCall) -> list[Handle[Result[str]]]:
    """One follower of each runtime with an async function, and each task runtime with a sync
    one; each is queued before the next starts."""
    handles = []
    plan = [(runtime, False) for runtime in RUNTIMES]
    plan += [(runtime, True) for runtime in RUNTIMES if runtime != "thread"]
    for i, (runtime, sync) in enumerate(plan):
        name = f"{runtime} {'sync' if sync else 'async'} follower"
        handles.append(callers.start(runtime, name, call.fetch_sync, call.fetch_async, sync=sync))
        wait_followers(callers.sf, "k", i + 1)
    return handles


@pytest.mark.parametrize("leader", RUNTIMES)
def test_one_call_is_shared_by_every_runtime(callers: Callers, leader: Runtime) -> None:
    call = GatedCall()
    first = callers.start(leader, "leader", call.fetch_sync, call.fetch_async)
    wait_until(lambda: call.calls == ["leader"], "the leader runs the call")
    followers = start_followers(callers, call)
    call.gate.set()

    assert first.result() == Result("leader", True)
    for handle in followers:
        assert handle.result() == Result("leader", True)
    assert call.calls == ["leader"]


@pytest.mark.parametrize("leader", RUNTIMES)
def test_an_error_reaches_every_runtime_as_copies(callers: Callers, leader: Runtime) -> None:
    call = GatedCall(error=FetchError("boom", 1))
    first = callers.start(leader, "leader", call.fetch_sync, call.fetch_async)
    wait_until(lambda: call.calls == ["leader"], "the leader runs the call")
    followers = start_followers(callers, call)
    call.gate.set()

    with pytest.raises(FetchError) as info:
        first.result()
    [original] = call.raised
    assert info.value is original
    copies = []
    for handle in followers:
        with pytest.raises(FetchError) as info:
            handle.result()
        copy = info.value
        assert copy is not original
        assert copy.args == ("boom", 1)
        assert "_finish" not in traceback_functions(copy)
        copies.append(copy)
    assert len({id(copy) for copy in copies}) == len(copies)
    assert call.calls == ["leader"]


@pytest.mark.parametrize("successor", RUNTIMES)
@pytest.mark.parametrize("leader", ["asyncio", "trio"])
def test_a_cancelled_leader_is_taken_over_across_runtimes(
    callers: Callers, leader: Runtime, successor: Runtime
) -> None:
    call = GatedCall()
    first = callers.start(leader, "leader", call.fetch_sync, call.fetch_async)
    wait_until(lambda: call.calls == ["leader"], "the leader runs the call")
    order = [successor, *(r for r in RUNTIMES if r != successor)]
    followers = []
    for i, runtime in enumerate(order):
        followers.append(callers.start(runtime, runtime, call.fetch_sync, call.fetch_async))
        wait_followers(callers.sf, "k", i + 1)

    first.cancel()
    with pytest.raises(TaskCancelled):
        first.result()
    wait_until(lambda: call.calls == ["leader", successor], f"{successor} takes over")
    wait_followers(callers.sf, "k", len(order) - 1)
    call.gate.set()  # the leader's abandoned to_thread wait ends here too

    for handle in followers:
        assert handle.result() == Result(successor, True)
    assert call.calls == ["leader", successor]
