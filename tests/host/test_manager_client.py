"""The manager's client side, in isolation: a connection given up is never read again."""

from __future__ import annotations

import _thread
import inspect
import os
import socket
import threading

import pytest

from keyedlock._core import guard_is_owned
from keyedlock._scopes._manager._client import (
    Client,
    Link,
    OutOfDescriptors,
    client_for,
    drop_client,
)
from keyedlock._scopes._manager._protocol import REQUESTS, Request, encode_reply
from keyedlock._scopes._manager._records import Conn, Proc
from keyedlock._scopes._manager._server import Server
from keyedlock._scopes._manager._service import Service
from keyedlock._scopes._manager._transport import NoAnswer, send_frame

from ..support import WAIT, start_thread


def test_a_connection_given_up_twice_never_reads_another_connections_reply() -> None:
    """Giving up reads what already arrived, then closes. Run again (after an interrupt), it
    must not read the closed connection's descriptor number: another connection, made
    meanwhile, may have it, with a reply of its own waiting."""
    mine, manager_side = socket.socketpair()
    link = Link(mine, 1)
    number = link.fd
    with pytest.raises(NoAnswer):
        link.give_up()  # nothing had arrived
    assert link.closed
    other, other_manager_side = socket.socketpair()
    try:
        if other.fileno() != number:
            pytest.skip("the descriptor number was not reused")
        reply = encode_reply(True, "granted to the other request")
        send_frame(other_manager_side.fileno(), reply)
        with pytest.raises(NoAnswer):
            link.give_up()
        other.setblocking(False)
        assert other.recv(4 + len(reply)).endswith(reply)  # still there for its owner
    finally:
        for sock in (manager_side, other, other_manager_side):
            sock.close()


@pytest.mark.parametrize("request_", REQUESTS.values(), ids=lambda r: r.handler)
def test_every_request_is_served_by_a_method_taking_its_declared_fields(
    request_: Request,
) -> None:
    """The wire format is declared once (the protocol module): the server calls
    ``handler(connection, *fields)``, so each handler takes exactly as many positional
    parameters as the request declares fields (a lock's and a group's requests share some
    handlers: ``tid`` and ``fid`` name one list of tables)."""
    handler = getattr(Server, request_.handler)
    parameters = list(inspect.signature(handler).parameters.values())
    assert [p.name for p in parameters[:2]] == ["self", "state"], request_
    taken = parameters[2:]
    assert len(taken) == len(request_.fields), request_
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD and p.default is p.empty for p in taken)


def test_request_codes_are_unique() -> None:
    assert len({request.code for request in REQUESTS.values()}) == len(REQUESTS)
    assert all(code == request.code for code, request in REQUESTS.items())


class _InterruptedOnce(_thread.RLock):  # type: ignore[misc]  # (final in the stubs only)
    """An RLock whose first ``acquire()`` takes it and then raises KeyboardInterrupt, as a
    Ctrl-C does when the interpreter checks for signals as ``acquire`` returns."""

    fired = False

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = super().acquire(blocking, timeout)
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt
        return got


def _answering_link() -> tuple[Link, socket.socket]:
    """A connection whose other end (returned) plays the manager."""
    mine, manager_side = socket.socketpair()
    return Link(mine, 1), manager_side


def test_an_interrupt_as_the_reserve_is_taken_leaves_it_free() -> None:
    """The reserve connection's guard is taken inside the try that lets it go: a Ctrl-C as
    ``acquire`` returns leaves it free, and the next request on the reserve gets through."""
    client = Client("/nonexistent")
    link, manager_side = _answering_link()
    try:
        client.reserve = link
        client.reserve_guard = _InterruptedOnce()
        short = OutOfDescriptors("no descriptor left")
        with pytest.raises(KeyboardInterrupt):
            client._call_on_reserve(b"request", None, short)
        assert not guard_is_owned(client.reserve_guard)
        send_frame(manager_side.fileno(), encode_reply(True, "answered"))
        answer = start_thread(lambda: client._call_on_reserve(b"again", None, short), "caller")
        assert answer.result() == "answered"
        assert client.reserve is link
    finally:
        client.close()
        manager_side.close()
    assert link.closed


def test_a_client_closed_while_its_reserve_is_in_use_closes_it_after() -> None:
    client = Client("/nonexistent")
    link, manager_side = _answering_link()
    try:
        client.reserve = link
        taken, done = threading.Event(), threading.Event()

        def request_in_flight() -> None:  # (another thread: the guard is an RLock)
            with client.reserve_guard:
                taken.set()
                done.wait(WAIT)

        using = start_thread(request_in_flight, "using the reserve")
        assert taken.wait(WAIT)
        client.close()
        assert not link.closed  # left to the request using it
        done.set()
        using.result()
        send_frame(manager_side.fileno(), encode_reply(True, "answered"))
        assert client._call_on_reserve(b"request", None, OutOfDescriptors("x")) == "answered"
        assert is_closed(link)  # closed by the request, once done
        assert reserve_of(client) is None
        link2, side2 = _answering_link()
        client.give_back(link2)  # given back to a closed client: closed
        side2.close()
        assert link2.closed
        assert reserve_of(client) is None
        assert client.idle == []
    finally:
        manager_side.close()


def reserve_of(client: Client) -> Link | None:
    return client.reserve


def is_closed(link: Link) -> bool:
    return link.closed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_fork_child_closes_its_copy_of_a_reserve_in_use() -> None:
    """A fork child starts with no client: it closes its copies of the parent's connections,
    the reserve too, even while a thread of the parent (gone in the child) uses it."""
    address = "/nonexistent/fork-test.sock"
    client = client_for(address)
    link, manager_side = _answering_link()
    taken, done = threading.Event(), threading.Event()

    def request_in_flight() -> None:
        with client.reserve_guard:
            taken.set()
            done.wait(WAIT)

    try:
        client.reserve = link
        using = start_thread(request_in_flight, "using the reserve")
        assert taken.wait(WAIT)
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status, and run nothing else
            os._exit(0 if link.closed and client.reserve is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not link.closed  # the parent's is still open
    finally:
        done.set()
        using.result()
        drop_client(address)
        manager_side.close()


def test_a_late_copy_of_a_cancel_keeps_the_mark_of_a_newer_one() -> None:
    """A cancel that arrives before its request marks the request's connection, so the
    request is refused when it comes. A copy of an older request's cancel (sent again after
    the manager did not answer), arriving later on the same, reused, connection, must not
    take that mark away."""
    service = Service()
    proc = Proc(1234)
    waiting, canceller = Conn(7, proc), Conn(8, proc)
    service.conns.update({7: waiting, 8: canceller})
    service.cancel(canceller, 7, 5, True)  # request 5, on connection 7, not arrived yet
    service.cancel(canceller, 7, 3, True)  # a late copy of request 3's cancel (long done)
    assert waiting.cancelled == 5
