"""The manager's client side, in isolation: a connection given up is never read again."""

from __future__ import annotations

import inspect
import socket

import pytest

from keyedlock._scopes._manager._client import Link
from keyedlock._scopes._manager._protocol import REQUESTS, Request, encode_reply
from keyedlock._scopes._manager._server import Server
from keyedlock._scopes._manager._transport import NoAnswer, send_frame


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
