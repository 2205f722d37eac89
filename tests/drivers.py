"""Runtime drivers: one test body, callers in threads, asyncio tasks or trio tasks.

A :class:`Driver` starts *agents*, callers of a :class:`~keyedlock.KeyedLock` that run in its
runtime, while the test body stays plain synchronous code in the test thread steering them:

- ``hold``: take a key through one API (``via``: ``with`` / ``acquire`` / ``run`` / ``guard``),
  report ``entered``, stay inside until ``leave()``, then exit (raising ``fail`` if given);
- ``acquire``: a bare ``acquire`` / ``acquire_async`` that keeps the key when it succeeds;
- ``work``: rounds of read-yield-write critical sections on a shared counter;
- ``call``: any sync function, run from inside the runtime (a task for asyncio and trio).

The thread driver runs each agent in its own thread. The asyncio and trio drivers run every
agent as a task of one event loop / trio run living in its own thread, so agents of one driver
hand the key to each other inside the runtime, and the test thread wakes them from outside.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, Literal, TypeVar

import anyio
import anyio.lowlevel

from keyedlock import KeyedLock

from .support import WAIT, AsyncioThread, Handle, RuntimeThread, TrioThread, start_thread

__all__ = [
    "RUNTIMES",
    "VIAS",
    "Agent",
    "Driver",
    "OnError",
    "Tracker",
    "Via",
    "make_driver",
]

K = TypeVar("K", bound=Hashable)

Via = Literal["with", "acquire", "run", "guard"]
OnError = Literal["continue", "stop"]

#: Every API that takes a key for a block of work.
VIAS: tuple[Via, ...] = ("with", "acquire", "run", "guard")
#: Every runtime a driver exists for.
RUNTIMES = ("thread", "asyncio", "trio")


class Tracker:
    """Counts who is inside each key's critical section; two at once is a violation."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._inside: dict[Hashable, int] = {}
        self.entries: dict[Hashable, int] = {}
        self.violations: list[str] = []

    def enter(self, key: Hashable) -> None:
        with self._guard:
            inside = self._inside.get(key, 0)
            if inside:
                self.violations.append(f"{inside + 1} callers inside {key!r} at once")
            self._inside[key] = inside + 1
            self.entries[key] = self.entries.get(key, 0) + 1

    def exit(self, key: Hashable) -> None:
        with self._guard:
            self._inside[key] -= 1


class _Gate:
    """A one-shot signal the test thread opens and an agent waits for in its own runtime."""

    def open(self) -> None:
        raise NotImplementedError

    def wait_sync(self) -> None:
        raise NotImplementedError

    async def wait_async(self) -> None:
        raise NotImplementedError


class _ThreadGate(_Gate):
    def __init__(self) -> None:
        self._event = threading.Event()

    def open(self) -> None:
        self._event.set()

    def wait_sync(self) -> None:
        if not self._event.wait(WAIT):
            raise AssertionError(f"the test never let this agent leave within {WAIT} s")


class _TaskGate(_Gate):
    """Opened and awaited in the runtime's own thread, so the two never race."""

    def __init__(self, runtime: RuntimeThread) -> None:
        self._runtime = runtime
        self._opened = False
        self._event: anyio.Event | None = None

    def _open_here(self) -> None:
        self._opened = True
        if self._event is not None:
            self._event.set()

    def open(self) -> None:
        self._runtime.call_soon(self._open_here)

    async def wait_async(self) -> None:
        if not self._opened:
            self._event = anyio.Event()
            await self._event.wait()


class Agent:
    """A caller running in a driver's runtime, steered from the test thread."""

    def __init__(self, handle: Handle[object], gate: _Gate, entered: threading.Event) -> None:
        self.handle = handle
        self.entered = entered
        self._gate = gate

    def __repr__(self) -> str:
        return f"<Agent {self.handle.name} entered={self.entered.is_set()}>"

    def wait_entered(self, timeout: float = WAIT) -> None:
        """Wait (bounded) until the agent is inside its critical section."""
        if not self.entered.wait(timeout):
            raise AssertionError(f"{self.handle.name} did not get the key within {timeout} s")

    def leave(self) -> None:
        """Let the agent leave its critical section (now, or as soon as it gets there)."""
        self._gate.open()

    def result(self, timeout: float = WAIT) -> object:
        """The agent's outcome (see :meth:`Handle.result`)."""
        return self.handle.result(timeout)

    def cancel(self) -> None:
        """Cancel the agent's task (asyncio and trio drivers only)."""
        self.handle.cancel()


class Driver(ABC):
    """Starts agents in one runtime; see the module docstring."""

    name: str
    cancellable: bool

    def __init__(self) -> None:
        self._count = 0
        self._started: list[Handle[object]] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def _label(self, what: str) -> str:
        self._count += 1
        return f"{self.name}-{what}-{self._count}"

    def _track(self, handle: Handle[object]) -> Handle[object]:
        self._started.append(handle)
        return handle

    def close(self) -> None:
        """Stop the runtime (tasks still running are cancelled, threads are joined, bounded);
        re-raise an agent's exception that the test never looked at."""
        self._stop()
        for handle in self._started:
            if handle.failed and not handle.observed:
                handle.result(0)

    # -- agents ------------------------------------------------------------------------------

    def hold(
        self,
        lock: KeyedLock,
        key: Hashable,
        *,
        via: Via = "with",
        timeout: float | None = None,
        on_error: OnError = "continue",
        fail: BaseException | None = None,
        on_enter: Callable[[], object] | None = None,
    ) -> Agent:
        """Take ``key`` through ``via``; inside, set ``entered``, call ``on_enter``, wait for
        ``leave()``, then raise ``fail`` if given.

        The result is ``"left"`` after a normal exit, ``False`` if ``via="acquire"`` timed out;
        any exception (LockTimeout, Aborted, QueueFull, ``fail``) is re-raised by ``result()``.
        """
        entered = threading.Event()
        gate = self._gate()

        def enter() -> None:
            entered.set()
            if on_enter is not None:
                on_enter()

        def finish() -> str:
            if fail is not None:
                raise fail
            return "left"

        return Agent(
            self._hold(lock, key, via, timeout, on_error, enter, gate, finish),
            gate,
            entered,
        )

    def acquire(
        self,
        lock: KeyedLock,
        key: Hashable,
        *,
        timeout: float | None = None,
        blocking: bool = True,
    ) -> Handle[object]:
        """``acquire`` (threads) / ``acquire_async`` (tasks); ``blocking=False`` uses the
        non-blocking sync ``acquire`` in every runtime. Keeps the key if the result is True."""
        return self._acquire(lock, key, timeout, blocking)

    def work(
        self,
        lock: KeyedLock,
        key: K,
        counter: dict[K, int],
        tracker: Tracker,
        *,
        rounds: int,
        via: Via = "with",
    ) -> Handle[object]:
        """``rounds`` critical sections, each reading ``counter[key]``, yielding, writing +1."""
        return self._work(lock, key, counter, tracker, rounds, via)

    def call(self, fn: Callable[[], object]) -> Handle[object]:
        """Run the sync ``fn()`` from inside this runtime (a thread, or a task)."""
        return self._call(fn)

    # -- runtime-specific -------------------------------------------------------------------

    @abstractmethod
    def _gate(self) -> _Gate: ...

    @abstractmethod
    def _hold(
        self,
        lock: KeyedLock,
        key: Hashable,
        via: Via,
        timeout: float | None,
        on_error: OnError,
        enter: Callable[[], None],
        gate: _Gate,
        finish: Callable[[], str],
    ) -> Handle[object]: ...

    @abstractmethod
    def _acquire(
        self, lock: KeyedLock, key: Hashable, timeout: float | None, blocking: bool
    ) -> Handle[object]: ...

    @abstractmethod
    def _work(
        self,
        lock: KeyedLock,
        key: Hashable,
        counter: dict[Any, int],
        tracker: Tracker,
        rounds: int,
        via: Via,
    ) -> Handle[object]: ...

    @abstractmethod
    def _call(self, fn: Callable[[], object]) -> Handle[object]: ...

    @abstractmethod
    def _stop(self) -> None: ...


# -- threads -----------------------------------------------------------------------------------


def under_sync(
    lock: KeyedLock,
    key: Hashable,
    via: Via,
    fn: Callable[[], object],
    *,
    timeout: float | None = None,
    on_error: OnError = "continue",
) -> object:
    """Call ``fn()`` holding ``key``, taken through the thread API ``via``.

    Returns what ``fn`` returns; ``False`` if ``via="acquire"`` timed out.
    """
    if via == "with":
        if on_error != "continue":
            raise ValueError("`with` has no on_error")
        with lock(key, timeout=timeout):
            return fn()
    if via == "acquire":
        if on_error != "continue":
            raise ValueError("acquire() has no on_error")
        if not lock.acquire(key, timeout=timeout):
            return False
        try:
            return fn()
        finally:
            lock.release(key)
    if via == "run":
        return lock.run_sync(key, fn, timeout=timeout, on_error=on_error)
    return lock.guard(lambda: key, timeout=timeout, on_error=on_error)(fn)()


async def under_async(
    lock: KeyedLock,
    key: Hashable,
    via: Via,
    fn: Callable[[], Awaitable[object]],
    *,
    timeout: float | None = None,
    on_error: OnError = "continue",
) -> object:
    """As :func:`under_sync`, from an asyncio or trio task, with an async ``fn``."""
    if via == "with":
        if on_error != "continue":
            raise ValueError("`async with` has no on_error")
        async with lock(key, timeout=timeout):
            return await fn()
    if via == "acquire":
        if on_error != "continue":
            raise ValueError("acquire_async() has no on_error")
        if not await lock.acquire_async(key, timeout=timeout):
            return False
        try:
            return await fn()
        finally:
            lock.release(key)
    if via == "run":
        return await lock.run(key, fn, timeout=timeout, on_error=on_error)
    return await lock.guard(lambda: key, timeout=timeout, on_error=on_error)(fn)()


class ThreadDriver(Driver):
    """Each agent is a new thread."""

    name = "thread"
    cancellable = False

    def _start(self, fn: Callable[[], object], what: str) -> Handle[object]:
        return self._track(start_thread(fn, self._label(what)))

    def _gate(self) -> _Gate:
        return _ThreadGate()

    def _hold(
        self,
        lock: KeyedLock,
        key: Hashable,
        via: Via,
        timeout: float | None,
        on_error: OnError,
        enter: Callable[[], None],
        gate: _Gate,
        finish: Callable[[], str],
    ) -> Handle[object]:
        def inside() -> str:
            enter()
            gate.wait_sync()
            return finish()

        return self._start(
            lambda: under_sync(lock, key, via, inside, timeout=timeout, on_error=on_error), "hold"
        )

    def _acquire(
        self, lock: KeyedLock, key: Hashable, timeout: float | None, blocking: bool
    ) -> Handle[object]:
        return self._start(lambda: lock.acquire(key, blocking=blocking, timeout=timeout), "acquire")

    def _work(
        self,
        lock: KeyedLock,
        key: Hashable,
        counter: dict[Any, int],
        tracker: Tracker,
        rounds: int,
        via: Via,
    ) -> Handle[object]:
        def section() -> None:
            tracker.enter(key)
            try:
                value = counter[key]
                time.sleep(0)  # let another thread run between the read and the write
                counter[key] = value + 1
            finally:
                tracker.exit(key)

        def body() -> int:
            for _ in range(rounds):
                under_sync(lock, key, via, section)
            return rounds

        return self._start(body, "work")

    def _call(self, fn: Callable[[], object]) -> Handle[object]:
        return self._start(fn, "call")

    def _stop(self) -> None:
        for handle in self._started:
            handle.wait()


# -- asyncio and trio --------------------------------------------------------------------------


class _TaskDriver(Driver):
    """Each agent is a task of one event loop or trio run in a thread of its own."""

    cancellable = True

    def __init__(self, runtime: RuntimeThread) -> None:
        super().__init__()
        self.runtime = runtime
        self.name = runtime.name

    def _start(self, fn: Callable[[], Coroutine[Any, Any, object]], what: str) -> Handle[object]:
        return self._track(self.runtime.submit(fn, self._label(what)))

    def _gate(self) -> _Gate:
        return _TaskGate(self.runtime)

    def _hold(
        self,
        lock: KeyedLock,
        key: Hashable,
        via: Via,
        timeout: float | None,
        on_error: OnError,
        enter: Callable[[], None],
        gate: _Gate,
        finish: Callable[[], str],
    ) -> Handle[object]:
        async def inside() -> str:
            enter()
            await gate.wait_async()
            return finish()

        async def body() -> object:
            return await under_async(lock, key, via, inside, timeout=timeout, on_error=on_error)

        return self._start(body, "hold")

    def _acquire(
        self, lock: KeyedLock, key: Hashable, timeout: float | None, blocking: bool
    ) -> Handle[object]:
        async def body() -> bool:
            if not blocking:
                return lock.acquire(key, blocking=False)
            return await lock.acquire_async(key, timeout=timeout)

        return self._start(body, "acquire")

    def _work(
        self,
        lock: KeyedLock,
        key: Hashable,
        counter: dict[Any, int],
        tracker: Tracker,
        rounds: int,
        via: Via,
    ) -> Handle[object]:
        async def section() -> None:
            tracker.enter(key)
            try:
                value = counter[key]
                await anyio.lowlevel.checkpoint()  # other tasks run between the read and the write
                counter[key] = value + 1
            finally:
                tracker.exit(key)

        async def body() -> int:
            for _ in range(rounds):
                await under_async(lock, key, via, section)
            return rounds

        return self._start(body, "work")

    def _call(self, fn: Callable[[], object]) -> Handle[object]:
        async def body() -> object:
            return fn()

        return self._start(body, "call")

    def _stop(self) -> None:
        self.runtime.close()


class AsyncioDriver(_TaskDriver):
    """Agents are tasks of an asyncio loop running in its own thread."""

    def __init__(self, name: str = "asyncio") -> None:
        super().__init__(AsyncioThread(name))


class TrioDriver(_TaskDriver):
    """Agents are tasks of a trio run in its own thread."""

    def __init__(self, name: str = "trio") -> None:
        super().__init__(TrioThread(name))


def make_driver(runtime: str, name: str | None = None) -> Driver:
    """A driver for ``runtime`` (one of :data:`RUNTIMES`)."""
    if runtime == "thread":
        return ThreadDriver()
    if runtime == "asyncio":
        return AsyncioDriver(name or runtime)
    if runtime == "trio":
        return TrioDriver(name or runtime)
    raise ValueError(f"unknown runtime {runtime!r}")
