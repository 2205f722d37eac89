"""The manager scope: lock and single-flight state in one server process, shared by many.

:class:`keyedlock.multiprocessing.KeyedLockManager` starts :func:`serve` in a
process of its own. The server keeps its state in the same core as every
other scope (:class:`~keyedlock._core._keytable.KeyTable` for locks,
:class:`~keyedlock._core._flight.FlightTable` for single-flight) and its
waiters wait with the thread adapter
(:func:`~keyedlock._runtime._threads.wait_thread`): every client connection
is served by a thread of its own, and a request that has to wait parks that
thread until the core grants, aborts or withdraws it. So a blocking acquire
is one request and one reply, whatever happens in between, and waiters of
all processes queue in one FIFO.

Wire protocol (over Unix stream sockets; messages are framed as by
:class:`~multiprocessing.connection.Connection`, a 4-byte big-endian length
then the payload, but read with one system call instead of two, see
:func:`recv_frame`; one request in flight per connection):

- the connection starts with a handshake (:meth:`_Server.handshake`,
  :func:`_greet`): the manager sends a nonce; the client answers with an
  HMAC-SHA256, keyed with the creating process's ``authkey``, over both
  nonces and its pid (plus its own nonce and pid); the manager answers with
  its own HMAC and the connection's id, or with an empty message (refused).
  Nothing is unpickled before the client has proven the key;
- every request is a tuple ``(op, *args)`` pickled with :mod:`pickle`; the
  reply is ``(True, value)`` or ``(False, exception)``;
- user payloads (single-flight outcomes, ``on_error="stop"`` causes) travel
  as opaque pickled bytes: the server never unpickles them, so their classes
  need not be importable here. Keys are unpickled (the server compares
  them).

Who can connect. The socket is a file in a directory of its own, made
private (mode 0700) by :func:`make_socket_path` and removed when the manager
stops: other users cannot reach it. On accepting, the manager also checks
the uid of the connecting process (``SO_PEERCRED``, Linux) and closes a
connection of another user at once. The accepting thread only accepts: the
handshake runs in the connection's own thread and must be done within
:data:`HANDSHAKE_TIMEOUT`, so a peer that says nothing (or garbage) stalls
nobody. The ``authkey`` tells apart the processes of this user that were
given the proxies from the others.

Deadlines. A request with a ``timeout`` (ACQUIRE) carries it to the manager,
which answers when it elapses; the client also waits no longer than that
plus :data:`REPLY_GRACE` for the whole request, connecting included
(:func:`deadline_for`), so a stopped manager cannot hold it. On giving up it
shuts the connection's reading side, takes a reply that had come whole by
then, and closes it: a reply the manager writes after that fails, and the
manager releases what the reply granted (:meth:`_Server.undelivered`). A
request still queued when its client gives up ends with its own timeout in
the manager (which answers to a closed connection). Requests without a
timeout wait as long as the manager lives.

Bookkeeping. Each request that takes a key gets a client-chosen serial
(unique within its process). The server tracks every hold of a process
(:class:`_Proc`) from the request's arrival until its release, in one of
three phases: PENDING (the request is being served: queued, or granted but
not yet reported), LIVE (granted and reported: the client owns it) and GONE
(released). A hold whose client no longer wants it (a cancel request, or
the process died) is marked *void*: a void hold that is granted anyway is
released by the thread serving it instead of being reported. Every phase
change and every release happens under one server mutex, so each hold is
released exactly once.

Client side. Each process keeps, per manager, a pool of idle connections
(:class:`Client`): a request borrows one, so concurrent requests of one
process (threads, helper threads of async callers) never share one, and a
connection is reused by the next request. After ``fork`` the child starts
with an empty pool (never the parent's connections). A request that takes a
key (:class:`Wait`) is cancelled with a CANCEL request on another
connection (the caller's async task was cancelled, or its thread
interrupted, possibly after the request's bytes left): the manager
withdraws the request, refuses it if it has not arrived yet, or (with
``give_back``) releases what it was granted; the reply to the request
itself then comes at once, or is dropped with its connection.

Crashes. Every client process is watched through a pidfd (Linux): one
monitor thread blocks in ``epoll`` on all of them and learns of a death at
once, zombie or not. The dead process's LIVE holds are released (handed on
FIFO; a single-flight leader's call passes to its earliest follower) and its
queued waits withdrawn. Where pidfds are unavailable, a process counts as
dead when its last connection closes. The server also exits when the
process that started it dies.
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import itertools
import math
import os
import pickle
import select
import signal
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Hashable
from multiprocessing import current_process
from multiprocessing.connection import Connection
from time import monotonic
from typing import Any, Final

from .._core import (
    ABORTED,
    GRANTED,
    MISS,
    WAITING,
    FlightTable,
    Hold,
    KeyTable,
    outcome_of,
    reacquire_error,
)
from .._runtime import wait_thread

__all__ = [
    "ABANDON",
    "ACQUIRE",
    "CANCEL",
    "FINISH",
    "FLIGHT_LEN",
    "FLIGHT_WAITERS",
    "FORGET",
    "HANDSHAKE_TIMEOUT",
    "IN_FLIGHT",
    "JOIN",
    "LEN",
    "LOCKED",
    "NEW_FLIGHT",
    "NEW_LOCK",
    "RELEASE",
    "REPLY_GRACE",
    "SHUTDOWN",
    "WAITERS",
    "Client",
    "NoAnswer",
    "Reply",
    "Wait",
    "client_for",
    "deadline_for",
    "drop_client",
    "make_socket_path",
    "next_serial",
    "remove_socket_path",
    "serve",
]

#: Seconds a new connection has to complete its handshake; a peer that has not by then is
#: disconnected. A client needs about a millisecond (its pid and two HMACs).
HANDSHAKE_TIMEOUT: Final = 5.0
#: Seconds a client waits for the reply to a request with a ``timeout`` beyond that timeout
#: before it gives up. The manager answers when the timeout elapses; only a manager that is
#: stopped or stuck lets the grace run out.
REPLY_GRACE: Final = 1.0

# -- operations (the first item of a request) -------------------------------

NEW_LOCK: Final = 1
NEW_FLIGHT: Final = 2
ACQUIRE: Final = 3
RELEASE: Final = 4
LOCKED: Final = 5
WAITERS: Final = 6
LEN: Final = 7
CANCEL: Final = 8
JOIN: Final = 9
FINISH: Final = 10
ABANDON: Final = 11
FORGET: Final = 12
IN_FLIGHT: Final = 13
FLIGHT_LEN: Final = 14
FLIGHT_WAITERS: Final = 15
SHUTDOWN: Final = 16


class Reply:
    """Answers of ACQUIRE and JOIN (ABORTED and OUTCOME come as ``(code, payload)``)."""

    GRANTED: Final = 1  # ACQUIRE: the caller holds the key
    BUSY: Final = 2  # ACQUIRE: timed out, or busy with timeout=0; JOIN: busy, no wait
    CANCELLED: Final = 3  # the wait was withdrawn by a cancel request
    ABORTED: Final = 4  # ACQUIRE: (ABORTED, pickled cause) on_error="stop"
    LEAD: Final = 5  # JOIN: the caller runs the call
    OUTCOME: Final = 6  # JOIN: (OUTCOME, (is_error, pickled value or exception))
    NO_ANSWER: Final = 7  # never sent: the client gave up waiting (see deadline_for)


# -- framing ------------------------------------------------------------------

_HEADER: Final = struct.Struct("!i")  # a big-endian length, as Connection.send_bytes writes
_CHUNK: Final = 16384


def send_frame(fd: int, payload: bytes) -> None:
    """Write one message (length header and payload, one system call when it fits)."""
    if len(payload) > 0x7FFFFFFF:
        raise ValueError(f"a message of {len(payload)} bytes is too large to send")
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        data = data[os.write(fd, data) :]


def recv_frame(fd: int) -> bytes:
    """Read one message: usually a single read, as a message is small and comes whole.

    The peer never sends a second message before this one is answered, so a
    read never returns bytes of the next one.
    """
    data = os.read(fd, _CHUNK)
    if len(data) >= 4 and len(data) == _HEADER.unpack_from(data)[0] + 4:
        return data[4:]
    buf = bytearray(data)
    while len(buf) < 4:
        more = os.read(fd, _CHUNK)
        if not more:
            raise EOFError("connection closed")
        buf += more
    end = _HEADER.unpack_from(buf)[0] + 4
    while len(buf) < end:
        more = os.read(fd, end - len(buf))
        if not more:
            raise EOFError("connection closed")
        buf += more
    return bytes(buf[4:end])


class NoAnswer(Exception):
    """The peer did not answer before the deadline (raised by the ``*_by`` functions)."""


def deadline_for(timeout: float | None) -> float | None:
    """When a client stops waiting for a request that may wait ``timeout`` in the manager.

    Never (None) without a timeout, or one too long to wait for anyway (as
    in the manager); else the timeout plus :data:`REPLY_GRACE` from now, for
    the whole request: connecting, handshake, request, reply.
    """
    if timeout is None or timeout > threading.TIMEOUT_MAX:
        return None
    return monotonic() + timeout + REPLY_GRACE


#: The longest single poll() in milliseconds (a day; a longer wait polls again).
_POLL_MAX: Final = 86_400_000


def _ready(fd: int, events: int, deadline: float) -> None:
    """Wait until ``fd`` is ready for ``events`` (or hung up); NoAnswer once ``deadline`` passes.

    A deadline already past still looks once: what has arrived by now counts.
    """
    poller = select.poll()
    poller.register(fd, events)
    while not poller.poll(min(_POLL_MAX, max(0, math.ceil((deadline - monotonic()) * 1000)))):
        if monotonic() >= deadline:
            raise NoAnswer


def send_frame_by(sock: socket.socket, payload: bytes, deadline: float) -> None:
    """As :func:`send_frame`, giving up (NoAnswer) if the peer does not take it by ``deadline``."""
    if len(payload) > 0x7FFFFFFF:
        raise ValueError(f"a message of {len(payload)} bytes is too large to send")
    data = memoryview(_HEADER.pack(len(payload)) + payload)
    while data:
        try:
            data = data[sock.send(data, socket.MSG_DONTWAIT) :]
        except BlockingIOError:
            _ready(sock.fileno(), select.POLLOUT, deadline)


def recv_frame_by(fd: int, deadline: float) -> bytes:
    """As :func:`recv_frame`, giving up (NoAnswer) if the message is not whole by ``deadline``."""
    buf = bytearray()
    end = 4
    while len(buf) < end:
        _ready(fd, select.POLLIN, deadline)
        more = os.read(fd, _CHUNK if end == 4 else end - len(buf))
        if not more:
            raise EOFError("connection closed")
        buf += more
        if end == 4 and len(buf) >= 4:
            end = _HEADER.unpack_from(buf)[0] + 4
            if end < 4:
                raise OSError("bad message length")
    return bytes(buf[4:end])


def _recv_exact(fd: int, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes (never more: a peer may be sending garbage), by ``deadline``."""
    buf = bytearray()
    while len(buf) < size:
        _ready(fd, select.POLLIN, deadline)
        more = os.read(fd, size - len(buf))
        if not more:
            raise EOFError("connection closed")
        buf += more
    return bytes(buf)


# -- the socket ---------------------------------------------------------------

#: The longest path of a Unix socket: ``sun_path`` holds 108 bytes on Linux, 104 on macOS and
#: the BSDs, the terminating NUL included.
_MAX_SOCKET_PATH: Final = 107 if sys.platform.startswith("linux") else 103
_SOCKET_NAME: Final = "manager.sock"
_BACKLOG: Final = 128
#: ``struct ucred`` as SO_PEERCRED returns it: pid, uid, gid.
_UCRED: Final = struct.Struct("iII")


def _socket_bases() -> list[str]:
    """Where a manager's private directory may go: $XDG_RUNTIME_DIR if usable, the temp dir."""
    bases = []
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime):
        try:
            info = os.stat(runtime)
        except OSError:
            pass
        else:
            if (
                stat.S_ISDIR(info.st_mode)
                and info.st_uid == os.geteuid()
                and os.access(runtime, os.W_OK | os.X_OK)
            ):
                bases.append(runtime)
    temp = tempfile.gettempdir()
    if temp not in bases:
        bases.append(temp)
    return bases


def make_socket_path() -> str:
    """The path for a new manager's socket, in a new directory only this user can enter.

    The directory (mode 0700, made by :func:`tempfile.mkdtemp`) is in
    ``$XDG_RUNTIME_DIR`` if that is usable (this user's, writable), else in
    :func:`tempfile.gettempdir`. OSError (ENAMETOOLONG) if the path would not
    fit in a Unix socket address there.
    """
    too_long = ""
    for base in _socket_bases():
        directory = tempfile.mkdtemp(prefix="keyedlock-", dir=base)
        path = os.path.join(directory, _SOCKET_NAME)
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        os.rmdir(directory)
        too_long = path
    raise OSError(
        errno.ENAMETOOLONG,
        f"the KeyedLockManager's socket path {too_long!r} ({len(os.fsencode(too_long))} bytes) "
        f"is too long for a Unix socket (at most {_MAX_SOCKET_PATH} bytes); set TMPDIR "
        "(or XDG_RUNTIME_DIR) to a shorter directory",
    )


def remove_socket_path(path: str) -> None:
    """Remove a manager's socket file and its directory (either may be gone already)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(os.path.dirname(path))


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        os.chmod(path, 0o600)  # the directory already keeps other users out
        listener.listen(_BACKLOG)
    except BaseException:
        listener.close()
        raise
    return listener


def peer_uid(sock: socket.socket) -> int | None:
    """The effective uid of the process that connected ``sock`` (None: the platform can't tell)."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    _, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, option, _UCRED.size))
    return int(uid)


def _open(address: str, deadline: float | None) -> socket.socket:
    """A socket connected to ``address``; by ``deadline`` (NoAnswer) even if its backlog is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if deadline is None:
            sock.connect(address)
            return sock
        sock.setblocking(False)
        while (err := sock.connect_ex(address)) in (errno.EAGAIN, errno.EWOULDBLOCK):
            # The manager is not accepting and its backlog is full: try again in a moment.
            if monotonic() >= deadline:
                raise NoAnswer
            time.sleep(0.005)
        if err in (errno.EINPROGRESS, errno.EALREADY):
            _ready(sock.fileno(), select.POLLOUT, deadline)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err and err != errno.EISCONN:
            raise OSError(err, os.strerror(err), address)
        sock.setblocking(True)
        return sock
    except BaseException:
        sock.close()
        raise


# -- the handshake --------------------------------------------------------------

_NONCE: Final = 32
_PROOF: Final = 32  # an HMAC-SHA256
_NUMBER: Final = struct.Struct("!q")  # a pid, a connection id
#: The client's message: its proof, its nonce, its pid.
_HELLO_SIZE: Final = _PROOF + _NONCE + _NUMBER.size
_HELLO_HEADER: Final = _HEADER.pack(_HELLO_SIZE)


def _proof(authkey: bytes, role: bytes, *fields: bytes) -> bytes:
    """The HMAC-SHA256 of ``fields`` (fixed sizes), for one side of the handshake."""
    return hmac.new(authkey, b"keyedlock-manager " + role + b"".join(fields), "sha256").digest()


class _Refused(Exception):
    """The manager refused this process's proof, or did not prove the key itself."""


def _greet(sock: socket.socket, deadline: float | None) -> int:
    """The client's side of the handshake; returns the connection's id."""
    fd = sock.fileno()
    authkey = bytes(current_process().authkey)
    theirs = recv_frame(fd) if deadline is None else recv_frame_by(fd, deadline)
    ours = os.urandom(_NONCE)
    pid = _NUMBER.pack(os.getpid())
    hello = _proof(authkey, b"client", theirs, ours, pid) + ours + pid
    if deadline is None:
        send_frame(fd, hello)
        answer = recv_frame(fd)
    else:
        send_frame_by(sock, hello, deadline)
        answer = recv_frame_by(fd, deadline)
    if not answer:
        raise _Refused(
            "it refused this process, which does not have the authkey of the process that "
            "started the manager (multiprocessing.current_process().authkey, inherited by the "
            "processes it starts)"
        )
    conn_id = answer[_PROOF:]
    if len(answer) != _PROOF + _NUMBER.size or not hmac.compare_digest(
        answer[:_PROOF], _proof(authkey, b"server", theirs, ours, conn_id)
    ):
        raise _Refused("it did not prove that it knows this process's authkey")
    number: int = _NUMBER.unpack(conn_id)[0]
    return number


# -- holds ------------------------------------------------------------------

_PENDING: Final = 0
_LIVE: Final = 1
_GONE: Final = 2


class _RemoteHold(Hold):
    """A hold of a client process: the core's Hold plus the server's bookkeeping."""

    __slots__ = ("key", "phase", "proc", "serial", "table", "void")

    key: Hashable
    table: KeyTable
    proc: _Proc
    serial: int
    phase: int
    void: bool

    def __init__(self, proc: _Proc, owner: int, serial: int, table: KeyTable, key: Hashable):
        super().__init__((proc.pid, owner))
        self.proc = proc
        self.serial = serial
        self.table = table
        self.key = key
        self.phase = _PENDING
        self.void = False
        # Not WAITING: a withdrawal before the hold is queued changes nothing.
        self._state = GRANTED


class _VoidAware(KeyTable):
    """A table that refuses to keep a void hold queued.

    A hold is registered (under the server mutex) before its thread queues
    it in the core. If it becomes void in between, the canceller's
    withdrawal finds it not yet queued; the check after queueing closes that
    window: whichever of the two withdraws it while it is WAITING wakes it.
    """

    __slots__ = ()

    def enqueue(self, key: Hashable, hold: Hold, wake: Callable[[], bool]) -> bool:
        if super().enqueue(key, hold, wake):
            return True
        if isinstance(hold, _RemoteHold) and hold.void and self.withdraw(key, hold) == WAITING:
            wake()
        return False


class _LockTable(_VoidAware):
    __slots__ = ()


class _FlightTable(_VoidAware, FlightTable):
    __slots__ = ()


class _Proc:
    """A client process: its holds (PENDING and LIVE, by serial) and how it is watched."""

    __slots__ = ("conns", "dead", "holds", "pid", "pidfd")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.holds: dict[int, _RemoteHold] = {}
        self.conns = 0
        self.dead = False
        self.pidfd: int | None = None


class _Conn:
    """The server's view of one client connection."""

    __slots__ = ("cancelled", "granted", "id", "proc")

    def __init__(self, conn_id: int, proc: _Proc) -> None:
        self.id = conn_id
        self.proc = proc
        # A cancel that arrived before its request (they travel on two connections).
        self.cancelled: int | None = None
        # The hold the reply being sent grants (LIVE): released if it cannot be delivered.
        self.granted: _RemoteHold | None = None


class _Server:
    """All state of one manager process."""

    def __init__(self, listener: socket.socket, parent: int, authkey: bytes) -> None:
        self.listener = listener
        self.authkey = authkey
        self.mutex = threading.Lock()
        self.stop = threading.Event()
        self.tables: list[KeyTable] = []
        self.procs: dict[int, _Proc] = {}
        self.conns: dict[int, _Conn] = {}
        self.next_conn = 1
        self.watched: dict[int, _Proc | None] = {}  # pidfd -> process (None: the parent)
        self.epoll = _open_epoll()
        self.handlers: dict[int, Callable[..., Any]] = {
            NEW_LOCK: self.new_lock,
            NEW_FLIGHT: self.new_flight,
            ACQUIRE: self.acquire,
            RELEASE: self.release,
            LOCKED: self.locked,
            WAITERS: self.waiters,
            LEN: self.length,
            CANCEL: self.cancel,
            JOIN: self.join,
            FINISH: self.finish,
            ABANDON: self.abandon,
            FORGET: self.forget,
            IN_FLIGHT: self.locked,
            FLIGHT_LEN: self.length,
            FLIGHT_WAITERS: self.waiters,
            SHUTDOWN: self.shutdown,
        }
        if self.epoll is not None and not self._watch(parent, None):
            self.stop.set()  # the process that started the manager is already gone

    # -- process watching ---------------------------------------------------

    def _watch(self, pid: int, proc: _Proc | None) -> bool:
        """Watch ``pid`` for exit; False if it is already gone."""
        assert self.epoll is not None
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return False
        with self.mutex:
            self.watched[fd] = proc
        if proc is not None:
            proc.pidfd = fd
        self.epoll.register(fd, select.EPOLLIN)
        return True

    def monitor(self) -> None:
        """One thread: block until a watched process exits, then clean up after it."""
        assert self.epoll is not None
        while True:
            for fd, _ in self.epoll.poll():
                with self.mutex:
                    if fd not in self.watched:
                        continue
                    proc = self.watched.pop(fd)
                self.epoll.unregister(fd)
                os.close(fd)
                if proc is None:  # the process that started the manager is gone
                    self.stop.set()
                    return
                self.bury(proc)

    def bury(self, proc: _Proc) -> None:
        """``proc`` died: release its LIVE holds, withdraw its queued waits."""
        with self.mutex:
            if proc.dead:
                return
            proc.dead = True
            if self.procs.get(proc.pid) is proc:
                del self.procs[proc.pid]
            for hold in list(proc.holds.values()):
                if hold.phase == _LIVE:
                    self._drop(hold)
                    hold.table.release(hold.key, hold)
                else:  # PENDING: the thread serving it finishes it (it sees void)
                    self._void(hold)

    # -- connections ----------------------------------------------------------

    def accept_forever(self) -> None:
        """Accept connections, and nothing else that could block.

        A connection of another user is closed at once, before any handshake;
        the others are handed to a thread of their own, which has until
        :data:`HANDSHAKE_TIMEOUT` from now to complete the handshake.
        """
        me = os.geteuid()
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:  # closed by shutdown, or out of descriptors for a moment
                if self.stop.wait(0.01):
                    return
                continue
            deadline = monotonic() + HANDSHAKE_TIMEOUT
            try:
                uid = peer_uid(sock)
            except OSError:
                uid = -1
            if uid is not None and uid != me:
                sock.close()
                continue
            try:
                threading.Thread(
                    target=self.serve_connection, args=(sock, deadline), daemon=True
                ).start()
            except RuntimeError:  # no thread to serve it with
                sock.close()

    def handshake(self, sock: socket.socket, deadline: float) -> _Conn | None:
        """The manager's side of the handshake, by ``deadline`` (else NoAnswer).

        None if the client does not prove the authkey (it is told so by an
        empty message). Nothing the client sends is unpickled here.
        """
        fd = sock.fileno()
        ours = os.urandom(_NONCE)
        send_frame_by(sock, ours, deadline)
        if _recv_exact(fd, len(_HELLO_HEADER), deadline) != _HELLO_HEADER:
            return None
        hello = _recv_exact(fd, _HELLO_SIZE, deadline)
        proof, theirs, pid = hello[:_PROOF], hello[_PROOF : _PROOF + _NONCE], hello[-_NUMBER.size :]
        if not hmac.compare_digest(proof, _proof(self.authkey, b"client", ours, theirs, pid)):
            send_frame_by(sock, b"", deadline)
            return None
        state = self.admit(_NUMBER.unpack(pid)[0])
        try:
            conn_id = _NUMBER.pack(state.id)
            send_frame_by(
                sock, _proof(self.authkey, b"server", ours, theirs, conn_id) + conn_id, deadline
            )
        except BaseException:
            self._closed(state)
            raise
        return state

    def admit(self, pid: int) -> _Conn:
        """Register a new connection of the process ``pid`` (watched from its first one)."""
        if pid <= 0:
            raise ValueError(f"bad process id {pid}")
        with self.mutex:
            proc = self.procs.get(pid)
            fresh = proc is None
            if proc is None:
                proc = self.procs[pid] = _Proc(pid)
            proc.conns += 1
            state = _Conn(self.next_conn, proc)
            self.next_conn += 1
            self.conns[state.id] = state
        if fresh and self.epoll is not None:
            try:
                alive = self._watch(pid, proc)
            except BaseException:
                self._closed(state)
                raise
            if not alive:
                self.bury(proc)
        return state

    def serve_connection(self, sock: socket.socket, deadline: float) -> None:
        """Serve one connection: the handshake (by ``deadline``), then one request, one reply,
        until it closes."""
        try:
            state = self.handshake(sock, deadline)
        except Exception:  # too slow (NoAnswer), gone, or garbage
            state = None
        if state is None:
            sock.close()
            return
        handlers = self.handlers
        fd = sock.fileno()
        loads = pickle.loads
        dumps = pickle.dumps
        try:
            while True:
                try:
                    data = recv_frame(fd)
                except (EOFError, OSError):
                    return
                state.granted = None
                try:
                    request = loads(data)
                except Exception as exc:
                    reply: tuple[bool, object] = (False, _unpickle_error(exc))
                else:
                    try:
                        reply = (True, handlers[request[0]](state, *request[1:]))
                    except Exception as exc:
                        reply = (False, exc)
                try:
                    out = dumps(reply, pickle.HIGHEST_PROTOCOL)
                except Exception as exc:  # an exception that cannot be pickled
                    out = dumps((False, RuntimeError(repr(exc))), pickle.HIGHEST_PROTOCOL)
                try:
                    send_frame(fd, out)
                except OSError:  # the client gave up waiting (or died): nobody has the reply
                    self.undelivered(state)
                    return
        finally:
            sock.close()
            self._closed(state)

    def undelivered(self, state: _Conn) -> None:
        """The reply granting ``state.granted`` never reached its client: hand the key on."""
        hold = state.granted
        state.granted = None
        if hold is None:
            return
        with self.mutex:
            if hold.phase == _LIVE:  # not released meanwhile (by release(key), or a death)
                self._drop(hold)
                hold.table.release(hold.key, hold)

    def _closed(self, state: _Conn) -> None:
        proc = state.proc
        with self.mutex:
            del self.conns[state.id]
            proc.conns -= 1
            orphaned = proc.conns == 0 and proc.pidfd is None and self.epoll is None
        if orphaned:
            self.bury(proc)

    # -- shared helpers (under the mutex) ---------------------------------------

    def _drop(self, hold: _RemoteHold) -> None:
        """Under the mutex: ``hold`` leaves the bookkeeping; the caller releases it."""
        hold.phase = _GONE
        hold.proc.holds.pop(hold.serial, None)

    @staticmethod
    def _void(hold: _RemoteHold) -> None:
        """Under the mutex: nobody wants ``hold`` any more; withdraw it if it is queued."""
        hold.void = True
        if hold.table.withdraw(hold.key, hold) == WAITING:
            hold._wake()

    def _register(self, state: _Conn, hold: _RemoteHold) -> bool:
        """Under the mutex: False if the request was cancelled before it arrived."""
        if state.proc.dead or state.cancelled == hold.serial:
            state.cancelled = None
            return False
        return True

    def _table(self, tid: int) -> KeyTable:
        try:
            return self.tables[tid]
        except (IndexError, TypeError):
            raise ValueError(f"no lock or single-flight object with id {tid!r}") from None

    def _wait(self, hold: _RemoteHold, timeout: float | None) -> int:
        """Park this thread until ``hold`` (registered, PENDING) is decided."""
        try:
            return wait_thread(hold.table, hold.key, hold, timeout)
        except BaseException:
            with self.mutex:
                self._drop(hold)
            raise

    # -- creating objects -----------------------------------------------------

    def new_lock(self, state: _Conn, max_waiters: int | None) -> int:
        with self.mutex:
            self.tables.append(_LockTable(max_waiters))
            return len(self.tables) - 1

    def new_flight(self, state: _Conn, ttl: float) -> int:
        with self.mutex:
            self.tables.append(_FlightTable(ttl))
            return len(self.tables) - 1

    # -- locks ----------------------------------------------------------------

    def acquire(
        self, state: _Conn, tid: int, key: Hashable, owner: int, serial: int, timeout: float | None
    ) -> object:
        """Take ``key``, waiting up to ``timeout`` (None: forever, 0: try once)."""
        table = self._table(tid)
        hold = _RemoteHold(state.proc, owner, serial, table, key)
        with self.mutex:
            if not self._register(state, hold):
                return Reply.CANCELLED
            holder = table.take(key, hold)
            if holder is hold:
                hold.phase = _LIVE
                state.proc.holds[serial] = hold
                state.granted = hold
                return Reply.GRANTED
            if holder._owner == hold._owner and timeout != 0:
                raise reacquire_error(key)
            if timeout == 0:
                return Reply.BUSY
            state.proc.holds[serial] = hold
        decided = self._wait(hold, timeout)
        with self.mutex:
            if decided == GRANTED:
                state.granted = hold
                return self._granted(hold)
            self._drop(hold)
            if decided == ABORTED:
                return (Reply.ABORTED, outcome_of(hold))
            return Reply.CANCELLED if hold.void else Reply.BUSY

    def _granted(self, hold: _RemoteHold) -> int:
        """Under the mutex: report a granted PENDING hold, unless it is void."""
        if hold.void:
            if hold.phase != _GONE:
                self._drop(hold)
                hold.table.release(hold.key, hold)
            return Reply.CANCELLED
        if hold.phase == _GONE:  # released by release(key) in the meantime
            return Reply.GRANTED
        hold.phase = _LIVE
        return Reply.GRANTED

    def release(
        self, state: _Conn, tid: int, key: Hashable, serial: int | None, abort: bytes | None
    ) -> None:
        """Release ``key``: the caller's own hold ``serial``, or whoever holds it (None)."""
        table = self._table(tid)
        with self.mutex:
            if serial is None:
                holder = table.holder(key)
                if holder is None:
                    raise RuntimeError(f"release of key {key!r}, which is not held")
            else:
                holder = state.proc.holds.get(serial)
                if holder is None or holder.phase != _LIVE or holder.table is not table:
                    raise RuntimeError(
                        f"this hold of key {key!r} was already released by another caller; "
                        "the key is now held by someone else or free, and is left alone"
                    )
            assert isinstance(holder, _RemoteHold)
            self._drop(holder)
            table.release(key, holder, abort)

    def locked(self, state: _Conn, tid: int, key: Hashable) -> bool:
        return self._table(tid).locked(key)

    def waiters(self, state: _Conn, tid: int, key: Hashable) -> int:
        return self._table(tid).waiters(key)

    def length(self, state: _Conn, tid: int) -> int:
        return len(self._table(tid))

    def cancel(self, state: _Conn, conn_id: int, serial: int, give_back: bool) -> None:
        """Withdraw the request ``serial`` sent on the connection ``conn_id``.

        A waiting request is withdrawn (its thread answers CANCELLED, giving
        back a grant that races with this). With ``give_back``, what it was
        already granted is released here and now, reported or not: its
        client will not use it. One that has not arrived yet (it travels on
        another connection) is refused when it does.
        """
        with self.mutex:
            proc = state.proc
            target = self.conns.get(conn_id)
            if target is not None and target.proc is not proc:
                return
            hold = proc.holds.get(serial)
            if hold is None:
                if target is not None:
                    target.cancelled = serial
            elif hold.phase == _PENDING:
                self._void(hold)
                if give_back and hold.table.holder(hold.key) is hold:  # granted, unreported
                    self._drop(hold)
                    hold.table.release(hold.key, hold)
            elif give_back and hold.phase == _LIVE:
                self._drop(hold)
                hold.table.release(hold.key, hold)

    # -- single-flight ----------------------------------------------------------

    def join(
        self, state: _Conn, fid: int, key: Hashable, owner: int, serial: int, wait: bool
    ) -> object:
        """Lead the call for ``key`` or, if ``wait``, wait for its outcome."""
        table = self._table(fid)
        assert isinstance(table, FlightTable)
        if table.ttl:
            kept = table.cached(key, monotonic())
            if kept is not MISS:
                return (Reply.OUTCOME, (False, kept))
        hold = _RemoteHold(state.proc, owner, serial, table, key)
        with self.mutex:
            if not self._register(state, hold):
                return Reply.CANCELLED
            leader = table.take(key, hold)
            if leader is hold:
                hold.phase = _LIVE
                state.proc.holds[serial] = hold
                state.granted = hold
                return Reply.LEAD
            if leader._owner == hold._owner:
                raise RuntimeError(
                    f"the call for key {key!r} is being run by this same task or thread; "
                    "joining it from inside would wait for itself forever"
                )
            if not wait:
                return Reply.BUSY
            state.proc.holds[serial] = hold
        decided = self._wait(hold, None)
        with self.mutex:
            if decided == ABORTED:
                self._drop(hold)
                return (Reply.OUTCOME, outcome_of(hold))
            if decided != GRANTED:
                self._drop(hold)
                return Reply.CANCELLED
            if hold.void:
                if hold.phase != _GONE:
                    self._drop(hold)
                    table.release(key, hold)  # the next follower takes over
                return Reply.CANCELLED
            # Took over from a leader that gave up (or died).
            if table.ttl:
                kept = table.cached(key, monotonic())
                if kept is not MISS:
                    self._drop(hold)
                    table.finish(key, hold, (False, kept), MISS, 0.0)
                    return (Reply.OUTCOME, (False, kept))
            hold.phase = _LIVE
            state.granted = hold
            return Reply.LEAD

    def _leader(self, state: _Conn, table: KeyTable, key: Hashable, serial: int) -> _RemoteHold:
        """Under the mutex: the LIVE leader hold ``serial`` of this process, dropped."""
        hold = state.proc.holds.get(serial)
        if hold is None or hold.phase != _LIVE or hold.table is not table:
            raise RuntimeError(f"no call in flight for key {key!r} is led by this caller")
        self._drop(hold)
        return hold

    def finish(
        self,
        state: _Conn,
        fid: int,
        key: Hashable,
        serial: int,
        is_error: bool,
        payload: bytes,
    ) -> bool:
        """The leader's call ended; True if the outcome went to any follower."""
        table = self._table(fid)
        assert isinstance(table, FlightTable)
        with self.mutex:
            hold = self._leader(state, table, key, serial)
            value: object = MISS if is_error else payload
            return table.finish(key, hold, (is_error, payload), value, monotonic())

    def abandon(self, state: _Conn, fid: int, key: Hashable, serial: int) -> None:
        """The leader gave up without an outcome: the earliest follower takes over."""
        table = self._table(fid)
        with self.mutex:
            hold = self._leader(state, table, key, serial)
            table.release(key, hold)

    def forget(self, state: _Conn, fid: int, key: Hashable) -> None:
        table = self._table(fid)
        assert isinstance(table, FlightTable)
        with self.mutex:
            table.forget(key)

    # -- lifetime ---------------------------------------------------------------

    def shutdown(self, state: _Conn) -> None:
        self.stop.set()


def _unpickle_error(exc: Exception) -> TypeError:
    return TypeError(
        "the KeyedLockManager process could not unpickle a request (keys must be "
        f"picklable, and their classes importable in the manager process): {exc!r}"
    )


def _open_epoll() -> select.epoll | None:
    """An epoll object if this platform has pidfds, else None (watch connections instead)."""
    if not hasattr(os, "pidfd_open") or not hasattr(select, "epoll"):
        return None
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # a kernel without pidfd_open
        return None
    return select.epoll()


def serve(ready: Connection, parent: int, address: str) -> None:
    """Run a manager server until it is shut down or ``parent`` exits.

    Listens at ``address`` (a path from :func:`make_socket_path`; the socket
    file and its directory are removed on the way out) and sends the address
    through ``ready`` once it accepts connections. Clients authenticate with
    this process's ``authkey``, inherited from ``parent`` like every other
    process started from it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    try:
        listener = _listen(address)
        try:
            server = _Server(listener, parent, bytes(current_process().authkey))
            if server.epoll is not None:
                threading.Thread(target=server.monitor, name="monitor", daemon=True).start()
            threading.Thread(target=server.accept_forever, name="accept", daemon=True).start()
            ready.send(address)
            ready.close()
            server.stop.wait()
        finally:
            listener.close()
    finally:
        remove_socket_path(address)


# -- client side ------------------------------------------------------------------

#: Serials of this process's key-taking requests (unique per process; per pid on the server).
next_serial: Final = itertools.count(1).__next__

_HIGHEST: Final = pickle.HIGHEST_PROTOCOL


class _Link:
    """One authenticated connection and the id the server gave it."""

    __slots__ = ("closed", "fd", "id", "sock")

    def __init__(self, sock: socket.socket, conn_id: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.id = conn_id
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.sock.close()

    def exchange(self, data: bytes, deadline: float | None) -> bytes:
        """Send a request, return its reply; NoAnswer (and closed) if none came by ``deadline``."""
        if deadline is None:
            send_frame(self.fd, data)
            return recv_frame(self.fd)
        try:
            send_frame_by(self.sock, data, deadline)
            return recv_frame_by(self.fd, deadline)
        except NoAnswer:
            return self.give_up()

    def give_up(self) -> bytes:
        """Close this connection so no reply can reach it any more; a reply that came is kept.

        Shutting the reading side is the instant that decides (Linux): a reply
        the manager wrote before it is whole in the socket and returned here; a
        write after it fails in the manager, which releases what the reply
        granted. So a key is never held for a caller that does not know it.
        NoAnswer if no whole reply came.
        """
        try:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)
            try:
                return recv_frame_by(self.fd, monotonic())  # only what has arrived
            except (EOFError, OSError) as exc:
                raise NoAnswer from exc
        finally:
            self.close()


def _unpack(raw: bytes) -> Any:
    ok, value = pickle.loads(raw)
    if ok:
        return value
    raise value


class Client:
    """This process's connections to one manager: one request in flight per connection."""

    __slots__ = ("address", "idle")

    def __init__(self, address: str) -> None:
        self.address = address
        self.idle: list[_Link] = []

    def gone(self, exc: BaseException) -> ConnectionError:
        return ConnectionError(
            f"lost the connection to the KeyedLockManager at {self.address!r} "
            f"(it was shut down, or its process died): {exc!r}"
        )

    def take(self, deadline: float | None = None) -> _Link:
        """An idle connection, or a new one (``list.pop`` is atomic: no lock needed).

        Connecting and the handshake end by ``deadline`` (NoAnswer).
        """
        try:
            return self.idle.pop()
        except IndexError:
            pass
        try:
            sock = _open(self.address, deadline)
        except OSError as exc:
            raise self.gone(exc) from exc
        try:
            conn_id = _greet(sock, deadline)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, _Refused):
                raise ConnectionError(
                    f"could not connect to the KeyedLockManager at {self.address!r}: {exc}"
                ) from None
            if isinstance(exc, (OSError, EOFError)):
                raise self.gone(exc) from exc
            raise
        return _Link(sock, conn_id)

    def call(self, request: tuple[object, ...], deadline: float | None = None) -> Any:
        """One round trip for a request the manager answers at once (NoAnswer by ``deadline``)."""
        data = dumps_request(request)
        link = self.take(deadline)
        try:
            raw = link.exchange(data, deadline)
        except BaseException as exc:
            link.close()
            if isinstance(exc, (OSError, EOFError)):
                raise self.gone(exc) from exc
            raise
        if not link.closed:
            self.idle.append(link)
        return _unpack(raw)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


def dumps_request(request: tuple[object, ...]) -> bytes:
    try:
        return pickle.dumps(request, _HIGHEST)
    except Exception as exc:
        key = request[2] if len(request) > 2 else None
        raise TypeError(
            f"key {key!r} cannot be sent to the KeyedLockManager: keys must be picklable ({exc})"
        ) from exc


class Wait:
    """A request that takes a key (ACQUIRE, JOIN): its reply is never lost.

    ``run()`` sends it and blocks this thread for the reply (one round trip,
    however long the manager makes it wait). ``cancel()``, from any thread,
    withdraws it at the manager; ``run()`` then returns promptly with
    CANCELLED, or with what was granted before the cancel arrived: the
    canceller passes that reply to ``undo`` (release the key, hand the call
    on). If ``run()`` itself is interrupted (KeyboardInterrupt), it cancels,
    undoes and re-raises. With a ``deadline`` (:func:`deadline_for`),
    ``run()`` returns NO_ANSWER if the manager has not answered by then; the
    manager then releases whatever it grants to the request.
    """

    __slots__ = (
        "cancelled",
        "client",
        "conn_id",
        "deadline",
        "guard",
        "request",
        "serial",
        "undo",
    )

    def __init__(
        self,
        client: Client,
        request: tuple[object, ...],
        serial: int,
        undo: Callable[[object], None],
        deadline: float | None = None,
    ) -> None:
        self.client = client
        self.request = request
        self.serial = serial
        self.undo = undo
        self.deadline = deadline
        self.guard = threading.Lock()
        self.conn_id: int | None = None
        self.cancelled = False

    def run(self) -> object:
        client = self.client
        data = dumps_request(self.request)
        deadline = self.deadline
        try:
            link = client.take(deadline)
        except NoAnswer:
            return Reply.NO_ANSWER
        with self.guard:
            if self.cancelled:
                client.idle.append(link)
                return Reply.CANCELLED
            self.conn_id = link.id
        try:
            raw = link.exchange(data, deadline)
        except NoAnswer:
            return Reply.NO_ANSWER
        except BaseException as exc:
            if isinstance(exc, (OSError, EOFError)):
                link.close()
                raise client.gone(exc) from exc
            self._leave(link)  # interrupted, before or after the request left
            raise
        if not link.closed:
            client.idle.append(link)
        return _unpack(raw)

    def _leave(self, link: _Link) -> None:
        """Nobody will read the reply: leave nothing behind in the manager.

        Once the connection is shut, the manager can deliver nothing more on
        it (and releases what it grants from then on). A reply that came
        before is undone; else the request, maybe still queued, is withdrawn.
        """
        try:
            raw = link.give_up()
        except NoAnswer:
            self.cancel(give_back=True)
            return
        with contextlib.suppress(Exception):
            self.undo(_unpack(raw))

    def cancel(self, give_back: bool = False) -> None:
        """Withdraw the request at the manager (from any thread; errors are ignored).

        ``run()`` then returns CANCELLED, or the reply the manager sent before
        the cancel arrived. ``give_back``: release a grant that was already
        reported too (only for a caller that will never read the reply).
        Waits for the manager no longer than the request's deadline: ``run()``
        gives up by then too.
        """
        with self.guard:
            self.cancelled = True
            conn_id = self.conn_id
        if conn_id is None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError, NoAnswer):
            self.client.call((CANCEL, conn_id, self.serial, give_back), self.deadline)


_clients: dict[str, Client] = {}


def client_for(address: str) -> Client:
    """This process's :class:`Client` for the manager at ``address``."""
    client = _clients.get(address)
    if client is None:
        client = _clients.setdefault(address, Client(address))
    return client


def drop_client(address: str) -> None:
    """Close this process's idle connections to a manager that is shutting down."""
    client = _clients.pop(address, None)
    if client is not None:
        client.close()


def _forget_clients() -> None:
    # A forked child must not use its parent's connections (the server knows them as the
    # parent's): it starts with no client. Closing its copies leaves the parent's open.
    for client in _clients.values():
        client.close()
    _clients.clear()


if hasattr(os, "register_at_fork"):  # no fork (nor a manager: see start()) on Windows
    os.register_at_fork(after_in_child=_forget_clients)
