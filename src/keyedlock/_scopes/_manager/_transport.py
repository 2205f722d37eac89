"""The manager's transport: framed messages with deadlines, its socket, and the handshake.

Messages are framed as by :class:`~multiprocessing.connection.Connection`: a
4-byte big-endian length, then the payload (read with one system call when
it comes whole, see :func:`recv_frame`); one request is in flight per
connection. The ``*_by`` functions give up (:class:`NoAnswer`) at a deadline.

**Who can connect.** The socket is a file in a directory of its own, made
private (mode 0700) by :func:`make_socket_path` and removed when the manager
stops: other users cannot reach it. The server also checks the uid of the
connecting process (:func:`peer_uid`) and closes another user's connection
at once.

**The handshake** proves the ``authkey`` both ways before anything is
unpickled: the manager sends a nonce; the client answers with an
HMAC-SHA256, keyed with the authkey, over both nonces and its pid (plus its
own nonce and pid); the manager answers with its own HMAC and the
connection's id, or with an empty message (refused).
"""

from __future__ import annotations

import contextlib
import errno
import hmac
import math
import os
import select
import socket
import stat
import struct
import sys
import tempfile
import threading
import time
from multiprocessing import current_process
from time import monotonic
from typing import Final

from ..._ki import internal

__all__ = [
    "HELLO_HEADER",
    "HELLO_SIZE",
    "MAX_MESSAGE",
    "NONCE",
    "NUMBER",
    "PROOF",
    "REPLY_GRACE",
    "NoAnswer",
    "Refused",
    "deadline_for",
    "greet",
    "listen",
    "make_socket_path",
    "open_socket",
    "peer_uid",
    "proof",
    "recv_exact",
    "recv_frame",
    "recv_frame_by",
    "remove_socket_path",
    "send_frame",
    "send_frame_by",
]

#: Seconds a client waits for the reply to a request with a ``timeout`` beyond that timeout
#: before it gives up. The manager answers when the timeout elapses; only a manager that is
#: stopped or stuck lets the grace run out.
REPLY_GRACE: Final = 1.0

# -- framing ------------------------------------------------------------------

_HEADER: Final = struct.Struct("!i")  # a big-endian length, as Connection.send_bytes writes
_CHUNK: Final = 16384
#: The longest message (what the length header can say).
MAX_MESSAGE = 0x7FFFFFFF


def send_frame(fd: int, payload: bytes) -> None:
    """Write one message (length header and payload, one system call when it fits)."""
    if len(payload) > MAX_MESSAGE:
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
    if len(payload) > MAX_MESSAGE:
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


def recv_exact(fd: int, size: int, deadline: float) -> bytes:
    """Exactly ``size`` bytes (never more: a peer may be sending garbage), by ``deadline``."""
    buf = bytearray()
    while len(buf) < size:
        _ready(fd, select.POLLIN, deadline)
        more = os.read(fd, size - len(buf))
        if not more:
            raise EOFError("connection closed")
        buf += more
    return bytes(buf)


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


def listen(path: str) -> socket.socket:
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


def open_socket(address: str, deadline: float | None) -> socket.socket:
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

NONCE: Final = 32
PROOF: Final = 32  # an HMAC-SHA256
NUMBER: Final = struct.Struct("!q")  # a pid, a connection id
#: The client's message: its proof, its nonce, its pid.
HELLO_SIZE: Final = PROOF + NONCE + NUMBER.size
HELLO_HEADER: Final = _HEADER.pack(HELLO_SIZE)


def proof(authkey: bytes, role: bytes, *fields: bytes) -> bytes:
    """The HMAC-SHA256 of ``fields`` (fixed sizes), for one side of the handshake."""
    return hmac.new(authkey, b"keyedlock-manager " + role + b"".join(fields), "sha256").digest()


class Refused(Exception):
    """The manager refused this process's proof, or did not prove the key itself."""


@internal
def greet(sock: socket.socket, deadline: float | None) -> int:
    """The client's side of the handshake; returns the connection's id."""
    fd = sock.fileno()
    authkey = bytes(current_process().authkey)
    theirs = recv_frame(fd) if deadline is None else recv_frame_by(fd, deadline)
    ours = os.urandom(NONCE)
    pid = NUMBER.pack(os.getpid())
    hello = proof(authkey, b"client", theirs, ours, pid) + ours + pid
    if deadline is None:
        send_frame(fd, hello)
        answer = recv_frame(fd)
    else:
        send_frame_by(sock, hello, deadline)
        answer = recv_frame_by(fd, deadline)
    if not answer:
        raise Refused(
            "it refused this process, which does not have the authkey of the process that "
            "started the manager (multiprocessing.current_process().authkey, inherited by the "
            "processes it starts)"
        )
    conn_id = answer[PROOF:]
    if len(answer) != PROOF + NUMBER.size or not hmac.compare_digest(
        answer[:PROOF], proof(authkey, b"server", theirs, ours, conn_id)
    ):
        raise Refused("it did not prove that it knows this process's authkey")
    number: int = NUMBER.unpack(conn_id)[0]
    return number


# -- holds ------------------------------------------------------------------
