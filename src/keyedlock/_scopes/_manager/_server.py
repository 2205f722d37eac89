"""The manager process: it listens, admits connections, serves requests, watches processes.

:func:`serve` runs in the process :class:`~keyedlock.multiprocessing.KeyedLockManager`
starts. The accepting thread only accepts (and closes another user's
connection at once); the handshake runs in the connection's own thread and
must be done within :data:`HANDSHAKE_TIMEOUT`, so a peer that says nothing
(or garbage) stalls nobody.

**Deadlines.** A request with a ``timeout`` (ACQUIRE) carries it here, and
the manager answers when it elapses; the client waits no longer than that
plus a grace. A client that gave up shuts its connection: a reply written
after that fails, and the manager releases what the reply granted
(:meth:`Server.undelivered`). A request still queued when its client gives
up ends with its own timeout.

**Crashes.** Every client process is watched through a pidfd (Linux): one
monitor thread blocks in ``epoll`` on all of them and learns of a death at
once, zombie or not. The dead process's LIVE holds are released (handed on
FIFO; a single-flight leader's call passes to its earliest follower) and its
queued waits withdrawn. Where pidfds are unavailable, a process counts as
dead when its last connection closes. The manager also exits when the
process that started it dies.
"""

from __future__ import annotations

import hmac
import os
import pickle
import select
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing import current_process
from multiprocessing.connection import Connection
from time import monotonic
from typing import Any, Final

from ..._ki import internal
from ._protocol import REQUESTS, encode_reply
from ._records import LIVE, Conn, Proc
from ._service import Service
from ._transport import (
    HELLO_HEADER,
    HELLO_SIZE,
    NONCE,
    NUMBER,
    PROOF,
    listen,
    peer_uid,
    proof,
    recv_exact,
    recv_frame,
    remove_socket_path,
    send_frame,
    send_frame_by,
)

__all__ = ["HANDSHAKE_TIMEOUT", "serve"]

#: Seconds a new connection has to complete its handshake; a peer that has not by then is
#: disconnected. A client needs about a millisecond (its pid and two HMACs).
HANDSHAKE_TIMEOUT: Final = 5.0


@internal
class Server(Service):
    """All state of one manager process."""

    def __init__(self, listener: socket.socket, parent: int, authkey: bytes) -> None:
        super().__init__()
        self.listener = listener
        self.authkey = authkey
        self.stop = threading.Event()
        self.next_conn = 1
        self.watched: dict[int, Proc | None] = {}  # pidfd -> process (None: the parent)
        self.epoll = _open_epoll()
        # Every request the protocol declares, served by the method it names.
        self.handlers: dict[int, Callable[..., Any]] = {
            code: getattr(self, request.handler) for code, request in REQUESTS.items()
        }
        if self.epoll is not None and not self._watch(parent, None):
            self.stop.set()  # the process that started the manager is already gone

    # -- process watching ---------------------------------------------------

    def _watch(self, pid: int, proc: Proc | None) -> bool:
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

    def handshake(self, sock: socket.socket, deadline: float) -> Conn | None:
        """The manager's side of the handshake, by ``deadline`` (else NoAnswer).

        None if the client does not prove the authkey (it is told so by an
        empty message). Nothing the client sends is unpickled here.
        """
        fd = sock.fileno()
        ours = os.urandom(NONCE)
        send_frame_by(sock, ours, deadline)
        if recv_exact(fd, len(HELLO_HEADER), deadline) != HELLO_HEADER:
            return None
        hello = recv_exact(fd, HELLO_SIZE, deadline)
        given, theirs, pid = hello[:PROOF], hello[PROOF : PROOF + NONCE], hello[-NUMBER.size :]
        if not hmac.compare_digest(given, proof(self.authkey, b"client", ours, theirs, pid)):
            send_frame_by(sock, b"", deadline)
            return None
        state = self.admit(NUMBER.unpack(pid)[0])
        try:
            conn_id = NUMBER.pack(state.id)
            send_frame_by(
                sock, proof(self.authkey, b"server", ours, theirs, conn_id) + conn_id, deadline
            )
        except BaseException:
            self._closed(state)
            raise
        return state

    def admit(self, pid: int) -> Conn:
        """Register a new connection of the process ``pid`` (watched from its first one)."""
        if pid <= 0:
            raise ValueError(f"bad process id {pid}")
        with self.mutex:
            proc = self.procs.get(pid)
            fresh = proc is None
            if proc is None:
                proc = self.procs[pid] = Proc(pid)
            proc.conns += 1
            state = Conn(self.next_conn, proc)
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
                    out = encode_reply(False, _unpickle_error(exc))
                else:
                    try:
                        out = encode_reply(True, handlers[request[0]](state, *request[1:]))
                    except Exception as exc:
                        out = encode_reply(False, exc)
                try:
                    send_frame(fd, out)
                except OSError:  # the client gave up waiting (or died): nobody has the reply
                    self.undelivered(state)
                    return
                # Kept by nobody while the connection waits for its next request, maybe for
                # long: a single-flight value or error of any size is gone with its call.
                data = out = b""
                request = None
                self.delivered(state)
        finally:
            sock.close()
            self._closed(state)

    @staticmethod
    def delivered(state: Conn) -> None:
        """The reply to ``state``'s request reached its client: what it granted is known."""
        hold = state.granted
        if hold is not None:
            hold.delivering = False

    def undelivered(self, state: Conn) -> None:
        """The reply granting ``state.granted`` never reached its client: hand the key on."""
        hold = state.granted
        state.granted = None
        if hold is None:
            return
        with self.mutex:
            if hold.phase == LIVE:  # not released meanwhile (by release(key), or a death)
                hold.drop()
                hold.table.release(hold.key, hold)

    def _closed(self, state: Conn) -> None:
        proc = state.proc
        with self.mutex:
            del self.conns[state.id]
            proc.conns -= 1
            orphaned = proc.conns == 0 and proc.pidfd is None and self.epoll is None
        if orphaned:
            self.bury(proc)

    # -- lifetime ---------------------------------------------------------------

    def shutdown(self, state: Conn) -> None:
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


def _raise_descriptor_limit() -> None:
    """Let the manager open as many descriptors as it may (its hard limit): it keeps one
    connection for each caller waiting for a key, in every process."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard  # (Linux's fs.nr_open)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    except (ImportError, OSError, ValueError):  # no such limit here, or not allowed
        pass


def serve(ready: Connection, parent: int, address: str) -> None:
    """Run a manager server until it is shut down or ``parent`` exits.

    Listens at ``address`` (a path from :func:`make_socket_path`; the socket
    file and its directory are removed on the way out) and sends the address
    through ``ready`` once it accepts connections. Clients authenticate with
    this process's ``authkey``, inherited from ``parent`` like every other
    process started from it.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent to handle
    _raise_descriptor_limit()
    try:
        listener = listen(address)
        try:
            server = Server(listener, parent, bytes(current_process().authkey))
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
