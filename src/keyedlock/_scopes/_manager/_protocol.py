"""The manager's wire protocol, declared once: every request, its fields, and the replies.

A request travels as the pickled tuple ``(code, *fields)``, its fields in
the order declared here; the server serves it with the method named by
``handler``, called as ``handler(connection, *fields)`` (a test checks that
every handler takes exactly the declared fields). The reply is the pickled
``(True, value)``, or ``(False, exception)``.

User payloads (single-flight outcomes, ``on_error="stop"`` causes) travel
as opaque pickled bytes (see :mod:`._payloads`): the server never unpickles
them, so their classes need not be importable there. Keys are unpickled (the
server compares them).
"""

from __future__ import annotations

import pickle
from typing import Any, Final, NamedTuple

from ..._errors import shown_key

__all__ = [
    "ABANDON",
    "ACQUIRE",
    "CANCEL",
    "FINISH",
    "FLIGHT_LEN",
    "FLIGHT_WAITERS",
    "FORGET",
    "HOLDS",
    "IN_FLIGHT",
    "JOIN",
    "KEYS",
    "LEFT_HELD",
    "LEN",
    "LOCKED",
    "NAME_LIMIT",
    "NEW_FLIGHT",
    "NEW_LOCK",
    "RELEASE",
    "REQUESTS",
    "SHUTDOWN",
    "STATS",
    "WAITERS",
    "Reply",
    "Request",
    "encode",
    "encode_reply",
    "unpack_reply",
]


class Request(NamedTuple):
    """One kind of request: its code on the wire, the server method serving it, its fields."""

    code: int
    handler: str
    fields: tuple[str, ...]
    doc: str


NEW_LOCK: Final = Request(1, "new_lock", ("max_waiters",), "Make a lock; the reply is its id.")
NEW_FLIGHT: Final = Request(
    2, "new_flight", ("ttl",), "Make a single-flight group; the reply is its id."
)
ACQUIRE: Final = Request(
    3,
    "acquire",
    ("tid", "key", "owner", "serial", "timeout", "name", "taken"),
    "Take ``key`` of lock ``tid`` for ``owner`` (request ``serial``; ``name``: the thread's or "
    "task's name, or None; ``taken``: by acquire(), not a context), waiting up to ``timeout`` "
    "(None: forever, 0: try once): GRANTED, BUSY, CANCELLED or (ABORTED, cause).",
)
RELEASE: Final = Request(
    4,
    "release",
    ("tid", "key", "serial", "cause", "ticket"),
    "Release the caller's own hold ``serial`` (or, with ``serial`` None, whoever holds "
    "``key``: ``ticket`` makes a repeat of that request, after an interrupt, change nothing); "
    "with ``cause`` (pickled), abort the waiters.",
)
LOCKED: Final = Request(5, "locked", ("tid", "key"), "True if anyone holds ``key``.")
WAITERS: Final = Request(6, "waiters", ("tid", "key"), "How many callers wait for ``key``.")
LEN: Final = Request(7, "length", ("tid",), "How many keys are busy.")
CANCEL: Final = Request(
    8,
    "cancel",
    ("conn_id", "serial", "give_back"),
    "Withdraw the request ``serial`` sent on connection ``conn_id`` (``give_back``: release "
    "what it was granted too).",
)
JOIN: Final = Request(
    9,
    "join",
    ("fid", "key", "owner", "serial", "wait", "name"),
    "Lead the call for ``key`` of group ``fid`` (``name``: the caller's thread or task name, or "
    "None) or, if ``wait``, wait for its outcome: LEAD, BUSY, CANCELLED or (OUTCOME, "
    "(is_error, payload)).",
)
FINISH: Final = Request(
    10,
    "finish",
    ("fid", "key", "serial", "is_error", "payload"),
    "The leader's call ended with ``payload`` (pickled); True if a follower shared it.",
)
ABANDON: Final = Request(
    11, "abandon", ("fid", "key", "serial"), "The leader gave up: the earliest follower leads."
)
FORGET: Final = Request(12, "forget", ("fid", "key"), "New callers of ``key`` start a new call.")
IN_FLIGHT: Final = Request(13, "locked", ("fid", "key"), "True if a call for ``key`` runs.")
FLIGHT_LEN: Final = Request(14, "length", ("fid",), "How many keys have a call in flight.")
FLIGHT_WAITERS: Final = Request(
    15, "waiters", ("fid", "key"), "How many callers wait for the call for ``key``."
)
SHUTDOWN: Final = Request(16, "shutdown", (), "Stop the manager.")
STATS: Final = Request(
    17,
    "stats",
    ("tid", "key"),
    "A snapshot of ``key`` of lock or group ``tid``: (held, (pid, runtime, seconds held, name) "
    "or None, [each waiter's runtime], a fresh kept value).",
)
KEYS: Final = Request(18, "keys", ("tid",), "The keys of lock or group ``tid`` that are busy.")
LEFT_HELD: Final = Request(
    19,
    "left_held",
    ("tid", "ended"),
    "The caller's process saw owners end: ``ended`` lists (owner, name, abandon). The reply "
    "lists (name, abandon, key) for each key of lock ``tid`` such an owner still holds, taken "
    "with acquire(); with ``abandon`` (a task's), each is abandoned: its waiters and later "
    "callers raise Abandoned until it is released.",
)
HOLDS: Final = Request(
    20,
    "holds",
    ("tid", "serial"),
    "True if the caller's process's hold ``serial`` (of lock ``tid``) still holds its key: no "
    "``release(key)`` from another process released it.",
)

#: Every request, by code.
REQUESTS: Final = {
    request.code: request
    for request in (
        NEW_LOCK,
        NEW_FLIGHT,
        ACQUIRE,
        RELEASE,
        LOCKED,
        WAITERS,
        LEN,
        CANCEL,
        JOIN,
        FINISH,
        ABANDON,
        FORGET,
        IN_FLIGHT,
        FLIGHT_LEN,
        FLIGHT_WAITERS,
        SHUTDOWN,
        STATS,
        KEYS,
        LEFT_HELD,
        HOLDS,
    )
}


class Reply:
    """Answers of ACQUIRE and JOIN (ABORTED and OUTCOME come as ``(code, payload)``)."""

    GRANTED: Final = 1  # ACQUIRE: the caller holds the key
    BUSY: Final = 2  # ACQUIRE: timed out, or busy with timeout=0; JOIN: busy, no wait
    CANCELLED: Final = 3  # the wait was withdrawn by a cancel request
    ABORTED: Final = 4  # ACQUIRE: (ABORTED, pickled cause) on_error="stop"
    LEAD: Final = 5  # JOIN: the caller runs the call
    OUTCOME: Final = 6  # JOIN: (OUTCOME, (is_error, pickled value or exception))
    NO_ANSWER: Final = 7  # never sent: the client gave up waiting (see deadline_for)


#: The most characters of an owner's name (the ``name`` of ACQUIRE and JOIN) a client sends
#: and the manager keeps.
NAME_LIMIT: Final = 200

_HIGHEST: Final = pickle.HIGHEST_PROTOCOL


def encode(request: Request, *fields: object) -> bytes:
    """The wire form of ``request`` with its ``fields``; TypeError for a key that cannot be
    pickled."""
    if len(fields) != len(request.fields):
        raise TypeError(f"{request.handler} takes {request.fields}, got {len(fields)} fields")
    try:
        return pickle.dumps((request.code, *fields), _HIGHEST)
    except MemoryError:
        raise  # (the message is too large to build: nothing wrong with its key)
    except Exception as exc:
        key = fields[request.fields.index("key")] if "key" in request.fields else None
        raise TypeError(
            f"key {shown_key(key)} cannot be sent to the KeyedLockManager: keys must be "
            f"picklable ({exc})"
        ) from exc


def encode_reply(ok: bool, value: object) -> bytes:
    """The wire form of a reply: a value, or (not ``ok``) the exception to raise."""
    try:
        return pickle.dumps((ok, value), _HIGHEST)
    except Exception as exc:  # an exception that cannot be pickled
        return pickle.dumps((False, RuntimeError(repr(exc))), _HIGHEST)


def unpack_reply(raw: bytes) -> Any:
    """The value of a reply, or raise its exception."""
    ok, value = pickle.loads(raw)
    if ok:
        return value
    raise value
