"""The manager's client side: this process's connections to a manager.

Each process keeps, per manager, a pool of idle connections (:class:`Client`):
a request borrows one, so concurrent requests of one process (threads,
helper threads of async callers) never share one, and a connection is reused
by the next request. After ``fork`` the child starts with an empty pool
(never the parent's connections). A request that takes a key is a
:class:`~._wait.Wait`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import socket
import threading
from time import monotonic
from typing import Any, Final

from ..._core import guard_is_owned
from ..._ki import internal
from ._protocol import unpack_reply
from ._transport import (
    NoAnswer,
    Refused,
    greet,
    open_socket,
    recv_frame,
    recv_frame_by,
    send_frame,
    send_frame_by,
)

__all__ = [
    "IDLE_LIMIT",
    "Client",
    "Link",
    "OutOfDescriptors",
    "client_for",
    "drop_client",
    "next_serial",
]

#: Idle connections a process keeps per manager (each is a descriptor here and a thread in
#: the manager); more are closed as they come back, after a burst of waiters.
IDLE_LIMIT: Final = 16

#: Serials of this process's key-taking requests (unique per process; per pid on the server).
next_serial: Final = itertools.count(1).__next__


@internal
class Link:
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
        NoAnswer if no whole reply came, or if it was closed already (a repeat, after an
        interrupt: its descriptor number may be another connection's by now).
        """
        if self.closed:
            raise NoAnswer("the connection was closed already")
        try:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)
            try:
                return recv_frame_by(self.fd, monotonic())  # only what has arrived
            except (EOFError, OSError) as exc:
                raise NoAnswer from exc
        finally:
            self.close()


class OutOfDescriptors(ConnectionError):
    """No file descriptor is left in this process to open another connection."""


@internal
class Client:
    """This process's connections to one manager: one request in flight per connection.

    Each caller waiting for a key holds a connection (the manager answers
    when it grants the key), so many waiters take many descriptors. So that
    what ends a wait (a release, a call's outcome, a cancel: requests the
    manager answers at once) still gets through when none is left, one
    connection is kept aside as the *reserve*, used only then, by one
    request at a time. Idle connections beyond :data:`IDLE_LIMIT` are closed
    as they come back.
    """

    __slots__ = ("address", "closed", "idle", "reserve", "reserve_guard")

    def __init__(self, address: str) -> None:
        self.address = address
        self.idle: list[Link] = []
        self.reserve: Link | None = None
        self.reserve_guard = threading.RLock()  # (it knows its owner: see _let_go)
        #: Set by :meth:`close` (the manager shuts down, or a fork child drops its parent's):
        #: a connection given back later is closed, not kept.
        self.closed = False

    def gone(self, exc: BaseException) -> ConnectionError:
        return ConnectionError(
            f"lost the connection to the KeyedLockManager at {self.address!r} "
            f"(it was shut down, or its process died): {exc!r}"
        )

    def take(self, deadline: float | None = None) -> Link:
        """An idle connection, or a new one (``list.pop`` is atomic: no lock needed).

        Connecting and the handshake end by ``deadline`` (NoAnswer).
        OutOfDescriptors if this process has no descriptor left for a new one.
        """
        try:
            return self.idle.pop()
        except IndexError:
            pass
        try:
            sock = open_socket(self.address, deadline)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise OutOfDescriptors(
                    f"cannot open another connection to the KeyedLockManager at "
                    f"{self.address!r}: no file descriptor is left ({exc}). Each caller "
                    "waiting for a manager's key holds one connection: raise the limit "
                    "(ulimit -n) or let fewer callers wait at once"
                ) from exc
            raise self.gone(exc) from exc
        try:
            conn_id = greet(sock, deadline)
        except BaseException as exc:
            sock.close()
            if isinstance(exc, Refused):
                raise ConnectionError(
                    f"could not connect to the KeyedLockManager at {self.address!r}: {exc}"
                ) from None
            if isinstance(exc, (OSError, EOFError)):
                raise self.gone(exc) from exc
            raise
        return Link(sock, conn_id)

    def give_back(self, link: Link) -> None:
        """Keep a connection that served a request: as the reserve if there is none, else
        idle (up to :data:`IDLE_LIMIT`), else close it."""
        if link.closed:
            return
        if self.reserve is None and self._keep_as_reserve(link):
            return
        if len(self.idle) < IDLE_LIMIT:
            self.idle.append(link)
        else:
            link.close()
        if self.closed:  # (closed meanwhile: whichever of the two comes second closes it)
            self.close()

    def _keep_as_reserve(self, link: Link) -> bool:
        """Make ``link`` the reserve if there is none (and this client is not closed)."""
        guard = self.reserve_guard
        try:
            guard.acquire()  # (inside the try: an interrupt right after it still lets go)
            if self.reserve is not None or self.closed:
                return False
            self.reserve = link
            return True
        finally:
            _let_go(guard)

    def call(self, data: bytes, deadline: float | None = None) -> Any:
        """One round trip for a request (``encode``-d) the manager answers at once (NoAnswer
        by ``deadline``); on the reserve if no descriptor is left for a connection."""
        try:
            link = self.take(deadline)
        except OutOfDescriptors as exc:
            return self._call_on_reserve(data, deadline, exc)
        raw = self._exchange(link, data, deadline)
        self.give_back(link)
        return unpack_reply(raw)

    def _exchange(self, link: Link, data: bytes, deadline: float | None) -> bytes:
        """``link.exchange``; a connection that failed (or was interrupted) is closed, and a
        lost connection is ConnectionError."""
        try:
            return link.exchange(data, deadline)
        except BaseException as exc:
            link.close()
            if isinstance(exc, (OSError, EOFError)):
                raise self.gone(exc) from exc
            raise

    def _call_on_reserve(self, data: bytes, deadline: float | None, short: OutOfDescriptors) -> Any:
        """:meth:`call` on the reserve, one request at a time (``short``: raised if there
        is no reserve)."""
        wait = -1.0 if deadline is None else max(0.0, deadline - monotonic())
        guard = self.reserve_guard
        try:
            # (inside the try: an interrupt as acquire() returns still lets it go)
            if not guard.acquire(timeout=wait):
                raise NoAnswer("the reserve connection stayed busy")
            link = self.reserve
            if link is None:
                raise short
            try:
                raw = self._exchange(link, data, deadline)
            finally:
                if link.closed or self.closed:  # (a close() meanwhile left it to this call)
                    self.reserve = None
                    link.close()
        finally:
            _let_go(guard)
        return unpack_reply(raw)

    def close(self) -> None:
        """Close every connection, and any given back from now on. The reserve, if a
        request is using it, is closed by that request when it is done."""
        self.closed = True
        while self.idle:
            with contextlib.suppress(IndexError):  # (another close took it)
                self.idle.pop().close()
        guard = self.reserve_guard
        try:
            if guard.acquire(blocking=False):
                reserve, self.reserve = self.reserve, None
                if reserve is not None:
                    reserve.close()
        finally:
            _let_go(guard)


def _let_go(guard: threading.RLock) -> None:
    """Release ``guard`` if this thread holds it (after an interrupt, it may not)."""
    if guard_is_owned(guard):
        guard.release()


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
        reserve = client.reserve  # (its guard may be held by a parent's thread, gone here)
        if reserve is not None:
            client.reserve = None
            reserve.close()
    _clients.clear()


if hasattr(os, "register_at_fork"):  # no fork (nor a manager: see start()) on Windows
    os.register_at_fork(after_in_child=_forget_clients)
