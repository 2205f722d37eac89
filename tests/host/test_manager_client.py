"""The manager's client side, in isolation: a connection given up is never read again."""

from __future__ import annotations

import socket

import pytest

from keyedlock._scopes._manager._client import _Link
from keyedlock._scopes._manager._protocol import encode_reply
from keyedlock._scopes._manager._transport import NoAnswer, send_frame


def test_a_connection_given_up_twice_never_reads_another_connections_reply() -> None:
    """Giving up reads what already arrived, then closes. Run again (after an interrupt), it
    must not read the closed connection's descriptor number: another connection, made
    meanwhile, may have it, with a reply of its own waiting."""
    mine, manager_side = socket.socketpair()
    link = _Link(mine, 1)
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
