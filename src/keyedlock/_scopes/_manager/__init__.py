"""The manager scope: lock and single-flight state in one server process, shared by many.

:class:`keyedlock.multiprocessing.KeyedLockManager` starts :func:`serve` in a
process of its own; the objects it makes are backed by
:class:`ManagerLockBackend` and :class:`ManagerFlightBackend`, whose queue is
the manager's (the remote model of the contract).

- :mod:`._protocol`: the wire protocol, declared once (requests and replies);
- :mod:`._transport`: framing with deadlines, the socket, the handshake;
- :mod:`._service`: the tables, the holds of every process, the requests;
- :mod:`._server`: the manager process (connections, process watching);
- :mod:`._client`: this process's connections, and requests that take a key;
- :mod:`._owners`, :mod:`._payloads`: owners and outcomes on the wire;
- :mod:`._lockbackend`, :mod:`._flightbackend`: the lock and single-flight backends.
"""

from __future__ import annotations

from ._client import Client, client_for, drop_client
from ._flightbackend import ManagerFlightBackend
from ._lockbackend import ManagerLockBackend, ManagerLockContext
from ._protocol import NEW_FLIGHT, NEW_LOCK, SHUTDOWN, encode
from ._server import serve
from ._transport import NoAnswer, make_socket_path, remove_socket_path

__all__ = [
    "NEW_FLIGHT",
    "NEW_LOCK",
    "SHUTDOWN",
    "Client",
    "ManagerFlightBackend",
    "ManagerLockBackend",
    "ManagerLockContext",
    "NoAnswer",
    "client_for",
    "drop_client",
    "encode",
    "make_socket_path",
    "remove_socket_path",
    "serve",
]
