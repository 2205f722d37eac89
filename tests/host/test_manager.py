"""KeyedLockManager: keyed locks and single-flight shared by real worker processes.

Every child process is reaped at teardown (killed first if still running), and every wait is
bounded by :data:`WAIT`, so a bug fails a test instead of hanging it. Worker functions live at
module level so that ``spawn`` workers can import them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import trio

from keyedlock import Abandoned, Aborted, LockTimeout, QueueFull, Result
from keyedlock.multiprocessing import KeyedLockManager, KeyedLockProxy, SingleFlightProxy

from ..support import Records, no_report_on_its_way

pytestmark = [
    # Forking while helper threads of earlier tests linger is fine here (the children only
    # talk to the manager); newer Pythons warn about it.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

#: Upper bound, in seconds, of every wait. Never a timing assumption: reaching it means a bug.
WAIT = 10.0
#: The bound the crash tests assert on the release of a dead holder's key (generous on purpose;
#: the measured latency is recorded separately).
DEAD_HOLDER_BOUND = 5.0

_HAS_FORK = "fork" in multiprocessing.get_all_start_methods()
FORK = multiprocessing.get_context("fork" if _HAS_FORK else "spawn")
SPAWN = multiprocessing.get_context("spawn")


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    backend: str = request.param
    return backend


@pytest.fixture(scope="module")
def manager() -> Iterator[KeyedLockManager]:
    with KeyedLockManager(ctx=FORK) as running:
        yield running


@pytest.fixture(autouse=True)
def reap_children(manager: KeyedLockManager) -> Iterator[None]:
    """Kill and reap every child process a test leaves behind, even when it fails."""
    before = set(multiprocessing.active_children())
    yield
    left = [p for p in multiprocessing.active_children() if p not in before]
    for p in left:
        p.kill()
    for p in left:
        p.join(WAIT)


@pytest.fixture
def klock(manager: KeyedLockManager) -> Iterator[KeyedLockProxy]:
    fresh = manager.KeyedLock()
    yield fresh
    assert len(fresh) == 0, "a key was left held or queued in the manager"


@pytest.fixture
def flight(manager: KeyedLockManager) -> Iterator[SingleFlightProxy]:
    fresh = manager.SingleFlight()
    yield fresh
    assert len(fresh) == 0, "a call was left in flight in the manager"


# -- helpers --------------------------------------------------------------------------


def acquire_in_thread(klock: KeyedLockProxy, key: str) -> None:
    """Acquire ``key`` for another owner (a thread that ends while holding it)."""
    thread = threading.Thread(target=klock.acquire, args=(key,))
    thread.start()
    thread.join(WAIT)
    assert klock.locked(key)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded) for a condition another process is about to make true."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.002)


def wait_waiters(klock: KeyedLockProxy, key: str, count: int) -> None:
    wait_until(lambda: klock.waiters(key) == count, f"{count} waiter(s) on {key!r}")


async def wait_until_async(condition: Callable[[], bool], what: str) -> None:
    """As :func:`wait_until`, from an asyncio or trio task (the other tasks keep running)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await anyio.sleep(0.002)


def _child_main(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        result: tuple[str, Any] = ("ok", fn(*args))
    except BaseException as exc:
        result = ("error", f"{type(exc).__name__}: {exc}")
    conn.send(result)
    conn.close()


class Child:
    """A child process running ``fn(*args)`` whose result comes back through a pipe."""

    def __init__(self, ctx: BaseContext, fn: Callable[..., Any], *args: Any) -> None:
        self.conn, theirs = ctx.Pipe(duplex=False)
        self.process: BaseProcess = ctx.Process(  # type: ignore[attr-defined]
            target=_child_main, args=(theirs, fn, args), daemon=True
        )
        self.process.start()
        theirs.close()

    @property
    def pid(self) -> int:
        pid = self.process.pid
        assert pid is not None
        return pid

    def result(self, timeout: float = WAIT) -> Any:
        assert self.conn.poll(timeout), f"child {self.pid} did not report within {timeout} s"
        kind, value = self.conn.recv()
        assert kind == "ok", f"child {self.pid} failed: {value}"
        return value

    def join(self) -> None:
        self.process.join(WAIT)
        assert self.process.exitcode is not None, f"child {self.pid} did not exit"


def _wait_event(event: Event) -> None:
    assert event.wait(WAIT), "event not set in time"


# -- worker functions (module level: spawn workers import them) --------------------------

_barrier: Barrier | None = None


def _init_worker(barrier: Barrier) -> None:
    global _barrier
    _barrier = barrier


def _meet() -> None:
    """Wait until every worker of the pool runs a task: the tasks run in distinct processes."""
    assert _barrier is not None
    _barrier.wait(WAIT)


def _increment(klock: KeyedLockProxy, path: str, times: int) -> int:
    _meet()
    for _ in range(times):
        with klock("counter", timeout=WAIT):
            value = int(Path(path).read_text())
            os.sched_yield()  # invite the race the lock prevents
            Path(path).write_text(str(value + 1))
    return os.getpid()


def _append_under_key(klock: KeyedLockProxy, key: str, path: str, text: str) -> None:
    with klock(key, timeout=WAIT), open(path, "a") as f:
        f.write(text)


def _hold_until_killed(klock: KeyedLockProxy, key: str, held: Event) -> None:
    assert klock.acquire(key, timeout=WAIT)
    held.set()
    time.sleep(60)  # killed long before


def _hold_forever(klock: KeyedLockProxy, key: str) -> None:
    assert klock.acquire(key, timeout=WAIT)
    time.sleep(60)  # killed long before


def _acquire_and_stamp(klock: KeyedLockProxy, key: str) -> float:
    """Acquire ``key`` (bounded) and return when, on the host's monotonic clock."""
    assert klock.acquire(key, timeout=WAIT)
    stamp = time.monotonic()
    klock.release(key)
    return stamp


def _async_waiter(klock: KeyedLockProxy, key: str, runtime: str, ticked: Event) -> list[int]:
    """Wait for ``key`` from a task while another task of the same loop keeps ticking.

    Returns [ticks seen before the acquire returned, acquired].
    """
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 3:
            ticked.set()

    if runtime == "asyncio":

        async def main_asyncio() -> list[int]:
            async def ticker() -> None:
                while True:
                    tick()
                    await asyncio.sleep(0.005)

            task = asyncio.create_task(ticker())
            acquired = await klock.acquire_async(key, timeout=WAIT)
            seen = ticks
            task.cancel()
            klock.release(key)
            return [seen, int(acquired)]

        return asyncio.run(main_asyncio())

    async def main_trio() -> list[int]:
        async def ticker() -> None:
            while True:
                tick()
                await trio.sleep(0.005)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            acquired = await klock.acquire_async(key, timeout=WAIT)
            seen = ticks
            nursery.cancel_scope.cancel()
        klock.release(key)
        return [seen, int(acquired)]

    return trio.run(main_trio)


def _abort_witness(klock: KeyedLockProxy, key: str) -> list[str]:
    try:
        with klock(key, timeout=WAIT):
            return ["acquired"]
    except Aborted as exc:
        cause = exc.__cause__
        return [type(exc).__name__, type(cause).__name__, repr(getattr(cause, "args", None))]


def _abandon_witness(klock: KeyedLockProxy, key: str) -> list[str]:
    try:
        with klock(key, timeout=WAIT):
            return ["acquired"]
    except Abandoned as exc:
        return ["Abandoned", str(exc)]


def _task_leaves_a_key(klock: KeyedLockProxy, key: str, left: Event, end: Event) -> None:
    """An asyncio task of this process takes ``key`` and ends holding it; the process goes on
    until ``end``."""

    async def leaker() -> None:
        assert await klock.acquire_async(key)

    async def main() -> None:
        await asyncio.create_task(leaker(), name="leaker")

    asyncio.run(main())
    left.set()
    _wait_event(end)


def _shared_call(path: str, followers: int, flight: SingleFlightProxy, outcome: str) -> object:
    """The single-flight function: runs once; returns only after ``followers`` have joined."""
    wait_until(lambda: flight._waiting("shared") == followers, f"{followers} followers joined")
    with open(path, "a") as f:
        f.write("ran\n")
    if outcome == "error":
        raise ValueError("boom", 7)
    if outcome == "unpicklable":
        return threading.Lock()
    return {"value": 42}


def _flight_caller(
    flight: SingleFlightProxy, path: str, runtime: str, outcome: str
) -> tuple[str, Any, bool]:
    """Join the shared call from a thread, an asyncio task or a trio task of this worker."""
    _meet()
    fn = _shared_call
    args = (path, 3, flight, outcome)
    try:
        if runtime == "thread":
            result = flight.do_sync_ex("shared", fn, *args)
        elif runtime == "asyncio":
            result = asyncio.run(flight.do_ex("shared", fn, *args))
        else:
            result = trio.run(flight.do_ex, "shared", fn, *args)
    except Exception as exc:
        return (type(exc).__name__, [str(a) for a in exc.args], True)
    return ("ok", result.value, result.shared)


def _lead_until_killed(flight: SingleFlightProxy, started: Event) -> None:
    def block() -> None:
        started.set()
        time.sleep(60)  # killed long before

    flight.do_sync("takeover", block)


def _follow(flight: SingleFlightProxy) -> tuple[str, bool]:
    result = flight.do_sync_ex("takeover", lambda: f"ran in {os.getpid()}")
    return result.value, result.shared


# -- exclusion across processes -----------------------------------------------------------


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_exact_counter_across_processes(
    manager: KeyedLockManager, klock: KeyedLockProxy, tmp_path: Path, method: str
) -> None:
    """4 processes x 200 read-yield-write increments of one file under one key: none lost."""
    ctx = multiprocessing.get_context(method)
    path = tmp_path / "counter"
    path.write_text("0")
    barrier = ctx.Barrier(4)
    if method == "fork":
        with ctx.Pool(4, initializer=_init_worker, initargs=(barrier,)) as pool:
            pids = pool.starmap_async(_increment, [(klock, str(path), 200)] * 4).get(WAIT * 3)
    else:
        with ProcessPoolExecutor(
            4, mp_context=ctx, initializer=_init_worker, initargs=(barrier,)
        ) as executor:
            futures = [executor.submit(_increment, klock, str(path), 200) for _ in range(4)]
            pids = [f.result(WAIT * 3) for f in futures]
    assert len(set(pids)) == 4
    assert path.read_text() == "800"


def test_manager_started_with_spawn(tmp_path: Path) -> None:
    """A manager started with spawn serves workers started with fork."""
    with KeyedLockManager(ctx=SPAWN) as spawned:
        lock = spawned.KeyedLock()
        out = tmp_path / "out"
        children = [Child(FORK, _append_under_key, lock, "k", str(out), str(i)) for i in range(3)]
        for child in children:
            child.result()
            child.join()
        assert sorted(out.read_text()) == ["0", "1", "2"]
        assert len(lock) == 0
    assert not spawned.running
    with pytest.raises(ConnectionError):
        lock.locked("k")


def test_fifo_across_processes(klock: KeyedLockProxy, tmp_path: Path) -> None:
    """Waiters of different processes get the key in the order they queued.

    The forked children's main threads have the parent's thread id: only the process id tells
    these owners apart (none of them is refused as a re-acquire).
    """
    out = tmp_path / "order"
    assert klock.acquire("fifo")
    children = []
    for i in range(4):
        children.append(Child(FORK, _append_under_key, klock, "fifo", str(out), str(i)))
        wait_waiters(klock, "fifo", i + 1)
    klock.release("fifo")
    for child in children:
        child.result()
        child.join()
    assert out.read_text() == "0123"


# -- crashes --------------------------------------------------------------------------


def _leave(ctx: Any) -> str:
    """In a fork child: leave the ``with`` its parent was inside when it forked."""
    try:
        ctx.__exit__(None, None, None)
    except RuntimeError as exc:
        return str(exc)
    return "exited"


@pytest.mark.skipif(not _HAS_FORK, reason="needs fork")
def test_a_fork_child_leaving_its_parents_with_is_told_the_parent_holds_it(
    klock: KeyedLockProxy,
) -> None:
    """The child holds nothing: its exit releases nothing, and says why (not that another
    caller released the hold); the parent's own exit then releases the key."""
    ctx = klock("k")
    with ctx:
        told = Child(FORK, _leave, ctx).result()
        assert told == (
            "release of key 'k', which this process does not hold in the manager: it was "
            "acquired before a fork by the parent process, which still holds it"
        )
        assert klock.locked("k")
    assert not klock.locked("k")


def _process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc ('Z': a zombie, dead but not reaped)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize("reaped", [False, True], ids=["zombie", "reaped"])
def test_sigkilled_holder_releases_its_key(
    klock: KeyedLockProxy, reaped: bool, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL a holder: the queued waiter of another process gets the key at once.

    Without ``reaped`` the dead holder is not joined before the check: it is a zombie, which
    ``os.kill(pid, 0)`` still reports as alive.
    """
    held = FORK.Event()
    holder = Child(FORK, _hold_until_killed, klock, "crash", held)
    _wait_event(held)
    waiter = Child(FORK, _acquire_and_stamp, klock, "crash")
    wait_until(lambda: klock.waiters("crash") == 1, "the waiter queued")

    killed_at = time.monotonic()
    os.kill(holder.pid, signal.SIGKILL)
    if reaped:
        holder.process.join(WAIT)
    acquired_at = waiter.result(DEAD_HOLDER_BOUND)
    latency = acquired_at - killed_at
    record_property("dead_holder_release_latency_s", latency)
    assert 0 < latency < DEAD_HOLDER_BOUND

    if not reaped:
        os.kill(holder.pid, 0)  # no error: the dead holder still looks alive
        if sys.platform.startswith("linux"):
            assert _process_state(holder.pid) == "Z"
    waiter.join()
    holder.join()
    assert holder.process.exitcode == -signal.SIGKILL


@pytest.mark.skipif(not _HAS_FORK, reason="patches the server through fork")
def test_dead_holder_detected_by_lost_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pidfds, a process whose last connection closes counts as dead."""
    from keyedlock._scopes._manager import _server as manager_server

    # The forked server inherits the patch.
    monkeypatch.setattr(manager_server, "_open_epoll", lambda: None)
    with KeyedLockManager(ctx=FORK) as fallback:
        lock = fallback.KeyedLock()
        held = FORK.Event()
        holder = Child(FORK, _hold_until_killed, lock, "k", held)
        _wait_event(held)
        os.kill(holder.pid, signal.SIGKILL)
        assert lock.acquire("k", timeout=DEAD_HOLDER_BOUND)
        lock.release("k")
        holder.join()
        assert len(lock) == 0


def test_sigkilled_holder_in_a_pool_and_waiter_in_the_parent(klock: KeyedLockProxy) -> None:
    """A pool worker killed while holding a key (the pool reaps and replaces it)."""
    with FORK.Pool(1) as pool:
        pool.apply_async(_hold_forever, (klock, "pool-crash"))
        wait_until(lambda: klock.locked("pool-crash"), "the pool worker holds the key")
        (worker,) = [p for p in multiprocessing.active_children() if "PoolWorker" in p.name]
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        assert klock.acquire("pool-crash", timeout=DEAD_HOLDER_BOUND)
        klock.release("pool-crash")


def test_dead_waiter_is_withdrawn(klock: KeyedLockProxy) -> None:
    assert klock.acquire("k")
    waiter = Child(FORK, _acquire_and_stamp, klock, "k")
    wait_until(lambda: klock.waiters("k") == 1, "the waiter queued")
    os.kill(waiter.pid, signal.SIGKILL)
    wait_until(lambda: klock.waiters("k") == 0, "the dead waiter is withdrawn")
    klock.release("k")
    waiter.join()


# -- a task that ends holding a key (see _leftheld) ------------------------------------


def test_a_task_that_ends_holding_a_key_aborts_the_waiters_of_every_process(
    klock: KeyedLockProxy,
) -> None:
    """The holder's process watches its task and tells the manager: the waiter of another
    process raises Abandoned, as later callers do, until release(key) frees the key."""
    entered, end = threading.Event(), threading.Event()

    def entered_then_wait() -> None:
        entered.set()  # (from the executor's thread: nothing is being submitted as the test forks)
        end.wait(WAIT)

    async def holder() -> None:
        assert await klock.acquire_async("left")
        await asyncio.to_thread(entered_then_wait)

    async def main() -> None:
        await asyncio.create_task(holder(), name="leaker")

    holding = threading.Thread(target=asyncio.run, args=(main(),), name="holder loop")
    holding.start()
    assert entered.wait(WAIT)
    witness = Child(FORK, _abandon_witness, klock, "left")
    wait_until(lambda: klock.waiters("left") == 1, "the other process queued")
    end.set()  # the task ends, still holding the key
    holding.join(WAIT)
    kind, message = witness.result()
    assert kind == "Abandoned"
    assert "asyncio task 'leaker'" in message
    with pytest.raises(Abandoned):
        klock.acquire("left", timeout=WAIT)
    assert klock.acquire("left", blocking=False) is False  # a try never waits: no error
    assert klock.locked("left")
    klock.release("left")  # anyone may release it: then the key works as always
    with klock("left", timeout=WAIT):
        pass
    assert len(klock) == 0
    witness.join()


def test_a_key_left_by_a_task_is_freed_when_its_process_ends(klock: KeyedLockProxy) -> None:
    left, end = FORK.Event(), FORK.Event()
    child = Child(FORK, _task_leaves_a_key, klock, "gone", left, end)
    _wait_event(left)
    with pytest.raises(Abandoned, match="asyncio task 'leaker'"):
        klock.acquire("gone", timeout=WAIT)  # (queued, or refused: the manager is told soon)
    end.set()
    child.result()
    child.join()
    wait_until(lambda: not klock.locked("gone"), "the manager freed the ended process's key")
    assert klock.acquire("gone", timeout=WAIT)
    klock.release("gone")


def test_a_task_that_takes_many_keys_is_watched_once(klock: KeyedLockProxy) -> None:
    from keyedlock._runtime import _ends

    backend: Any = klock._backend

    async def main() -> None:
        for i in range(100):
            assert await klock.acquire_async(f"many:{i % 3}")
            klock.release(f"many:{i % 3}")
        assert len(_ends._waiting[asyncio.current_task()]) == 1
        assert len(backend.left_held.watching) == 1  # nothing per key

    asyncio.run(main())
    assert len(backend.left_held.watching) == 0  # its end was seen, and forgotten


def test_a_task_handed_the_key_by_a_release_is_watched(klock: KeyedLockProxy) -> None:
    entered, end = threading.Event(), threading.Event()

    def entered_then_wait() -> None:
        entered.set()
        end.wait(WAIT)

    async def taker() -> None:
        assert await klock.acquire_async("handed")  # waits for the main thread's key
        await asyncio.to_thread(entered_then_wait)

    async def main() -> None:
        await asyncio.create_task(taker(), name="taker")

    assert klock.acquire("handed")
    holding = threading.Thread(target=asyncio.run, args=(main(),), name="taker loop")
    holding.start()
    wait_until(lambda: klock.waiters("handed") == 1, "the task queued")
    klock.release("handed")  # handed to the task
    assert entered.wait(WAIT)
    end.set()
    holding.join(WAIT)
    with pytest.raises(Abandoned, match="asyncio task 'taker'"):
        klock.acquire("handed", timeout=WAIT)
    klock.release("handed")


def _release_keys(klock: KeyedLockProxy, keys: list[str]) -> None:
    for key in keys:
        klock.release(key)


def test_a_thread_whose_key_another_process_released_is_not_reported(
    klock: KeyedLockProxy, records: Records
) -> None:
    taken, end = threading.Event(), threading.Event()

    def worker() -> None:
        assert klock.acquire("elsewhere")
        taken.set()
        end.wait(WAIT)

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    assert taken.wait(WAIT)
    releaser = Child(FORK, _release_keys, klock, ["elsewhere"])
    releaser.result()
    releaser.join()
    end.set()  # the thread ends; the key it took was released by another process
    thread.join(WAIT)
    wait_until(no_report_on_its_way, "the manager answered the end of the thread")
    assert records.messages() == []

    held = threading.Thread(target=klock.acquire, args=("elsewhere",), name="taker")
    held.start()  # the same, not released: reported
    held.join(WAIT)
    assert records.arrived.wait(WAIT)
    assert "still held by thread 'taker'" in records.messages()[0]
    klock.release("elsewhere")


def test_an_owner_seen_through_two_proxies_of_a_lock_is_told_once(
    klock: KeyedLockProxy, records: Records
) -> None:
    twin = pickle.loads(pickle.dumps(klock))  # (as a pool worker gets it)

    def worker() -> None:
        assert klock.acquire("twice:x")
        klock.release("twice:x")
        assert twin.acquire("twice")

    thread = threading.Thread(target=worker, name="worker")
    thread.start()
    thread.join(WAIT)
    assert records.arrived.wait(WAIT)
    wait_until(no_report_on_its_way, "the manager answered the end of the thread")
    assert [m for m in records.messages() if "'twice'" in m] == [records.messages()[0]]
    klock.release("twice")


@pytest.mark.parametrize("how", ["acquire()", "with"])
def test_a_watched_hold_another_process_released_is_forgotten_not_logged(
    manager: KeyedLockManager, records: Records, how: str
) -> None:
    """warn_after: a hold of this process that another process's ``release(key)`` ended is
    not logged as a long hold: the watchdog asks the manager before it logs."""
    lock = manager.KeyedLock(warn_after=0.05)
    watch = lock._watch
    assert watch is not None
    with contextlib.ExitStack() as stack:
        if how == "with":
            stack.enter_context(lock("k"))
        else:
            assert lock.acquire("k")
        acquired = time.monotonic()
        with watch.guard:  # the watchdog looks at nothing until the key is released
            releaser = Child(FORK, _release_keys, lock, ["k"])
            releaser.result()
            releaser.join()
            wait_until(lambda: time.monotonic() > acquired + 0.05, "the hold is due")
        wait_until(lambda: not watch.live, "the watchdog forgets the released hold")
        assert records.messages() == []
        if how == "with":
            with pytest.raises(RuntimeError, match="which is not held"):
                stack.close()
    assert len(lock) == 0

    # The same, not released: logged.
    with lock("k"):
        assert records.arrived.wait(WAIT)
    assert "'k'" in records.messages()[0]


# -- async waiters in workers ---------------------------------------------------------


@pytest.mark.parametrize("runtime", ["asyncio", "trio"])
def test_async_waiter_in_worker_keeps_its_loop_running(klock: KeyedLockProxy, runtime: str) -> None:
    assert klock.acquire("async")
    ticked = FORK.Event()
    worker = Child(FORK, _async_waiter, klock, "async", runtime, ticked)
    wait_until(lambda: klock.waiters("async") == 1, "the async waiter queued")
    _wait_event(ticked)  # its loop ran other tasks while the acquire waited
    klock.release("async")
    seen, acquired = worker.result()
    assert acquired == 1
    assert seen >= 3
    worker.join()


# -- timeouts and cancellation across processes ---------------------------------------


@pytest.fixture
def held_elsewhere(klock: KeyedLockProxy) -> Iterator[str]:
    """A key held by another process for the duration of the test."""
    held = FORK.Event()
    holder = Child(FORK, _hold_until_killed, klock, "held", held)
    _wait_event(held)
    yield "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    wait_until(lambda: len(klock) == 0, "the dead holder's key is released")


def test_timeouts_against_another_process(klock: KeyedLockProxy, held_elsewhere: str) -> None:
    key = held_elsewhere
    assert not klock.acquire(key, timeout=0.05)
    assert not klock.acquire(key, blocking=False)
    with pytest.raises(LockTimeout), klock(key, timeout=0.05):
        pass
    with pytest.raises(LockTimeout), klock(key, timeout=0):
        pass
    assert klock.waiters(key) == 0
    assert len(klock) == 1  # only the other process's hold


@pytest.mark.anyio
async def test_async_timeout_and_cancellation_leave_no_trace(
    klock: KeyedLockProxy, held_elsewhere: str
) -> None:
    key = held_elsewhere
    assert not await klock.acquire_async(key, timeout=0.05)
    with pytest.raises(LockTimeout):
        async with klock(key, timeout=0.05):
            pass
    with anyio.move_on_after(0.05):  # cancellation by the runtime's own timeout
        await klock.acquire_async(key)

    scope = anyio.CancelScope()

    async def waiter() -> None:
        with scope:
            async with klock(key):
                raise AssertionError("never acquired")

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_until_async(lambda: klock.waiters(key) == 1, "queued")
        scope.cancel()
    assert klock.waiters(key) == 0
    assert len(klock) == 1  # only the other process's hold


@pytest.mark.anyio
async def test_cancellation_racing_the_grant_never_leaks(klock: KeyedLockProxy) -> None:
    """The key is granted to a waiter while its cancellation is on its way: nothing leaks."""
    assert klock.acquire("race", blocking=False)
    scope = anyio.CancelScope()
    entered = []

    async def waiter() -> None:
        with scope:
            async with klock("race"):
                entered.append(True)  # trio keeps a grant that won the race...
                await anyio.sleep(WAIT)  # ...and delivers the cancellation here

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await wait_until_async(lambda: klock.waiters("race") == 1, "queued")
        klock.release("race")  # granted to the waiter before its loop runs again
        scope.cancel()
    assert len(klock) == 0


def test_sync_waiter_interrupted_withdraws(klock: KeyedLockProxy) -> None:
    """An interrupted blocking wait (KeyboardInterrupt) is withdrawn from the manager."""
    acquire_in_thread(klock, "intr")
    main = threading.get_ident()
    interrupted = threading.Event()

    def interrupt() -> None:
        wait_until(lambda: klock.waiters("intr") == 1, "queued")
        signal.pthread_kill(main, signal.SIGINT)
        interrupted.set()

    thread = threading.Thread(target=interrupt)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            klock.acquire("intr", timeout=WAIT)
    finally:
        thread.join(WAIT)
    assert interrupted.is_set()
    assert klock.waiters("intr") == 0
    klock.release("intr")


# -- the rest of the KeyedLock API ----------------------------------------------------


def test_api_in_one_process(klock: KeyedLockProxy) -> None:
    assert not klock.locked("a")
    with klock("a"):
        assert klock.locked("a")
        assert len(klock) == 1
        with pytest.raises(RuntimeError, match="already held by this owner"):
            klock.acquire("a")
        assert not klock.acquire("a", blocking=False)
    assert klock.acquire("b", timeout=1)
    klock.release("b")
    with pytest.raises(RuntimeError, match="not held"):
        klock.release("b")
    with pytest.raises(ValueError, match="non-blocking"):
        klock.acquire("b", blocking=False, timeout=1)
    with pytest.raises(TypeError, match="hashable"):
        klock([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="picklable"):
        klock.acquire(threading.Lock())
    with pytest.raises(ValueError, match=">= 0"):
        klock("a", timeout=-1)

    ctx = klock("c")
    with pytest.raises(RuntimeError, match="not held"), ctx:
        klock.release("c")  # someone else releases this context's hold
    with pytest.raises(RuntimeError, match="already used"), ctx:
        pass

    assert klock.run_sync("d", lambda x: x + 1, 1) == 2

    @klock.guard("user:{user}")
    def add(user: str, amount: int) -> int:
        assert klock.locked(f"user:{user}")
        return amount

    assert add("ann", 3) == 3
    assert add.__name__ == "add"
    copy = type(klock).__reduce__(klock)
    assert copy[0](*copy[1]).locked("a") is False


def test_the_owner_is_the_thread_however_it_acquired(klock: KeyedLockProxy) -> None:
    assert klock.acquire("a", blocking=False)
    try:
        with pytest.raises(RuntimeError, match="already held by this owner"):
            klock.acquire("a", timeout=WAIT)  # would wait for itself until the timeout
        with pytest.raises(RuntimeError, match="already held by this owner"), klock("a"):
            pass
    finally:
        klock.release("a")
    assert len(klock) == 0


def test_a_new_thread_is_never_taken_for_an_ended_one(klock: KeyedLockProxy) -> None:
    """Thread idents are reused; the owner a thread ended with must not pass to a new one."""

    def take_and_end() -> None:
        assert klock.acquire("left")  # never released by this thread

    thread = threading.Thread(target=take_and_end)
    thread.start()
    thread.join(WAIT)
    outcomes: list[object] = []

    def try_it() -> None:
        try:
            outcomes.append(klock.acquire("left", timeout=0.01))
        except RuntimeError as exc:
            outcomes.append(exc)

    try:
        for _ in range(10):  # new threads usually get the ended thread's ident
            t = threading.Thread(target=try_it)
            t.start()
            t.join(WAIT)
        assert outcomes == [False] * 10  # busy (held by the ended thread), never "re-acquire"
    finally:
        klock.release("left")


def test_task_owner_numbers_are_never_reused() -> None:
    from keyedlock._scopes._manager import _owners as mp

    async def numbers() -> tuple[list[int], list[int]]:
        ids: list[int] = []
        got: list[int] = []
        for _ in range(50):
            task = asyncio.ensure_future(asyncio.sleep(0))
            ids.append(id(task))
            got.append(mp.task_owner_id(task))
            assert mp.task_owner_id(task) == got[-1]  # stable for one task
            await task
            del task
        return ids, got

    ids, got = asyncio.run(numbers())
    assert len(set(ids)) < len(ids)  # id() was reused: the numbers must not be
    assert len(set(got)) == len(got)
    assert all(n < 0 for n in got)
    assert mp.thread_owner_id() > 0


def test_max_waiters_counts_every_process(manager: KeyedLockManager) -> None:
    bounded = manager.KeyedLock(max_waiters=1)
    assert bounded.max_waiters == 1
    acquire_in_thread(bounded, "q")
    waiter = Child(FORK, _acquire_and_stamp, bounded, "q")
    wait_until(lambda: bounded.waiters("q") == 1, "the other process queued")
    with pytest.raises(QueueFull):
        bounded.acquire("q", timeout=WAIT)
    bounded.release("q")
    waiter.result()
    waiter.join()
    assert len(bounded) == 0


def test_on_error_stop_aborts_waiters_of_other_processes(klock: KeyedLockProxy) -> None:
    witness = None

    def fail() -> None:
        nonlocal witness
        witness = Child(FORK, _abort_witness, klock, "stop")
        wait_until(lambda: klock.waiters("stop") == 1, "the other process queued")
        raise ValueError("bad input", 3)

    with pytest.raises(ValueError, match="bad input"):
        klock.run_sync("stop", fail, on_error="stop")
    assert witness is not None
    assert witness.result() == ["Aborted", "ValueError", "('bad input', 3)"]
    witness.join()


@pytest.mark.anyio
async def test_async_api(klock: KeyedLockProxy) -> None:
    async with klock("x"):
        assert klock.locked("x")
        with pytest.raises(RuntimeError, match="would block"):
            klock.acquire("x")
        with pytest.raises(RuntimeError, match="would block"), klock("y"):
            pass
        assert not klock.acquire("x", blocking=False)  # allowed in a loop
        with pytest.raises(RuntimeError, match="already held by this owner"):
            await klock.acquire_async("x")

    async def double(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return 2 * x

    assert await klock.run("x", double, 4) == 8
    assert await klock.run("x", lambda: 5) == 5
    with pytest.raises(RuntimeError, match="would block"):
        klock.run_sync("x", lambda: None)

    @klock.guard(lambda n: f"n:{n}", timeout=WAIT)
    async def guarded(n: int) -> int:
        assert klock.locked(f"n:{n}")
        return n

    assert await guarded(7) == 7
    assert await klock.acquire_async("z", timeout=0)
    klock.release("z")


# -- single-flight across processes ------------------------------------------------------


@pytest.mark.parametrize("outcome", ["value", "error", "unpicklable"])
def test_single_flight_runs_once_across_processes(
    flight: SingleFlightProxy, tmp_path: Path, outcome: str
) -> None:
    """4 processes (a thread, an asyncio task, a trio task, a thread) share one execution."""
    path = tmp_path / "runs"
    path.touch()
    barrier = FORK.Barrier(4)
    runtimes = ["thread", "asyncio", "trio", "thread"]
    with ProcessPoolExecutor(
        4, mp_context=FORK, initializer=_init_worker, initargs=(barrier,)
    ) as executor:
        futures = [
            executor.submit(_flight_caller, flight, str(path), runtime, outcome)
            for runtime in runtimes
        ]
        results = [f.result(WAIT * 2) for f in futures]
    assert path.read_text() == "ran\n"  # once
    if outcome == "value":
        assert results == [("ok", {"value": 42}, True)] * 4
    elif outcome == "error":
        assert results == [("ValueError", ["boom", "7"], True)] * 4
    else:
        for kind, args, _ in results:
            assert kind == "TypeError"
            assert "cannot be pickled" in args[0]
            assert "'_thread.lock'" in args[0]


def test_single_flight_leader_killed_follower_takes_over(flight: SingleFlightProxy) -> None:
    started = FORK.Event()
    leader = Child(FORK, _lead_until_killed, flight, started)
    _wait_event(started)
    follower = Child(FORK, _follow, flight)
    wait_until(lambda: flight._waiting("takeover") == 1, "the follower joined")
    os.kill(leader.pid, signal.SIGKILL)
    value, shared = follower.result(DEAD_HOLDER_BOUND)
    assert value == f"ran in {follower.pid}"  # the follower ran its own function
    assert shared is False
    follower.join()
    leader.join()


def test_single_flight_api_in_one_process(flight: SingleFlightProxy) -> None:
    result = flight.do_sync_ex("k", lambda: 3)
    assert (result.value, result.shared) == (3, False)
    assert not flight.in_flight("k")

    def recurse() -> int:
        assert flight.in_flight("r")
        return flight.do_sync("r", lambda: 1)

    with pytest.raises(RuntimeError, match="same task or thread"):
        flight.do_sync("r", recurse)

    async def coroutine_fn() -> None:
        pass

    with pytest.raises(TypeError, match="sync function"):
        flight.do_sync("k", coroutine_fn)  # type: ignore[unused-coroutine]

    calls = []

    @flight.coalesce("item:{n}")
    def load(n: int) -> int:
        calls.append(n)
        return n * 10

    assert load(2) == 20
    assert calls == [2]
    flight.forget("k")


def test_single_flight_forget_and_ttl(manager: KeyedLockManager, flight: SingleFlightProxy) -> None:
    """forget() lets a new call start while the old one still serves its own callers."""
    release = threading.Event()
    old: list[str] = []

    def slow() -> str:
        assert release.wait(WAIT)
        return "old"

    leader = threading.Thread(target=lambda: old.append(flight.do_sync("f", slow)))
    leader.start()
    wait_until(lambda: flight.in_flight("f"), "the first call started")
    flight.forget("f")
    assert not flight.in_flight("f")
    assert flight.do_sync("f", lambda: "new") == "new"  # not the old call's value
    release.set()
    leader.join(WAIT)
    assert old == ["old"]

    cached = manager.SingleFlight(ttl=60)
    assert cached.ttl == 60
    runs: list[int] = []

    def compute() -> int:
        runs.append(1)
        return 42

    assert cached.do_sync_ex("t", compute) == Result(42, False)
    assert cached.do_sync_ex("t", compute) == Result(42, True)  # reused, not run again
    assert runs == [1]
    cached.forget("t")
    assert cached.do_sync("t", compute) == 42
    assert runs == [1, 1]
    with pytest.raises(ValueError, match="finite"):
        manager.SingleFlight(ttl=-1)


def test_single_flight_large_outcome(flight: SingleFlightProxy) -> None:
    """A result of megabytes travels to the manager and back to a follower in pieces."""
    big = os.urandom(3_000_000)

    def produce() -> bytes:
        wait_until(lambda: flight._waiting("big") == 1, "the follower joined")
        return big

    got: list[bytes] = []
    follower = threading.Thread(target=lambda: got.append(flight.do_sync("big", produce)))
    leader_done = threading.Event()

    def lead() -> None:
        assert flight.do_sync("big", produce) == big
        leader_done.set()

    leader = threading.Thread(target=lead)
    leader.start()
    wait_until(lambda: flight.in_flight("big"), "the leader started")
    follower.start()
    leader.join(WAIT)
    follower.join(WAIT)
    assert leader_done.is_set()
    assert got == [big]


@pytest.mark.anyio
async def test_single_flight_async_followers_in_one_process(flight: SingleFlightProxy) -> None:
    """Tasks of one loop sharing a call through the manager; the leader's cancellation hands
    the call to the earliest follower."""
    release = anyio.Event()
    results: list[object] = []

    async def first() -> str:
        await release.wait()
        return "first"

    async def second() -> str:
        return "second"

    async def call(fn: Callable[[], Any]) -> None:
        results.append(await flight.do("a", fn))

    scope = anyio.CancelScope()

    async def leader() -> None:
        with scope:
            await call(first)

    async with anyio.create_task_group() as tg:
        tg.start_soon(leader)
        await wait_until_async(lambda: flight.in_flight("a"), "the leader started")
        tg.start_soon(call, second)
        tg.start_soon(call, second)
        await wait_until_async(lambda: flight._waiting("a") == 2, "followers joined")
        scope.cancel()  # the leader gives up: the earliest follower runs its own fn
    assert results == ["second", "second"]

    with pytest.raises(RuntimeError, match="would block"):
        flight.do_sync("a", lambda: None)
    assert (await flight.do_ex("b", second)).shared is False

    @flight.coalesce(lambda n: ("item", n))
    async def load(n: int) -> int:
        assert flight.in_flight(("item", n))
        await anyio.lowlevel.checkpoint()
        return n * 10

    assert await load(4) == 40


def test_manager_lifecycle() -> None:
    manager = KeyedLockManager(ctx=FORK)
    assert "not running" in repr(manager)
    with pytest.raises(RuntimeError, match="not started"):
        manager.KeyedLock()
    manager.start()
    pid = manager.pid
    try:
        assert pid is not None
        os.kill(pid, 0)  # running
        with pytest.raises(RuntimeError, match="already started"):
            manager.start()
        with pytest.raises(TypeError, match="cannot be pickled"):
            manager.__reduce__()
        lock = manager.KeyedLock()
        assert lock.acquire("k")
    finally:
        manager.shutdown()
    manager.shutdown()  # idempotent
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
    assert not manager.running
    with pytest.raises(ConnectionError):
        lock.release("k")


def test_statistics_name_a_holder_in_another_process(klock: KeyedLockProxy) -> None:
    """The manager keeps the holder's thread name (its first 200 characters) for anyone who
    asks, in any process."""
    parent, child = FORK.Pipe()

    def hold(conn: Connection) -> None:
        threading.current_thread().name = "w" * 300
        with klock("k"):
            conn.send("held")
            conn.recv()

    process: BaseProcess = FORK.Process(target=hold, args=(child,))  # type: ignore[attr-defined]
    process.start()
    try:
        assert parent.poll(WAIT)
        assert parent.recv() == "held"
        holder = klock.statistics("k").holder
        assert holder is not None
        assert (holder.runtime, holder.name, holder.pid) == ("thread", "w" * 200, process.pid)
    finally:
        parent.send("go")
        process.join(WAIT)
    assert process.exitcode == 0
    assert klock.statistics("k").holder is None
