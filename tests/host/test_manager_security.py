"""KeyedLockManager against peers that misbehave and a manager that stops answering.

- Who can connect: only this user. The socket is a file in a private directory, and the
  manager checks the uid of every connecting process; another user's process is refused before
  any handshake. A process of this user without the authkey is refused by the handshake.
- A peer that connects and says nothing (or garbage) stalls nobody: the handshake runs in the
  connection's own thread, under a deadline. Other clients are served and ``shutdown()``
  returns while it is still connected.
- A stopped manager (SIGSTOP): ``timeout=`` still bounds an acquire, and once the manager runs
  again it holds nothing for the clients that gave up; requests without a timeout fail with
  ConnectionError once it is gone.

Each test starts a manager of its own (with fork: a test may patch the server's constants
first). Every wait is bounded (:data:`~tests.support.WAIT`); a stopped manager is always
continued, and every manager is shut down (killed if it does not stop) at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path

import anyio
import pytest

from keyedlock import LockTimeout
from keyedlock._scopes._manager import _server as manager_server
from keyedlock.multiprocessing import KeyedLockManager, KeyedLockProxy

from ..support import WAIT, readable, start_thread, wait_until, wait_until_async
from .file_support import Children

_HAS_FORK = "fork" in multiprocessing.get_all_start_methods()
FORK = multiprocessing.get_context("fork" if _HAS_FORK else "spawn")

pytestmark = [
    pytest.mark.skipif(not _HAS_FORK, reason="patches the manager process through fork"),
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]


# -- fixtures and helpers -------------------------------------------------------------------


def shut_down(manager: KeyedLockManager) -> None:
    """``manager.shutdown()``, bounded: fails the test if it hangs (and then kills the manager)."""
    stopping = start_thread(manager.shutdown, "shutdown")
    try:
        stopping.result()
    finally:
        if stopping.thread.is_alive() and manager.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(manager.pid, signal.SIGKILL)
            stopping.thread.join(WAIT)


@pytest.fixture
def managers() -> Iterator[Callable[[], KeyedLockManager]]:
    """Starts managers for one test (after its patches); continues and stops them at the end."""
    started: list[KeyedLockManager] = []

    def start() -> KeyedLockManager:
        manager = KeyedLockManager(ctx=FORK)
        manager.start()
        started.append(manager)
        return manager

    yield start
    for manager in started:
        if manager.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(manager.pid, signal.SIGCONT)
        shut_down(manager)


def _process_state(pid: int) -> str:
    """The state letter of ``pid`` in /proc ('T': stopped by a signal)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@contextlib.contextmanager
def stopped(manager: KeyedLockManager) -> Iterator[int]:
    """The manager process stopped (SIGSTOP) for the body, and always continued after it."""
    pid = manager.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: _process_state(pid) == "T", "the manager process is stopped")
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@contextlib.contextmanager
def silent_peer(address: str) -> Iterator[socket.socket]:
    """A raw connection to the manager that sends nothing (unless the test makes it)."""
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        peer.connect(address)
        yield peer
    finally:
        peer.close()


def connected(peer: socket.socket) -> bool:
    """True while the manager keeps ``peer`` open (what it sent is read and dropped)."""
    while True:
        try:
            data = peer.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        if not data:
            return False


def closed_by_manager(peer: socket.socket) -> bool:
    """Wait (bounded) until the manager closes ``peer``; False if it is still open after WAIT."""
    while readable(peer, WAIT):
        if not peer.recv(4096):
            return True
    return False


def bounded(fn: Callable[[], object]) -> object:
    """``fn()`` in a new thread (a new owner), its result or exception within WAIT."""
    return start_thread(fn, "bounded").result()


def _report_to(conn: Connection, fn: Callable[..., object], args: tuple[object, ...]) -> None:
    try:
        outcome: tuple[str, object] = ("ok", fn(*args))
    except BaseException as exc:
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    conn.send(outcome)
    conn.close()


def result_of(children: Children, fn: Callable[..., object], *args: object) -> object:
    """``fn(*args)`` in a new forked process (so: new connections to the manager), bounded."""
    ours, theirs = FORK.Pipe(duplex=False)
    children.process(FORK, _report_to, theirs, fn, args)
    theirs.close()
    try:
        assert ours.poll(WAIT), f"{fn.__name__} did not finish within {WAIT} s"
        kind, value = ours.recv()
    finally:
        ours.close()
    assert kind == "ok", value
    return value


def _lock_once(lock: KeyedLockProxy, key: str) -> bool:
    with lock(key, timeout=1):
        return lock.locked(key)


def _timeout_message(lock: KeyedLockProxy, key: str) -> str:
    try:
        with lock(key, timeout=1):
            return "acquired"
    except LockTimeout as exc:
        return str(exc)


# -- who can connect ------------------------------------------------------------------------


def test_the_socket_is_a_private_file_removed_at_shutdown(
    managers: Callable[[], KeyedLockManager],
) -> None:
    manager = managers()
    path = Path(manager.address)
    directory = path.parent
    info = directory.stat()
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.geteuid()
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
    assert len(os.fsencode(manager.address)) <= 107
    shut_down(manager)
    assert not directory.exists()


def test_the_socket_goes_to_xdg_runtime_dir_when_usable(
    managers: Callable[[], KeyedLockManager], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    manager = managers()
    assert Path(manager.address).parent.parent == runtime
    assert manager.KeyedLock().acquire("k", timeout=WAIT)
    shut_down(manager)
    assert list(runtime.iterdir()) == []

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))  # unusable: the temp dir
    manager = managers()
    assert Path(manager.address).parent.parent == Path(tempfile.gettempdir())


def test_a_socket_path_too_long_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    manager = KeyedLockManager(ctx=FORK)
    with pytest.raises(OSError, match="too long for a Unix socket") as info:
        manager.start()
    assert "TMPDIR" in str(info.value)
    assert not manager.running
    assert list(deep.iterdir()) == []  # nothing left behind


@pytest.fixture
def other_user() -> Iterator[tuple[int, int]]:
    """A throwaway system user (uid, gid), deleted at teardown."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a throwaway user to connect to the manager as")
    if shutil.which("useradd") is None or shutil.which("userdel") is None:
        pytest.skip("needs useradd and userdel")
    name = f"kl{secrets.token_hex(6)}"
    subprocess.run(
        ["useradd", "-r", "-M", "-s", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
        timeout=WAIT,
    )
    try:
        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=WAIT)


def _connect_as(uid: int, gid: int, address: str, report: Connection, leave: Event) -> None:
    """As another user: connect to the manager, report what happened, then stay silent."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            peer.connect(address)
        except PermissionError:
            report.send("permission denied")
            return
        if not readable(peer, WAIT):
            report.send("connected, and left waiting")
        else:
            report.send("challenged" if peer.recv(1) else "closed at once")
        leave.wait(WAIT)  # still connected (unless the manager closed it), saying nothing
    finally:
        peer.close()
        report.close()


@pytest.mark.parametrize("reachable", [False, True], ids=["private-directory", "opened-directory"])
def test_another_user_cannot_connect(
    managers: Callable[[], KeyedLockManager],
    children: Children,
    other_user: tuple[int, int],
    reachable: bool,
) -> None:
    """Refused by the directory's permissions; with those opened up, by the uid check.

    Meanwhile (the other user's process still connected, if it got that far) a new client is
    served and shutdown() returns.
    """
    uid, gid = other_user
    manager = managers()
    lock = manager.KeyedLock()
    if reachable:  # what a careless chmod would do: only the uid check is left
        os.chmod(os.path.dirname(manager.address), 0o755)
        os.chmod(manager.address, 0o777)
    report, theirs = FORK.Pipe(duplex=False)
    leave = FORK.Event()
    children.process(FORK, _connect_as, uid, gid, manager.address, theirs, leave)
    theirs.close()
    try:
        assert report.poll(WAIT), "the other user's process did not report"
        outcome = report.recv()
        assert result_of(children, _lock_once, lock, "k") is True
        shut_down(manager)
        assert not manager.running
    finally:
        leave.set()
        report.close()
    assert outcome == ("closed at once" if reachable else "permission denied")


def _with_another_authkey(lock: KeyedLockProxy) -> str:
    multiprocessing.current_process().authkey = b"not the manager's authkey"
    try:
        lock.locked("k")
    except ConnectionError as exc:
        return str(exc)
    return "served"


def test_a_process_without_the_authkey_is_refused(
    managers: Callable[[], KeyedLockManager], children: Children
) -> None:
    manager = managers()
    lock = manager.KeyedLock()
    message = result_of(children, _with_another_authkey, lock)
    assert isinstance(message, str)
    assert "authkey" in message
    assert manager.address in message
    assert not lock.locked("k")  # the manager serves the others as before


# -- silent and misbehaving peers ---------------------------------------------------------


@pytest.fixture
def long_handshakes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Managers started after this keep a silent peer connected for the whole test."""
    monkeypatch.setattr(manager_server, "HANDSHAKE_TIMEOUT", 60 * WAIT)


@pytest.mark.usefixtures("long_handshakes")
def test_a_silent_peer_stalls_no_other_client(
    managers: Callable[[], KeyedLockManager], children: Children
) -> None:
    manager = managers()
    lock = manager.KeyedLock()
    with silent_peer(manager.address) as peer:
        assert result_of(children, _lock_once, lock, "k") is True  # connects while peer waits
        assert connected(peer)
        assert lock.acquire("k", timeout=WAIT)
        lock.release("k")
        assert connected(peer)


@pytest.mark.usefixtures("long_handshakes")
def test_shutdown_returns_with_silent_peers_connected(
    managers: Callable[[], KeyedLockManager],
) -> None:
    manager = managers()
    with silent_peer(manager.address) as quiet, silent_peer(manager.address) as halfway:
        halfway.sendall(b"\0\0\0\x48")  # the length of an answer that never comes
        assert connected(quiet)
        assert connected(halfway)
        shut_down(manager)
        assert not manager.running


def test_a_silent_peer_is_dropped_at_the_handshake_deadline(
    managers: Callable[[], KeyedLockManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manager_server, "HANDSHAKE_TIMEOUT", 0.2)
    manager = managers()
    with silent_peer(manager.address) as peer:
        assert closed_by_manager(peer)


@pytest.mark.usefixtures("long_handshakes")
def test_a_peer_sending_garbage_is_dropped_at_once(
    managers: Callable[[], KeyedLockManager],
) -> None:
    manager = managers()
    lock = manager.KeyedLock()
    with silent_peer(manager.address) as peer:
        peer.sendall(b"\x7f\xff\xff\xff")  # a 2 GiB answer to the challenge
        assert closed_by_manager(peer)
    with silent_peer(manager.address) as peer:
        peer.sendall(b"\0\0\0\x48" + b"x" * 0x48)  # the right size, the wrong proof
        assert closed_by_manager(peer)
    assert lock.acquire("k", timeout=WAIT)
    lock.release("k")


# -- a stopped manager ----------------------------------------------------------------------

#: The timeout of a request whose client gives up while the test looks at it queued in the
#: manager: the window the test has to see it there (the client gives up after it plus 1 s).
QUEUED_FOR = 2.0


def test_timeout_bounds_acquire_against_a_stopped_manager(
    managers: Callable[[], KeyedLockManager],
) -> None:
    manager = managers()
    lock = manager.KeyedLock()  # leaves one idle connection in this process's pool
    with stopped(manager):
        assert bounded(lambda: lock.acquire("k", timeout=1)) is False  # sent on that connection
        message = bounded(lambda: _timeout_message(lock, "k"))  # a new one: in the handshake
        assert isinstance(message, str)
        assert "did not answer" in message
        assert manager.address in message
        assert bounded(lambda: lock.acquire("k", blocking=False)) is False
    assert lock.acquire("k", timeout=WAIT)  # nobody else holds it
    lock.release("k")
    wait_until(lambda: len(lock) == 0, "nothing is left in the manager")


def test_timeout_bounds_connecting_to_a_stopped_manager_with_a_full_backlog(
    managers: Callable[[], KeyedLockManager],
) -> None:
    """A manager that accepts nothing, its listen backlog full: connecting is bounded too."""
    manager = managers()
    lock = manager.KeyedLock()
    fillers: list[socket.socket] = []
    try:
        with stopped(manager):
            for _ in range(100_000):  # the backlog fills up long before
                filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                fillers.append(filler)
                filler.setblocking(False)
                try:
                    filler.connect(manager.address)
                except BlockingIOError:
                    break
            else:
                raise AssertionError("the backlog never filled up")
            assert bounded(lambda: lock.acquire("k", timeout=0.5)) is False  # the idle one
            assert bounded(lambda: lock.acquire("k", timeout=0.5)) is False  # cannot connect
    finally:
        for filler in fillers:
            filler.close()
    assert lock.acquire("k", timeout=WAIT)
    lock.release("k")
    wait_until(lambda: len(lock) == 0, "nothing is left in the manager")


@pytest.mark.anyio
async def test_timeout_bounds_async_acquire_against_a_stopped_manager(
    managers: Callable[[], KeyedLockManager],
) -> None:
    manager = managers()
    lock = manager.KeyedLock()
    with stopped(manager):
        assert await lock.acquire_async("k", timeout=1) is False
        with pytest.raises(LockTimeout, match="did not answer"):
            async with lock("k", timeout=1):
                raise AssertionError("never acquired")
    assert await lock.acquire_async("k", timeout=WAIT)
    lock.release("k")
    wait_until(lambda: len(lock) == 0, "nothing is left in the manager")


@pytest.mark.parametrize("call", ["async with, no timeout", "acquire_async, timeout", "flight.do"])
def test_async_calls_wait_for_a_stopped_manager_off_the_event_loop(
    managers: Callable[[], KeyedLockManager], call: str
) -> None:
    """An async call tries from the event loop for the grace at most, then goes on waiting
    from a helper thread: the loop runs meanwhile, and the call succeeds once the manager
    runs again (a timeout longer than the stop does not end it early)."""
    manager = managers()
    lock, flight = manager.KeyedLock(), manager.SingleFlight()
    assert not lock.locked("warm-up")  # (a connection in the pool)
    ticks: list[float] = []

    async def op() -> object:
        if call == "async with, no timeout":
            async with lock("k"):
                return "held"
        if call == "acquire_async, timeout":
            acquired = await lock.acquire_async("k", timeout=WAIT * 3)
            lock.release("k")
            return acquired
        return await flight.do("k", lambda: "shared")

    async def main() -> object:
        async def ticker() -> None:
            while True:
                ticks.append(0)
                await asyncio.sleep(0.01)

        beating = asyncio.create_task(ticker())
        try:
            return await op()
        finally:
            beating.cancel()

    with stopped(manager):
        running = start_thread(lambda: asyncio.run(main()), "event loop")
        wait_until(lambda: len(ticks) > 0, "the loop runs")
        seen = len(ticks)
        # More than the grace's worth of ticks while the manager is stopped: the loop
        # was not blocked by the call for longer.
        wait_until(lambda: len(ticks) > seen + 200, "the loop keeps running")
    assert running.result() in ("held", True, "shared")
    wait_until(lambda: len(lock) == 0 and len(flight) == 0, "nothing is left in the manager")


@pytest.mark.parametrize("kind", ["lock", "flight"])
def test_a_wait_after_a_try_given_up_hands_the_try_on(kind: str) -> None:
    """An async call's first try was granted while its client had given up on it (its reply
    still on its way, and bound to fail): the wait its owner sends next takes the key (or
    leads the call) instead of failing as a re-acquire of its own try. (The race of a
    manager that runs again as the try's grace ends, set up on the manager's service.)"""
    from keyedlock._scopes._manager._protocol import Reply
    from keyedlock._scopes._manager._records import GONE, Conn, Proc
    from keyedlock._scopes._manager._service import Service

    service = Service()
    proc = Proc(os.getpid())
    tried, asked = Conn(1, proc), Conn(2, proc)
    owner = 7
    if kind == "lock":
        tid = service.new_lock(tried, None)
        assert service.acquire(tried, tid, "k", owner, 1, 0, None, False) == Reply.GRANTED
        assert service.acquire(asked, tid, "k", owner, 2, WAIT, None, False) == Reply.GRANTED
        service.release(asked, tid, "k", 2, None, None)
    else:
        fid = service.new_flight(tried, 0)
        assert service.join(tried, fid, "k", owner, 1, False, None) == Reply.LEAD
        assert service.join(asked, fid, "k", owner, 2, True, None) == Reply.LEAD
        service.abandon(asked, fid, "k", 2)
    moot = tried.granted
    assert moot is not None
    assert moot.phase == GONE  # (its failed delivery finds nothing left to hand on)
    assert len(service.tables[0]) == 0


def test_a_queued_wait_whose_client_gave_up_times_out_in_the_manager(
    managers: Callable[[], KeyedLockManager],
) -> None:
    """Queued before the manager stopped; its client gave up: it ends with its own timeout."""
    manager = managers()
    lock = manager.KeyedLock()
    assert lock.acquire("k")
    waiter = start_thread(lambda: lock.acquire("k", timeout=QUEUED_FOR), "waiter")
    wait_until(lambda: lock.waiters("k") == 1, "the waiter is queued")
    with stopped(manager):
        assert waiter.result() is False
    wait_until(lambda: lock.waiters("k") == 0, "the abandoned wait ended in the manager")
    assert lock.locked("k")  # still ours
    lock.release("k")
    assert len(lock) == 0


def test_a_grant_to_a_client_that_gave_up_is_handed_on(
    managers: Callable[[], KeyedLockManager],
) -> None:
    """The manager grants a key to a client that already gave up: it is released, not leaked.

    The request leaves while the manager is stopped; the client gives up. Once the manager runs
    again it queues the request (behind this thread's hold) and grants it on release: the reply
    cannot be delivered, so the key is handed on.
    """
    manager = managers()
    lock = manager.KeyedLock()
    assert lock.acquire("k")  # and leaves an idle connection for the waiter to send on
    with stopped(manager):
        assert bounded(lambda: lock.acquire("k", timeout=QUEUED_FOR)) is False
    wait_until(lambda: lock.waiters("k") == 1, "the manager queued the abandoned request")
    lock.release("k")  # granted to the client that left
    wait_until(lambda: not lock.locked("k"), "the undeliverable grant is released")
    assert len(lock) == 0
    assert lock.acquire("k", timeout=WAIT)
    lock.release("k")


def test_untimed_requests_raise_connection_error_once_the_manager_is_gone(
    managers: Callable[[], KeyedLockManager],
) -> None:
    manager = managers()
    lock = manager.KeyedLock()
    assert lock.acquire("k")
    with stopped(manager) as pid:
        release = start_thread(lambda: lock.release("k"), "release")
        waiter = start_thread(lambda: lock.acquire("k"), "waiter")
        os.kill(pid, signal.SIGKILL)
    for request in (release, waiter):
        with pytest.raises(ConnectionError, match=re.escape(manager.address)):
            request.result()


@pytest.mark.anyio
@pytest.mark.parametrize("call", ["acquire_async", "flight.do"])
async def test_a_task_cancelled_while_the_manager_is_stopped_does_not_wait_for_it(
    managers: Callable[[], KeyedLockManager], call: str
) -> None:
    """Cancelling a waiting task sends a cancel request from the event loop's thread; with the
    manager stopped it waits for the grace at most, then tries again from a thread of its own:
    the task ends while the manager is still stopped, and once the manager runs again the
    wait is withdrawn there too."""
    manager = managers()
    lock, flight = manager.KeyedLock(), manager.SingleFlight()
    lead, release_lead = threading.Event(), threading.Event()

    def leader() -> str:
        lead.set()
        release_lead.wait(WAIT)
        return "shared"

    if call == "acquire_async":
        assert await lock.acquire_async("k")
    else:
        leading = start_thread(lambda: flight.do_sync("k", leader), "leader")
        assert lead.wait(WAIT)
    ended = anyio.Event()
    scope = anyio.CancelScope()

    async def waiter() -> None:
        try:
            with scope:
                if call == "acquire_async":
                    await lock.acquire_async("k")
                else:
                    await flight.do("k", lambda: "never runs")
                raise AssertionError("the wait was not cancelled")
        finally:
            ended.set()

    def waiting() -> int:
        if call == "acquire_async":
            return lock.waiters("k")
        return flight.statistics("k").followers

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(waiter)
        await wait_until_async(lambda: waiting() == 1, "the task waits")
        with stopped(manager) as pid:
            # (a cancel that waited for the manager would block the loop: continue it in time
            # for the test to fail, not hang)
            unblock = threading.Timer(WAIT, os.kill, (pid, signal.SIGCONT))
            unblock.start()
            try:
                scope.cancel()
                with anyio.fail_after(WAIT):
                    await ended.wait()
                assert _process_state(pid) == "T", "the cancellation waited for the manager"
            finally:
                unblock.cancel()
    wait_until(lambda: waiting() == 0, "the wait is withdrawn in the manager")
    if call == "acquire_async":
        lock.release("k")
    else:
        release_lead.set()
        assert leading.result() == "shared"
    wait_until(lambda: len(lock) == 0 and len(flight) == 0, "nothing is left in the manager")
