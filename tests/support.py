"""Test support: bounded waits, and work run in other threads and runtimes with its outcome kept.

Every wait here is bounded (:data:`WAIT`), so a bug fails the test instead of hanging it. Work
started elsewhere reports through a :class:`Handle`: its value, the exception it raised (re-raised
by :meth:`Handle.result` in the test thread) or the fact that it was cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import os
import selectors
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, Protocol, TypeVar, cast

import anyio
import trio

from keyedlock import KeyedLock, QueueFull

__all__ = [
    "LONG_STRESS",
    "WAIT",
    "AsyncioThread",
    "Handle",
    "Interrupts",
    "Records",
    "RuntimeThread",
    "TaskCancelled",
    "Threads",
    "TrioThread",
    "no_report_on_its_way",
    "scope_of",
    "start_thread",
    "table_of",
    "task_on_a_closed_loop",
    "wait_until",
    "wait_until_async",
    "wait_waiters",
    "wait_waiters_async",
]

T = TypeVar("T")

#: Upper bound, in seconds, of every wait in the tests. Far above what any step needs, so it
#: is never a timing assumption: reaching it means something is stuck.
WAIT = 10.0


class Interrupts:
    """KeyboardInterrupts raised at the entry of chosen functions, as a signal would raise
    them there: only in the thread that made this (signals land in the main thread), and
    only on the first ``times`` calls of each. ``calls`` names every call, in order."""

    def __init__(self, monkeypatch: Any) -> None:
        self.monkeypatch = monkeypatch
        self.thread = threading.get_ident()
        self.calls: list[str] = []
        self.raised: list[str] = []

    def wrap(self, fn: Callable[..., T], label: str, times: int = 1) -> Callable[..., T]:
        """``fn``, interrupted at its entry on its first ``times`` calls in this thread."""
        made = 0

        def interrupted(*args: Any, **kwargs: Any) -> T:
            nonlocal made
            if threading.get_ident() == self.thread:
                self.calls.append(label)
                if made < times:
                    made += 1
                    self.raised.append(label)
                    raise KeyboardInterrupt(f"at the entry of {label}")
            return fn(*args, **kwargs)

        return interrupted

    def at_entry(self, owner: object, name: str, times: int = 1) -> None:
        """Patch ``owner.name`` (a class's method, say) so (see :meth:`wrap`)."""
        self.monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name), name, times))


class Records(logging.Handler):
    """Collects the records of the ``keyedlock`` logger; ``arrived`` is set by each one (the
    ``records`` fixture installs one for a test)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.arrived.set()

    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


def no_report_on_its_way() -> bool:
    """True once no end of an owner is being told to a manager: no thread of the manager
    scope's watch of owners (see _scopes/_manager/_leftheld.py) runs."""
    return not any(thread.name == "keyedlock-left-held" for thread in threading.enumerate())


def table_of(subject: object) -> Any:
    """The local table (a ``KeyTable``) of a lock or a single-flight group: what the tests
    look inside."""
    return subject._backend.table  # type: ignore[attr-defined]


def scope_of(lock: object) -> Any:
    """The wide scope of a local-then-wide lock (a ``FileScope`` for ``FileKeyedLock``)."""
    return lock._backend.scope  # type: ignore[attr-defined]


def run_python(code: str, *flags: str, timeout: float = 60) -> str:
    """Run ``code`` (dedented) in a new interpreter started with ``flags``.

    Asserts that it exits with status 0 (the message carries its output) and
    returns what it printed. Bounded by ``timeout`` seconds.
    """
    proc = subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


#: True for the long variants of the stress and model tests (``KEYEDLOCK_STRESS=long``, as set
#: by ``nox -s stress``).
LONG_STRESS = os.environ.get("KEYEDLOCK_STRESS") == "long"

#: Pause between two looks at a condition another thread is about to make true.
_POLL = 0.0005


class TaskCancelled(Exception):
    """Raised by :meth:`Handle.result` when the task ended by cancellation."""


class Handle(Generic[T]):
    """The outcome of work running in another thread, asyncio loop or trio run.

    ``result()`` waits (bounded) and returns the value, re-raises the exception, or raises
    :class:`TaskCancelled`. ``cancel()`` asks the task's runtime to cancel it (threads cannot be
    cancelled).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.finished = threading.Event()
        self.observed = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self._cancelled = False
        self._canceller: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Handle {self.name} finished={self.finished.is_set()}>"

    def set_value(self, value: T) -> None:
        self._value = value
        self.finished.set()

    def set_error(self, error: BaseException) -> None:
        self._error = error
        self.finished.set()

    def set_cancelled(self) -> None:
        self._cancelled = True
        self.finished.set()

    @property
    def failed(self) -> bool:
        """True once the work ended with an exception (cancellation excluded)."""
        return self.finished.is_set() and self._error is not None

    def wait(self, timeout: float = WAIT) -> None:
        """Wait until the work ended; AssertionError if it is still running after ``timeout``."""
        if not self.finished.wait(timeout):
            raise AssertionError(f"{self.name} still running after {timeout} s")

    def result(self, timeout: float = WAIT) -> T:
        """The work's return value; re-raises its exception; TaskCancelled if it was cancelled."""
        self.wait(timeout)
        self.observed = True
        if self._cancelled:
            raise TaskCancelled(self.name)
        if self._error is not None:
            raise self._error
        return cast(T, self._value)

    def cancel(self) -> None:
        """Cancel the task from any thread (asyncio ``Task.cancel`` / trio cancel scope)."""
        if self._canceller is None:
            raise TypeError(f"{self.name} runs in a thread, which cannot be cancelled")
        self._canceller()


class ThreadHandle(Handle[T]):
    """A :class:`Handle` of a thread; ``result()`` also checks the thread has exited."""

    thread: threading.Thread

    def result(self, timeout: float = WAIT) -> T:
        self.wait(timeout)
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"{self.name} reported its outcome but did not exit")
        return super().result(0)


def readable(source: Any, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until ``source`` (a file object, socket or descriptor)
    has something to read. Through epoll (or the platform's best): ``select.select``
    refuses descriptors above 1023, which a long test session reaches."""
    with selectors.DefaultSelector() as selector:
        selector.register(source, selectors.EVENT_READ)
        return bool(selector.select(timeout))


def start_thread(fn: Callable[[], T], name: str = "worker") -> ThreadHandle[T]:
    """Run ``fn()`` in a new daemon thread; its exception is re-raised by ``result()``."""
    handle: ThreadHandle[T] = ThreadHandle(name)

    def main() -> None:
        try:
            value = fn()
        except BaseException as exc:  # re-raised in the test thread by result()
            handle.set_error(exc)
        else:
            handle.set_value(value)

    handle.thread = threading.Thread(target=main, name=name, daemon=True)
    handle.thread.start()
    return handle


class Threads:
    """Starts threads for one test; at teardown joins them all (bounded) and re-raises an
    exception the test did not look at."""

    def __init__(self) -> None:
        self.started: list[ThreadHandle[Any]] = []

    def start(self, fn: Callable[[], T], name: str = "worker") -> ThreadHandle[T]:
        handle = start_thread(fn, f"{name}-{len(self.started)}")
        self.started.append(handle)
        return handle

    def join_all(self) -> None:
        for handle in self.started:
            handle.wait()
            handle.thread.join(WAIT)
        for handle in self.started:
            if handle.failed and not handle.observed:
                handle.result(0)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait (bounded) until another thread has made ``predicate()`` true.

    Only for conditions that have no event to wait on, such as "this caller is now queued".
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(_POLL)


def wait_waiters(lock: KeyedLock, key: Hashable, count: int) -> None:
    """Wait (bounded) until ``count`` callers are queued on ``key``: the arrival of a waiter."""
    wait_until(lambda: lock.waiters(key) == count, f"{count} waiter(s) queue on {key!r}")


async def wait_until_async(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """As :func:`wait_until`, from an asyncio or trio task (lets the other tasks run)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        await anyio.sleep(_POLL)


async def wait_waiters_async(lock: KeyedLock, key: Hashable, count: int) -> None:
    """As :func:`wait_waiters`, from an asyncio or trio task."""
    await wait_until_async(lambda: lock.waiters(key) == count, f"{count} waiter(s) on {key!r}")


def task_on_a_closed_loop(
    start: Callable[[], Coroutine[Any, Any, T]], waits: Callable[[], bool]
) -> asyncio.Task[T]:
    """A task running ``start()`` on a new event loop, which is closed by hand (as
    ``asyncio.run`` never does) once ``waits()`` says the task waits: the task never runs
    again, and is still pending."""
    loop = asyncio.new_event_loop()
    try:

        async def begin() -> asyncio.Task[T]:
            task = loop.create_task(start())
            await wait_until_async(waits, "the task waits")
            return task

        task = loop.run_until_complete(asyncio.wait_for(begin(), WAIT))
    finally:
        loop.close()
    assert not task.done()
    return task


async def three_tasks_two_wait(lock: Any, free: Callable[[], object]) -> None:
    """Three tasks enter ``lock("k")`` at once, with max_waiters=2 and the key held in
    another process: one is refused at once, the other two wait (``waiters`` says 2), and
    both run once ``free()`` lets the key go."""
    outcomes: list[str] = []

    async def caller() -> None:
        try:
            async with lock("k", timeout=WAIT):
                outcomes.append("ran")
        except QueueFull:
            outcomes.append("refused")

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(caller)
        await wait_until_async(lambda: outcomes == ["refused"], "one task is refused")
        assert lock.waiters("k") == 2
        free()
    assert outcomes == ["refused", "ran", "ran"]
    assert len(lock) == 0


class RuntimeThread(Protocol):
    """An asyncio loop or a trio run living in its own thread, steered from the test thread."""

    name: str

    def submit(self, fn: Callable[[], Coroutine[Any, Any, T]], name: str) -> Handle[T]:
        """Start ``fn()`` as a new task; the handle reports its outcome and can cancel it."""
        ...

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Schedule the sync ``fn()`` to run in the runtime's thread."""
        ...

    def close(self) -> None:
        """Cancel the tasks still running, end the runtime and join its thread (bounded)."""
        ...


class AsyncioThread:
    """An asyncio event loop running forever in its own thread until :meth:`close`."""

    def __init__(self, name: str = "asyncio") -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._tasks: dict[Handle[Any], asyncio.Task[None]] = {}
        self._runner = start_thread(self._main, name)

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    def call_soon(self, fn: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def submit(self, fn: Callable[[], Coroutine[Any, Any, T]], name: str) -> Handle[T]:
        handle: Handle[T] = Handle(f"{name} on {self.name}")

        async def task_main() -> None:
            try:
                value = await fn()
            except asyncio.CancelledError:
                handle.set_cancelled()
            except BaseException as exc:  # re-raised in the test thread by result()
                handle.set_error(exc)
            else:
                handle.set_value(value)

        def start() -> None:
            self._tasks[handle] = self.loop.create_task(task_main())

        def cancel() -> None:
            self._tasks[handle].cancel()

        handle._canceller = lambda: self.call_soon(cancel)
        self.call_soon(start)  # runs before any cancel(): call_soon_threadsafe is FIFO
        return handle

    def close(self) -> None:
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._runner.result()


class TrioThread:
    """A trio run in its own thread, with a nursery the test thread starts tasks in."""

    def __init__(self, name: str = "trio") -> None:
        self.name = name
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._runner = start_thread(lambda: trio.run(self._main), name)
        if not self._ready.wait(WAIT):
            self._runner.result(0)  # re-raise why the run did not start
            raise AssertionError(f"{name}: trio run did not start within {WAIT} s")

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()  # tasks still running are cancelled

    def call_soon(self, fn: Callable[[], object]) -> None:
        assert self._token is not None
        self._token.run_sync_soon(fn)

    def submit(self, fn: Callable[[], Coroutine[Any, Any, T]], name: str) -> Handle[T]:
        handle: Handle[T] = Handle(f"{name} on {self.name}")
        scope = trio.CancelScope()

        async def task_main() -> None:
            reported = False
            try:
                with scope:
                    try:
                        value = await fn()
                    except trio.Cancelled:
                        raise
                    except BaseException as exc:  # re-raised in the test thread by result()
                        handle.set_error(exc)
                    else:
                        handle.set_value(value)
                    reported = True
            finally:
                if not reported:
                    handle.set_cancelled()

        def start() -> None:
            assert self._nursery is not None
            self._nursery.start_soon(task_main, name=handle.name)

        handle._canceller = lambda: self.call_soon(scope.cancel)
        self.call_soon(start)
        return handle

    def close(self) -> None:
        stop = self._stop
        if stop is not None and not self._runner.finished.is_set():
            self.call_soon(stop.set)
        self._runner.result()
