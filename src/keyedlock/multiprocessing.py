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
once without waiting (the manager answers at once); if the key is busy it
waits in a helper thread, so the event loop keeps running. ``locked``,
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

import contextlib
import functools
import inspect
import itertools
import multiprocessing
import os
import pickle
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Hashable
from multiprocessing.context import BaseContext
from time import monotonic
from types import TracebackType
from typing import Any, Final, TypeVar, final, overload

from ._errors import Aborted, LockTimeout, exception_state, rebuild_exception
from ._keyspec import Decorator, KeySpec, key_function
from ._running import RunMixin
from ._runtime import (
    FLIGHT_INSTEAD,
    Finished,
    Offload,
    async_runtime,
    check_can_block,
    running_loop,
    sync_owner,
    thread_owners,
)
from ._scopes import timeout_error as _timeout_error
from ._scopes._manager import (
    ABANDON,
    ACQUIRE,
    FINISH,
    FLIGHT_LEN,
    FLIGHT_WAITERS,
    FORGET,
    IN_FLIGHT,
    JOIN,
    LEN,
    LOCKED,
    NEW_FLIGHT,
    NEW_LOCK,
    RELEASE,
    REPLY_GRACE,
    SHUTDOWN,
    WAITERS,
    Client,
    NoAnswer,
    Reply,
    Wait,
    client_for,
    deadline_for,
    drop_client,
    make_socket_path,
    next_serial,
    remove_socket_path,
    serve,
)
from ._singleflight import Result
from ._validate import (
    check_fn,
    check_key,
    check_max_waiters,
    check_sync_fn,
    check_timeout,
    check_ttl,
    is_async_callable,
)

__all__ = ["KeyedLockManager", "KeyedLockProxy", "ManagerLockContext", "SingleFlightProxy"]

R = TypeVar("R")

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
                client.call((SHUTDOWN,), monotonic() + _STOP_TIMEOUT)
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

    ::

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
        return self._process is not None and self._process.is_alive()

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
        self._address = listening
        self._finalizer = weakref.finalize(self, _stop_server, process, listening, os.getpid())

    def shutdown(self) -> None:
        """Stop the manager process (idempotent). Proxies stop working."""
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> KeyedLockManager:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()

    def KeyedLock(self, *, max_waiters: int | None = None) -> KeyedLockProxy:
        """A keyed lock living in the manager (see :class:`KeyedLockProxy`).

        ``max_waiters`` bounds each key's queue across all processes.
        """
        max_waiters = check_max_waiters(max_waiters)
        tid = client_for(self.address).call((NEW_LOCK, max_waiters))
        return KeyedLockProxy._make(self.address, tid, max_waiters)

    def SingleFlight(self, *, ttl: float = 0) -> SingleFlightProxy:
        """A single-flight group living in the manager (see :class:`SingleFlightProxy`).

        ``ttl``: seconds a successful result is reused, as in
        :class:`~keyedlock.SingleFlight`.
        """
        seconds = check_ttl(ttl)
        fid = client_for(self.address).call((NEW_FLIGHT, seconds))
        return SingleFlightProxy._make(self.address, fid, seconds)


# -- waiting off the event loop ---------------------------------------------------


def _dispose(wait: Wait, done: Finished[object]) -> None:
    """A reply nobody will read (its task was cancelled): give back what it granted."""
    if done.error is None:
        with contextlib.suppress(Exception):
            wait.undo(done.value)


async def _wait_off_loop(wait: Wait) -> object:
    """Run ``wait`` in a helper thread while this asyncio or trio task waits.

    Cancellation sends a cancel request to the manager (one quick round trip
    that the manager answers at once) before it propagates: the wait is
    withdrawn, and a key granted in the same instant is given back, so the
    manager holds nothing for the task any more. Under trio, as with trio's
    own primitives, a reply that arrived before the cancellation could take
    effect is kept (the task owns the key; trio raises Cancelled at its next
    checkpoint).
    """
    job: Offload[object] = Offload(
        wait.run, functools.partial(_dispose, wait), name="keyedlock-manager-wait"
    )
    job.claim()
    job.start()
    try:
        done = await job.wait_async(None)
    except BaseException:
        wait.cancel(give_back=True)
        raise
    assert done is not None  # no timeout: only cancellation ends the wait early
    return done.unwrap()


# -- locks ------------------------------------------------------------------------

_NEW: Final = 0
_ENTERED: Final = 1
_DONE: Final = 2

_REUSE = "this klock(key) context was already used; call klock(key) again for a new one"
_BAD_EXIT = "exit of a klock(key) context that is not entered (exited twice, or never entered)"


def _dump_error(exc: BaseException) -> bytes:
    """``exc`` pickled to be raised again in another process: same type, args and attributes.

    An exception whose ``__init__`` would change its ``args`` if called again
    (see :func:`~keyedlock._errors.exception_state`) travels as (type, args,
    attributes) and is rebuilt without calling ``__init__``; others pickle
    as usual. Raises if it cannot be pickled.
    """
    state = exception_state(exc)
    payload: tuple[object, ...] = (_AS_PICKLED, exc) if state is None else (_AS_STATE, *state)
    return pickle.dumps(payload, pickle.HIGHEST_PROTOCOL)


def _load_error(payload: bytes) -> BaseException:
    """The exception :func:`_dump_error` pickled (raises if it cannot be rebuilt here)."""
    state = pickle.loads(payload)
    exc = state[1] if state[0] == _AS_PICKLED else rebuild_exception(*state[1:])
    if not isinstance(exc, BaseException):
        raise TypeError(f"expected an exception, got {exc!r}")
    return exc


_AS_PICKLED: Final = 0
_AS_STATE: Final = 1


def _load_cause(payload: bytes) -> BaseException:
    try:
        return _load_error(payload)
    except Exception as exc:
        return RuntimeError(f"the holder's exception could not be unpickled here: {exc!r}")


def _dump_cause(exc: BaseException) -> bytes:
    """``exc`` pickled for the waiters it aborts; a stand-in if it cannot be pickled."""
    try:
        return _dump_error(exc)
    except Exception:
        return _dump_error(RuntimeError(f"{_type_name(exc)}: {exc} (not picklable)"))


def _granted(reply: object, key: Hashable) -> bool:
    """Map an ACQUIRE reply to True (acquired) / False (timed out), or raise Aborted.

    False too if the manager did not answer in time (NO_ANSWER).
    """
    if reply == Reply.GRANTED:
        return True
    if isinstance(reply, tuple) and reply[0] == Reply.ABORTED:
        raise Aborted(
            f"the wait for key {key!r} was aborted: the holder's work failed with on_error='stop'"
        ) from _load_cause(reply[1])
    return False


def _not_acquired(
    reply: object, lock: KeyedLockProxy, key: Hashable, timeout: float | None
) -> LockTimeout:
    """The LockTimeout of a context whose acquire returned ``reply`` (not granted)."""
    if reply != Reply.NO_ANSWER:
        return _timeout_error(key, timeout)
    return LockTimeout(
        f"the KeyedLockManager at {lock._address!r} did not answer in time: no reply to the "
        f"acquire of key {key!r} (timeout={timeout} s, plus {REPLY_GRACE} s of grace at most); "
        "its process may be stopped or stuck"
    )


def _check_wire_key(key: object) -> None:
    """A key the manager process can compare: hashable, picklable, and equal to its copy.

    The manager unpickles a new copy of the key with every request. A key
    that is not equal to its own copy (a NaN, or a tuple holding one) would
    never match the key the manager holds: refused with TypeError, at once.
    """
    cls = type(key)
    if cls is str or cls is int or cls is bytes:
        return  # the common keys: always equal to their copies
    check_key(key)
    try:
        copy = pickle.loads(pickle.dumps(key, pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        raise TypeError(
            f"key {key!r} cannot be sent to the KeyedLockManager: keys must be picklable ({exc})"
        ) from exc
    if copy != key:
        raise TypeError(
            f"key {key!r} is not equal to its own copy in another process (a NaN in it?), "
            "so the KeyedLockManager could never find it again; use a key that is"
        )


# -- owners on the wire ---------------------------------------------------------
#
# The manager tells owners apart by (process id, number). The numbers are never reused
# within a process, unlike thread idents and id(task): a key left held by a thread or
# task that ended must not look like a new one's own (a false re-acquire error).

_owner_numbers: Final = weakref.WeakKeyDictionary[object, int]()
_owner_counter: Final = itertools.count(1)
#: Reentrant: a signal handler may need a number while its thread is taking one.
_owner_numbers_lock = threading.RLock()


def _new_owner_number() -> int:
    with _owner_numbers_lock:  # one step on free-threaded builds too
        return next(_owner_counter)


def _reset_owner_numbers_lock() -> None:
    """In a fork child: a fresh lock (another thread may have held it at the fork)."""
    global _owner_numbers_lock
    _owner_numbers_lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_reset_owner_numbers_lock)


class _ThreadNumber(threading.local):
    def __init__(self) -> None:
        self.number = _new_owner_number()


_thread_number: Final = _ThreadNumber()


def _thread_owner_id() -> int:
    """The wire form of the calling thread as an owner (positive)."""
    return _thread_number.number


def _task_owner_id(task: object) -> int:
    """The wire form of an asyncio or trio task as an owner (negative)."""
    number = _owner_numbers.get(task)
    if number is None:
        number = _owner_numbers.setdefault(task, -_new_owner_number())
    return number


def _owner_id(owner: object) -> int:
    """The wire form of ``sync_owner()``'s answer: the calling thread, or its task."""
    if owner is thread_owners.token:
        return _thread_owner_id()
    return _task_owner_id(owner)


@final
class ManagerLockContext:
    """The context manager returned by ``klock(key, timeout=...)`` of a :class:`KeyedLockProxy`.

    Use it once, with ``with`` in a thread or ``async with`` in an asyncio or
    trio task. Entering is one round trip to the manager (however long it
    waits), exiting one more. It releases only its own hold: if that was
    released by someone else (``klock.release(key)``), exiting raises
    RuntimeError and leaves the key's current holder alone.
    """

    __slots__ = ("_held", "_key", "_lock", "_phase", "_serial", "_timeout")

    def __init__(self, lock: KeyedLockProxy, key: Hashable, timeout: float | None) -> None:
        self._lock = lock
        self._key = key
        self._timeout = timeout
        self._phase = _NEW
        self._serial = 0
        self._held = False

    def __repr__(self) -> str:
        phase = ("new", "entered", "exited")[self._phase]
        return f"<ManagerLockContext key={self._key!r} {phase}>"

    def __enter__(self) -> None:
        if self._phase:
            raise RuntimeError(_REUSE)
        self._phase = _ENTERED
        check_can_block("`with klock(key)`")
        self._serial = next_serial()
        key = self._key
        timeout = self._timeout
        reply = self._lock._acquire_sync(key, _thread_owner_id(), self._serial, timeout)
        if not _granted(reply, key):
            raise _not_acquired(reply, self._lock, key, timeout)
        self._held = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(None)

    async def __aenter__(self) -> None:
        if self._phase:
            raise RuntimeError(_REUSE)
        self._phase = _ENTERED
        _, task = async_runtime(running_loop())
        self._serial = next_serial()
        key = self._key
        timeout = self._timeout
        reply = await self._lock._acquire_async(key, _task_owner_id(task), self._serial, timeout)
        if not _granted(reply, key):
            raise _not_acquired(reply, self._lock, key, timeout)
        self._held = True

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._finish(None)

    def _finish(self, abort: BaseException | None) -> None:
        """Release this hold (one round trip), aborting the waiters if ``abort``."""
        if self._phase != _ENTERED:
            raise RuntimeError(_BAD_EXIT)
        self._phase = _DONE
        self._held = False
        self._lock._release(self._key, self._serial, abort)

    def _undo(self) -> None:
        """After an exception in ``run``: release the hold if it was taken and not released."""
        if self._held:
            self._held = False
            with contextlib.suppress(ConnectionError, RuntimeError):
                self._lock._release(self._key, self._serial, None)


def _rebuild_lock(address: str, tid: int, max_waiters: int | None) -> KeyedLockProxy:
    return KeyedLockProxy._make(address, tid, max_waiters)


@final
class KeyedLockProxy(RunMixin):
    """A :class:`~keyedlock.KeyedLock` living in a :class:`KeyedLockManager`, for every process.

    Made by :meth:`KeyedLockManager.KeyedLock`; pickles into worker
    processes. Same API and semantics as :class:`~keyedlock.KeyedLock`
    (``with`` / ``async with klock(key, timeout=...)``, ``acquire``,
    ``acquire_async``, ``release``, ``locked``, ``waiters``, ``len``, ``run``,
    ``run_sync``, ``guard``; :class:`~keyedlock.LockTimeout`,
    :class:`~keyedlock.Aborted`, :class:`~keyedlock.QueueFull`), with the
    exclusion, the FIFO queue and ``max_waiters`` spanning every process.

    Round trips: a synchronous acquire costs one (its wait happens in the
    manager), a release one; an async acquire one if the key is free, else
    two (a try, then the wait, in a helper thread). Cancelling an async
    waiter sends a cancel request; a grant that raced with it is released
    (asyncio) or kept until the task's next checkpoint (trio), never leaked.
    With ``on_error="stop"``, the exception reaches the aborted waiters of
    other processes pickled (as :class:`~keyedlock.Aborted`'s ``__cause__``;
    a stand-in RuntimeError if it cannot be pickled). If a holder's process
    dies, its keys pass to the next waiters at once.
    """

    __slots__ = ("__weakref__", "_address", "_max_waiters", "_tid")

    _address: str
    _tid: int
    _max_waiters: int | None

    def __init__(self) -> None:
        raise TypeError("make a KeyedLockProxy with KeyedLockManager.KeyedLock()")

    @classmethod
    def _make(cls, address: str, tid: int, max_waiters: int | None) -> KeyedLockProxy:
        self = object.__new__(cls)
        self._address = address
        self._tid = tid
        self._max_waiters = max_waiters
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_lock, (self._address, self._tid, self._max_waiters))

    def __repr__(self) -> str:
        return f"<KeyedLockProxy #{self._tid} at {self._address!r}>"

    @property
    def max_waiters(self) -> int | None:
        """The per-key bound on queued callers, across all processes (None: unbounded)."""
        return self._max_waiters

    # -- the wire -----------------------------------------------------------------

    def _undo(self, key: Hashable, serial: int) -> Callable[[object], None]:
        def undo(reply: object) -> None:
            if reply == Reply.GRANTED:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    self._release(key, serial, None)

        return undo

    def _acquire_sync(
        self, key: Hashable, owner: int, serial: int, timeout: float | None
    ) -> object:
        """One round trip: acquire ``key`` for ``owner``, blocking this thread; the reply.

        With a timeout, the reply is NO_ANSWER if the manager has not
        answered within it plus REPLY_GRACE (it is stopped or stuck).
        """
        client = client_for(self._address)
        request = (ACQUIRE, self._tid, key, owner, serial, timeout)
        deadline = deadline_for(timeout)
        return Wait(client, request, serial, self._undo(key, serial), deadline).run()

    async def _acquire_async(
        self, key: Hashable, owner: int, serial: int, timeout: float | None
    ) -> object:
        """Try once at once; if busy, wait in a helper thread (cancellable); the reply.

        The try blocks the event loop for one round trip: with a timeout, at
        most REPLY_GRACE (NO_ANSWER) if the manager does not answer.
        """
        client = client_for(self._address)
        undo = self._undo(key, serial)
        deadline = deadline_for(timeout)
        try_by = None if deadline is None else deadline_for(0)
        now = Wait(client, (ACQUIRE, self._tid, key, owner, serial, 0), serial, undo, try_by).run()
        if now != Reply.BUSY or timeout == 0:
            return now
        request = (ACQUIRE, self._tid, key, owner, serial, timeout)
        return await _wait_off_loop(Wait(client, request, serial, undo, deadline))

    def _release(self, key: Hashable, serial: int | None, abort: BaseException | None) -> None:
        cause = None if abort is None else _dump_cause(abort)
        client_for(self._address).call((RELEASE, self._tid, key, serial, cause))

    # -- the context manager --------------------------------------------------------

    def __call__(self, key: Hashable, *, timeout: float | None = None) -> ManagerLockContext:  # type: ignore[override]
        """A context manager holding ``key`` for the body of a ``with`` / ``async with``.

        ``timeout`` (seconds; None waits forever, 0 tries once) bounds the
        wait, which happens in the manager; when it elapses,
        :class:`~keyedlock.LockTimeout` is raised and nothing is left queued.
        It is raised too if the manager has not answered within ``timeout``
        plus a grace of 1 second (its process stopped or stuck).
        """
        _check_wire_key(key)
        return ManagerLockContext(self, key, check_timeout(timeout))

    # -- explicit acquire / release -------------------------------------------------

    def acquire(
        self, key: Hashable, *, blocking: bool = True, timeout: float | None = None
    ) -> bool:
        """Acquire ``key``, blocking this thread; True if acquired (one round trip).

        As :meth:`keyedlock.KeyedLock.acquire`: False on timeout, or at once
        if ``blocking=False`` (or ``timeout=0``) and the key is busy. False
        too if the manager has not answered within ``timeout`` plus a grace
        of 1 second (its process stopped or stuck). Release with
        :meth:`release`.
        """
        if not blocking:
            if timeout is not None:
                raise ValueError("can't specify a timeout for a non-blocking acquire")
            timeout = 0
        _check_wire_key(key)
        timeout = check_timeout(timeout)
        if timeout == 0:
            owner = _owner_id(sync_owner())
        else:
            check_can_block("a blocking acquire(key)")
            owner = _thread_owner_id()
        return _granted(self._acquire_sync(key, owner, next_serial(), timeout), key)

    async def acquire_async(self, key: Hashable, *, timeout: float | None = None) -> bool:
        """Acquire ``key`` from an asyncio or trio task; True if acquired.

        Returns False if ``timeout`` elapses (0 tries once), or if the
        manager does not answer in time (its process stopped or stuck). The
        wait runs in a helper thread; cancellation withdraws it from the
        manager and leaves no trace. Release with :meth:`release`.
        """
        _check_wire_key(key)
        timeout = check_timeout(timeout)
        _, task = async_runtime(running_loop())
        reply = await self._acquire_async(key, _task_owner_id(task), next_serial(), timeout)
        return _granted(reply, key)

    def release(self, key: Hashable) -> None:
        """Release ``key``, whoever holds it; RuntimeError if it is not held (one round trip).

        The key passes directly to its first waiter, in whichever process.
        """
        _check_wire_key(key)
        client_for(self._address).call((RELEASE, self._tid, key, None, None))

    # -- introspection ----------------------------------------------------------------

    def locked(self, key: Hashable) -> bool:
        """True if some process holds ``key`` (or it was just handed to a waiter)."""
        _check_wire_key(key)
        return bool(client_for(self._address).call((LOCKED, self._tid, key)))

    def waiters(self, key: Hashable) -> int:
        """How many callers, of all processes, are queued on ``key`` (not the holder)."""
        _check_wire_key(key)
        return int(client_for(self._address).call((WAITERS, self._tid, key)))

    def __len__(self) -> int:
        """Number of keys with a holder or a waiter, across all processes."""
        return int(client_for(self._address).call((LEN, self._tid)))


# -- single-flight ------------------------------------------------------------------


def _type_name(obj: object) -> str:
    cls = type(obj)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


def _pack_value(value: object, key: Hashable) -> tuple[bytes, TypeError | None]:
    """The pickled result for the followers, or a pickled TypeError (also returned)."""
    try:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL), None
    except Exception as exc:
        error = TypeError(
            f"the result of the single-flight call for key {key!r} cannot be shared with "
            f"other processes: a {_type_name(value)!r} object cannot be pickled ({exc})"
        )
        error.__cause__ = exc
        return _dump_error(error), error


def _pack_error(exc: BaseException, key: Hashable) -> bytes:
    """The leader's exception pickled for the followers; a TypeError if it cannot be."""
    try:
        return _dump_error(exc)
    except Exception as why:
        stand_in = TypeError(
            f"the single-flight call for key {key!r} raised {_type_name(exc)}: {exc}; "
            f"the exception cannot be pickled to share it with other processes ({why})"
        )
        return _dump_error(stand_in)


def _outcome(reply: object, key: Hashable) -> Any:
    """A follower's share of a finished call: its value, or raise (a copy of) its exception."""
    assert isinstance(reply, tuple)
    is_error, payload = reply[1]
    try:
        shared = _load_error(payload) if is_error else pickle.loads(payload)
    except Exception as exc:
        raise TypeError(
            f"the outcome of the single-flight call for key {key!r} could not be "
            f"unpickled in this process: {exc!r}"
        ) from exc
    if is_error:
        raise shared
    return shared


def _rebuild_flight(address: str, fid: int, ttl: float) -> SingleFlightProxy:
    return SingleFlightProxy._make(address, fid, ttl)


@final
class SingleFlightProxy:
    """A :class:`~keyedlock.SingleFlight` living in a :class:`KeyedLockManager`, for every process.

    Made by :meth:`KeyedLockManager.SingleFlight`; pickles into worker
    processes. Concurrent callers of one key, in any processes, threads,
    asyncio or trio tasks, share one call: the first runs its ``fn`` (in
    its own process), the others wait in the manager and get the outcome.

    - The result reaches the other callers pickled. A result that cannot
      be pickled makes *every* caller, the one that ran it included, raise
      :class:`TypeError` naming its type (so the outcome never depends on
      who ran the call).
    - An exception from ``fn`` is raised in the caller that ran it as is,
      and in every other caller as an unpickled copy: same type, ``args``
      and attributes, even when the class's ``__init__`` formats its
      message (tracebacks and chained exceptions stay behind). One that
      cannot be pickled reaches them as a :class:`TypeError` describing it.
    - If the caller running the call is cancelled, interrupted, or its
      process dies, the earliest waiting caller takes over and runs its own
      ``fn``; the others keep waiting.

    Round trips: the caller running the call pays two (join, finish), a
    synchronous waiter one; an async waiter two (a try, then the wait in a
    helper thread).
    """

    __slots__ = ("__weakref__", "_address", "_fid", "_ttl")

    _address: str
    _fid: int
    _ttl: float

    def __init__(self) -> None:
        raise TypeError("make a SingleFlightProxy with KeyedLockManager.SingleFlight()")

    @classmethod
    def _make(cls, address: str, fid: int, ttl: float) -> SingleFlightProxy:
        self = object.__new__(cls)
        self._address = address
        self._fid = fid
        self._ttl = ttl
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_flight, (self._address, self._fid, self._ttl))

    def __repr__(self) -> str:
        return f"<SingleFlightProxy #{self._fid} at {self._address!r} ttl={self._ttl}>"

    @property
    def ttl(self) -> float:
        """Seconds a successful result is reused after it completes (0: never)."""
        return self._ttl

    # -- the wire -----------------------------------------------------------------

    def _undo(self, key: Hashable, serial: int) -> Callable[[object], None]:
        def undo(reply: object) -> None:
            if reply == Reply.LEAD:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    client_for(self._address).call((ABANDON, self._fid, key, serial))

        return undo

    def _join(self, key: Hashable, owner: int, serial: int, wait: bool) -> Wait:
        request = (JOIN, self._fid, key, owner, serial, wait)
        return Wait(client_for(self._address), request, serial, self._undo(key, serial))

    def _finish(self, key: Hashable, serial: int, is_error: bool, payload: bytes) -> bool:
        request = (FINISH, self._fid, key, serial, is_error, payload)
        return bool(client_for(self._address).call(request))

    def _abandon(self, key: Hashable, serial: int) -> None:
        client_for(self._address).call((ABANDON, self._fid, key, serial))

    # -- async ----------------------------------------------------------------------

    @overload
    async def do(
        self, key: Hashable, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any
    ) -> R: ...
    @overload
    async def do(self, key: Hashable, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R: ...
    async def do(self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` once for every concurrent caller of ``key``, in any process.

        ``fn`` may be sync (it then runs inline in the calling task) or
        async. From an asyncio or trio task.
        """
        return (await self._do(key, fn, args, kwargs))[0]

    @overload
    async def do_ex(
        self, key: Hashable, fn: Callable[..., Awaitable[R]], /, *args: Any, **kwargs: Any
    ) -> Result[R]: ...
    @overload
    async def do_ex(
        self, key: Hashable, fn: Callable[..., R], /, *args: Any, **kwargs: Any
    ) -> Result[R]: ...
    async def do_ex(
        self, key: Hashable, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> Result[Any]:
        """As :meth:`do`, returning a :class:`~keyedlock.Result` with the ``shared`` flag."""
        return Result(*(await self._do(key, fn, args, kwargs)))

    async def _do(
        self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, bool]:
        _check_wire_key(key)
        check_fn(fn)
        _, task = async_runtime(running_loop())
        owner = _task_owner_id(task)
        serial = next_serial()
        reply = self._join(key, owner, serial, False).run()
        if reply == Reply.BUSY:
            reply = await _wait_off_loop(self._join(key, owner, serial, True))
        if reply != Reply.LEAD:
            return _outcome(reply, key), True
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            self._finish(key, serial, True, _pack_error(exc, key))
            raise
        except BaseException:
            self._abandon(key, serial)  # cancelled or interrupted: the next caller takes over
            raise
        payload, error = _pack_value(result, key)
        shared = self._finish(key, serial, error is not None, payload)
        if error is not None:
            raise error
        return result, shared

    # -- threads --------------------------------------------------------------------

    def do_sync(self, key: Hashable, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> R:
        """As :meth:`do`, for threads: ``fn`` must be sync; blocks this thread.

        An async ``fn`` raises TypeError at once; a call from a thread running
        an event loop raises RuntimeError (use ``await do``).
        """
        return self._do_sync(key, fn, args, kwargs)[0]  # type: ignore[no-any-return]

    def do_sync_ex(
        self, key: Hashable, fn: Callable[..., R], /, *args: Any, **kwargs: Any
    ) -> Result[R]:
        """As :meth:`do_sync`, returning a :class:`~keyedlock.Result` with the ``shared`` flag."""
        return Result(*self._do_sync(key, fn, args, kwargs))

    def _do_sync(
        self, key: Hashable, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, bool]:
        _check_wire_key(key)
        check_sync_fn(fn, "do_sync", "await flight.do(...)")
        check_can_block("flight.do_sync(...)", FLIGHT_INSTEAD)
        serial = next_serial()
        reply = self._join(key, _thread_owner_id(), serial, True).run()
        if reply != Reply.LEAD:
            return _outcome(reply, key), True
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._finish(key, serial, True, _pack_error(exc, key))
            raise
        except BaseException:
            self._abandon(key, serial)
            raise
        payload, error = _pack_value(result, key)
        shared = self._finish(key, serial, error is not None, payload)
        if error is not None:
            raise error
        return result, shared

    # -- control and introspection ----------------------------------------------------

    def forget(self, key: Hashable) -> None:
        """Make the next call for ``key`` start a new execution.

        Callers already waiting still get the running call's outcome (see
        :meth:`keyedlock.SingleFlight.forget`); drops a value kept by ``ttl``.
        """
        _check_wire_key(key)
        client_for(self._address).call((FORGET, self._fid, key))

    def in_flight(self, key: Hashable) -> bool:
        """True if a call for ``key`` is running in some process."""
        _check_wire_key(key)
        return bool(client_for(self._address).call((IN_FLIGHT, self._fid, key)))

    def __len__(self) -> int:
        """Number of keys with a call in flight, across all processes."""
        return int(client_for(self._address).call((FLIGHT_LEN, self._fid)))

    def _waiting(self, key: Hashable) -> int:
        """How many callers wait for the call in flight for ``key`` (for tests and diagnostics)."""
        _check_wire_key(key)
        return int(client_for(self._address).call((FLIGHT_WAITERS, self._fid, key)))

    # -- decorator --------------------------------------------------------------------

    def coalesce(self, key: KeySpec) -> Decorator:
        """Decorate a ``def`` or ``async def`` so concurrent calls with one key share a call.

        As :meth:`keyedlock.SingleFlight.coalesce`, across processes.
        """

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            key_of = key_function(key, fn)
            if is_async_callable(fn):

                @functools.wraps(fn)
                async def coalesced_async(*args: Any, **kwargs: Any) -> Any:
                    return (await self._do(key_of(*args, **kwargs), fn, args, kwargs))[0]

                return coalesced_async

            @functools.wraps(fn)
            def coalesced(*args: Any, **kwargs: Any) -> Any:
                return self._do_sync(key_of(*args, **kwargs), fn, args, kwargs)[0]

            return coalesced

        return decorate
