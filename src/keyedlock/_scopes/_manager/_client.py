"""The manager's client side: this process's connections, and requests that take a key.

Each process keeps, per manager, a pool of idle connections (:class:`Client`):
a request borrows one, so concurrent requests of one process (threads,
helper threads of async callers) never share one, and a connection is reused
by the next request. After ``fork`` the child starts with an empty pool
(never the parent's connections).

A request that takes a key (:class:`Wait`) is never lost: its reply is kept
on the :class:`Wait` (``reply``) before anything else happens, and a request
interrupted anywhere (KeyboardInterrupt, its task cancelled, its deadline
passed) shuts its connection and then either undoes the reply that came or
withdraws the request with a CANCEL on another connection: the manager
withdraws it, refuses it if it has not arrived yet, or releases what it was
granted. A request with a deadline (:func:`~._transport.deadline_for`) gives
up by then: the manager releases what it grants to a connection that is
gone.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
from collections.abc import Callable
from time import monotonic
from typing import Any, Final

from ..._core import complete
from ..._ki import internal
from ._protocol import CANCEL, Reply, encode, unpack_reply
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

__all__ = ["Client", "Wait", "client_for", "drop_client", "next_serial"]

#: Serials of this process's key-taking requests (unique per process; per pid on the server).
next_serial: Final = itertools.count(1).__next__


@internal
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


@internal
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
            sock = open_socket(self.address, deadline)
        except OSError as exc:
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
        return _Link(sock, conn_id)

    def call(self, data: bytes, deadline: float | None = None) -> Any:
        """One round trip for a request (``encode``-d) the manager answers at once (NoAnswer
        by ``deadline``)."""
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
        return unpack_reply(raw)

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


@internal
class Wait:
    """A request that takes a key (ACQUIRE, JOIN): its reply is never lost.

    ``run()`` sends it and blocks this thread for the reply (one round trip,
    however long the manager makes it wait), and keeps it as ``reply`` before
    returning it: a caller interrupted right after ``run()`` returned still
    finds it there. ``cancel()``, from any thread, withdraws the request at
    the manager; ``run()`` then returns promptly with CANCELLED, or with what
    was granted before the cancel arrived: the canceller passes that reply to
    ``undo`` (release the key, hand the call on). If ``run()`` itself is
    interrupted anywhere (KeyboardInterrupt), it leaves nothing behind in the
    manager and re-raises. With a ``deadline``, ``run()`` returns NO_ANSWER if
    the manager has not answered by then; the manager then releases whatever
    it grants to the request.
    """

    __slots__ = (
        "cancelled",
        "client",
        "conn_id",
        "data",
        "deadline",
        "guard",
        "reply",
        "serial",
        "undo",
    )

    def __init__(
        self,
        client: Client,
        data: bytes,
        serial: int,
        undo: Callable[[object], None],
        deadline: float | None = None,
    ) -> None:
        self.client = client
        self.data = data
        self.serial = serial
        self.undo = undo
        self.deadline = deadline
        self.guard = threading.Lock()
        self.conn_id: int | None = None
        self.cancelled = False
        #: The reply, once ``run()`` has it (None before).
        self.reply: object = None

    def run(self) -> object:
        client = self.client
        deadline = self.deadline
        try:
            link = client.take(deadline)
        except NoAnswer:
            self.reply = Reply.NO_ANSWER
            return Reply.NO_ANSWER
        with self.guard:
            if self.cancelled:
                client.idle.append(link)
                self.reply = Reply.CANCELLED
                return Reply.CANCELLED
            self.conn_id = link.id
        try:
            raw = link.exchange(self.data, deadline)
            reply = unpack_reply(raw)  # (an error of the manager's is raised here)
            self.reply = reply
        except NoAnswer:
            self.reply = Reply.NO_ANSWER
            return Reply.NO_ANSWER
        except (OSError, EOFError) as exc:
            link.close()
            raise client.gone(exc) from exc
        except Exception:
            if link.closed:
                complete(self._leave, link)
            else:
                client.idle.append(link)  # the manager refused the request: nothing taken
            raise
        except BaseException:
            # Interrupted, before or after the request left or came back (again if another
            # interrupt lands in the recovery).
            complete(self._leave, link)
            raise
        if not link.closed:
            client.idle.append(link)
        return reply

    def _leave(self, link: _Link) -> None:
        """Nobody will read the reply: leave nothing behind in the manager.

        Once the connection is shut, the manager can deliver nothing more on
        it (and releases what it grants from then on). A reply that came
        before and was not read is undone; else the request (maybe still
        queued, maybe granted with its reply read and lost) is withdrawn, and
        what it was granted given back.
        """
        try:
            raw = link.give_up()
        except NoAnswer:
            self.cancel(give_back=True)
            return
        with contextlib.suppress(Exception):
            self.undo(unpack_reply(raw))

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
            self.client.call(encode(CANCEL, conn_id, self.serial, give_back), self.deadline)


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
