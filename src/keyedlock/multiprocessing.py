"""Keyed locks and single-flight shared by processes: :class:`KeyedLockManager`.

Used like :func:`multiprocessing.Manager`: the manager starts a server
process; the objects it makes are proxies that can be passed to worker
processes (``multiprocessing.Pool``, ``concurrent.futures.ProcessPoolExecutor``,
``multiprocessing.Process``; ``fork``, ``spawn`` and ``forkserver`` alike) and
offer the API of :class:`~keyedlock.KeyedLock` and
:class:`~keyedlock.SingleFlight` there, to threads, asyncio and trio callers::

    from concurrent.futures import ProcessPoolExecutor
    from keyedlock.multiprocessing import KeyedLockManager

    def checkout(klock, user):
        with klock(f"wallet:{user}"):      # excludes every process of the pool
            ...

    with KeyedLockManager() as manager:
        klock = manager.KeyedLock()
        with ProcessPoolExecutor(4) as pool:
            list(pool.map(checkout, [klock] * 10, users))

**Cost.** All state lives in the manager process, so every operation is a
round trip to it over a local socket: a synchronous acquire is *one* request
(the manager answers it when the key is granted or the timeout elapses:
nobody polls) and a release is one more. An ``async`` acquire first asks
once without waiting (the manager answers at once; a manager that does not
answer within a second of grace is waited for from a helper thread); if the
key is busy it waits in a helper thread, so the event loop keeps running. ``locked``,
``waiters`` and ``len`` are one round trip each. Roughly tens of
microseconds per round trip: use it where the work under the key is worth
that, across processes; use :class:`~keyedlock.KeyedLock` within one.

**Fairness.** Waiters of every process queue in one FIFO per key in the
manager, and the key is handed directly to the first of them on release: a
newcomer never barges past a queued waiter, whichever process it is in.

**Crashes.** The manager watches every process that talks to it: with a
pidfd on Linux (elsewhere, a process counts as dead when its last
connection to the manager closes). When one dies, even killed with SIGKILL
and not yet reaped by its parent, the keys it held are released at once
(within milliseconds; handed on in FIFO order),
its queued waits are withdrawn, and a single-flight call it was running
passes to the earliest caller waiting for it, which runs its own function.
A lock held by a *thread* that ended without releasing stays held, as with
:class:`threading.Lock`.

**Ownership.** The owner of an acquisition is (process id, thread) or
(process id, asyncio/trio task): a blocking re-acquire by the same owner
raises RuntimeError at once instead of deadlocking. As with
:class:`~keyedlock.KeyedLock`, ``release(key)`` may be called by anyone.

**Keys and values.** Keys must be picklable and hashable, and equal keys
must be equal in the manager process (built-in types always are; a key of
your own class must be importable there). Single-flight results and
exceptions are pickled to reach the other callers (see
:class:`SingleFlightProxy`).

**Who can connect.** The manager listens on a socket file in a directory
only this user can enter (mode 0700, removed when it stops), and on Linux
also closes at once a connection from a process of another user. Processes
of this user must prove in a handshake that they have the ``authkey`` of the
process that started the manager (:func:`multiprocessing.current_process`,
inherited by every process started from it). The handshake runs in the
connection's own thread and must be done within 5 seconds: a client that
connects and says nothing stalls neither the other clients nor
:meth:`~KeyedLockManager.shutdown`.

**A manager that stops answering.** ``timeout=`` is kept by the client too:
if the manager has not answered within the timeout plus a grace of 1 second
(its process is stopped, or stuck), ``acquire`` returns False and the
context manager raises :class:`~keyedlock.LockTimeout` saying so; the
manager, once it runs again, hands on what it grants to a client that gave
up. Requests without a timeout wait for a stopped manager as long as it
lives.

**Lifetime.** The manager process stops on :meth:`KeyedLockManager.shutdown`,
when the :class:`KeyedLockManager` object is garbage-collected, at
interpreter exit, and when the process that started it dies. Proxies used
after that raise :class:`ConnectionError` (naming the manager's address).
Objects made by a manager live until it stops.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import weakref
from multiprocessing.context import BaseContext
from time import monotonic
from types import TracebackType
from typing import Any, Final, Self

from ._proxies import KeyedLockProxy, ManagerLockContext, SingleFlightProxy
from ._scopes._manager import (
    NEW_FLIGHT,
    NEW_LOCK,
    SHUTDOWN,
    Client,
    NoAnswer,
    client_for,
    drop_client,
    encode,
    make_socket_path,
    remove_socket_path,
    serve,
)
from ._validate import check_flag, check_max_waiters, check_ttl, check_warn_after

__all__ = ["KeyedLockManager", "KeyedLockProxy", "ManagerLockContext", "SingleFlightProxy"]

#: How long start() waits for the manager process to listen.
_START_TIMEOUT: Final = 60.0
#: How long shutdown() waits for the manager process to exit before killing it.
_STOP_TIMEOUT: Final = 5.0

# -- the manager ------------------------------------------------------------------


def _stop_server(process: multiprocessing.process.BaseProcess, address: str, owner: int) -> None:
    """Ask the server at ``address`` to exit; make sure ``process`` is gone and reaped.

    Only in the process that started it (``owner``): a forked child inherits
    the finalizer, and its exit must not stop the manager. A manager that
    does not answer within _STOP_TIMEOUT (stopped, stuck) is killed.
    """
    if os.getpid() != owner:
        return
    drop_client(address)
    try:
        if process.is_alive():
            client = Client(address)
            try:
                client.call(encode(SHUTDOWN), monotonic() + _STOP_TIMEOUT)
            except NoAnswer:
                process.kill()
            except ConnectionError:
                pass  # gone already, or it exited before answering
            finally:
                client.close()
            process.join(_STOP_TIMEOUT)
        if process.is_alive():
            process.kill()
        process.join(_STOP_TIMEOUT)
    finally:
        remove_socket_path(address)


class KeyedLockManager:
    """A server process holding keyed locks and single-flight calls for many processes.

    Start it with ``with`` (or :meth:`start`, then :meth:`shutdown`), and pass
    the objects it makes to the worker processes::

        with KeyedLockManager() as manager:       # or manager.start() ... manager.shutdown()
            klock = manager.KeyedLock()
            flight = manager.SingleFlight()
            # pass klock / flight to worker processes

    Args:
        ctx: the :mod:`multiprocessing` context used to start the manager
            process (``multiprocessing.get_context("spawn")``, ...); the
            default context if None. Workers may use any start method,
            whichever the manager used.

    The manager process is a daemon child of this process: it stops on
    :meth:`shutdown`, when this object is garbage-collected (keep it alive
    while its proxies are in use: the ``with`` block does), at interpreter
    exit, and if this process dies. It listens on a socket file in a new
    directory only this user can enter (in ``$XDG_RUNTIME_DIR`` if usable,
    else :func:`tempfile.gettempdir`); :meth:`start` raises OSError if that
    path is too long for a Unix socket. Proxies authenticate with this
    process's ``authkey``, which every process started from it inherits;
    processes of other users are refused.
    """

    def __init__(self, *, ctx: BaseContext | None = None) -> None:
        if ctx is not None and not isinstance(ctx, BaseContext):
            raise TypeError(
                "ctx must be a multiprocessing context, e.g. "
                f"multiprocessing.get_context('spawn'), or None; got {ctx!r}"
            )
        self._ctx = multiprocessing.get_context() if ctx is None else ctx
        self._process: multiprocessing.process.BaseProcess | None = None
        self._address: str | None = None
        self._finalizer: weakref.finalize[Any, KeyedLockManager] | None = None
        #: The process that started the manager (its parent; a fork child asks by pid).
        self._starter = -1

    def __repr__(self) -> str:
        state = "running" if self.running else "not running"
        return f"<KeyedLockManager {state} address={self._address!r}>"

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "a KeyedLockManager cannot be pickled; pass the objects it makes "
            "(manager.KeyedLock(), manager.SingleFlight()) to other processes instead"
        )

    @property
    def address(self) -> str:
        """The path of the manager's socket (RuntimeError if it is not started).

        A socket file in a directory of its own that only this user can
        enter, removed when the manager stops.
        """
        if self._address is None:
            raise RuntimeError("the KeyedLockManager is not started; call start() or use `with`")
        return self._address

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`shutdown` while the manager process lives."""
        process = self._process
        if process is None:
            return False
        if os.getpid() == self._starter:
            return process.is_alive()
        # Asked in a child of the process that started it (forked with this object): the
        # manager is not its child to ask, but its pid is the manager's while it runs (its
        # parent reaps it when it ends).
        pid = process.pid
        if pid is None:  # pragma: no cover - a started process has one
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - the same user started it
            return True
        return True

    @property
    def pid(self) -> int | None:
        """The manager process's id (None before :meth:`start`)."""
        return None if self._process is None else self._process.pid

    def start(self) -> None:
        """Start the manager process and wait until it accepts connections."""
        if self._process is not None:
            raise RuntimeError("this KeyedLockManager was already started")
        if sys.platform == "win32":
            raise NotImplementedError("KeyedLockManager needs Unix domain sockets (POSIX only)")
        ctx = self._ctx
        address = make_socket_path()  # in a new private directory
        try:
            reader, writer = ctx.Pipe(duplex=False)
            process = ctx.Process(  # type: ignore[attr-defined]
                target=serve,
                args=(writer, os.getpid(), address),
                name="KeyedLockManager",
                daemon=True,
            )
            process.start()
        except BaseException:
            remove_socket_path(address)
            raise
        writer.close()
        try:
            if not reader.poll(_START_TIMEOUT):
                raise RuntimeError("the KeyedLockManager process did not start in time")
            listening: str = reader.recv()
        except BaseException as exc:
            process.kill()
            process.join(_STOP_TIMEOUT)
            remove_socket_path(address)
            if isinstance(exc, (EOFError, OSError)):
                raise RuntimeError("the KeyedLockManager process failed to start") from exc
            raise
        finally:
            reader.close()
        self._process = process
        self._starter = os.getpid()
        self._address = listening
        self._finalizer = weakref.finalize(self, _stop_server, process, listening, os.getpid())

    def shutdown(self) -> None:
        """Stop the manager process (idempotent). Proxies stop working."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Self:
        """Start the manager if it is not started yet (RuntimeError if it was started and
        has stopped: shut down, or its process ended; make a new one)."""
        if self._process is None:
            self.start()
        elif not self.running:
            raise RuntimeError(
                "this KeyedLockManager has stopped (shut down, or its process ended); "
                "make a new one"
            )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def KeyedLock(
        self,
        *,
        max_waiters: int | None = None,
        fast_acquire: bool = False,
        warn_after: float | None = None,
    ) -> KeyedLockProxy:
        """A keyed lock living in the manager (see :class:`KeyedLockProxy`).

        ``max_waiters`` bounds each key's queue across all processes;
        ``fast_acquire`` as for :class:`~keyedlock.KeyedLock`; ``warn_after``
        logs a hold of the calling process still held after that many seconds
        (each process that receives the proxy watches its own holds).
        """
        max_waiters = check_max_waiters(max_waiters)
        fast_acquire = check_flag(fast_acquire)
        warn_after = check_warn_after(warn_after)
        tid = client_for(self.address).call(encode(NEW_LOCK, max_waiters))
        return KeyedLockProxy._make(self.address, tid, max_waiters, fast_acquire, warn_after)

    def SingleFlight(self, *, ttl: float = 0) -> SingleFlightProxy:
        """A single-flight group living in the manager (see :class:`SingleFlightProxy`).

        ``ttl``: seconds a successful result is reused, as in
        :class:`~keyedlock.SingleFlight`.
        """
        seconds = check_ttl(ttl)
        fid = client_for(self.address).call(encode(NEW_FLIGHT, seconds))
        return SingleFlightProxy._make(self.address, fid, seconds)
