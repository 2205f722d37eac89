"""Keys of the cluster scope: what a user's key is called on the server, and waiter ids.

A key is encoded with its type, so ``"1"``, ``b"1"`` and ``1`` are three keys::

    str    "invoice:42"  ->  s:invoice:42     (UTF-8)
    bytes  b"\\x00\\xff"    ->  b:\\x00\\xff       (as is)
    int    42            ->  i:42             (decimal)

and the names of its structures are ``<prefix>{<tag>}:...`` (see :mod:`._lua`): with the
default prefix, the lock on ``"invoice:42"`` is ``keyedlock:{s:invoice:42}:owner`` (and
``:queue``, ``:places``, ``:leases``, ``:token``, ``:wake:<id>``), its single-flight
``keyedlock:{s:invoice:42}:flight:...``, so an operator finds them with ``SCAN MATCH
'keyedlock:*'``. Any other key type (``bool`` included: ``True == 1``) is a TypeError.

The local key the process table serializes on is a :class:`RedisKey`: the encoded key
itself (a bytes object: equal keys are equal local keys), remembering the user's key (for
messages) and the names of its structures.

Waiter ids (one per acquisition attempt, or per flight member) are ``<process>-<n>``: a
random process id, drawn again in a fork child, and a counter.
"""

from __future__ import annotations

import itertools
import os
import socket
import sys
from typing import Final

from ..._errors import shown_key
from ..._statistics import Owner
from ._flightkeys import FlightKeys, flight_keys
from ._lockkeys import LockKeys, lock_keys

__all__ = ["KeyNames", "RedisKey", "encode_key", "id_owner", "new_id"]


class RedisKey(bytes):
    """A key of the cluster scope: its type-tagged encoding, and what it is called.

    ``key``: the user's key (its repr is this object's, so messages name it);
    ``names``: its lock's structures, or its flight's (:class:`KeyNames` decides).
    """

    key: object
    names: LockKeys
    flight: FlightKeys

    def __repr__(self) -> str:
        return shown_key(self.key)


def encode_key(key: object, who: str = "RedisKeyedLock") -> bytes:
    """The type-tagged encoding of a key; TypeError for keys the cluster scope refuses."""
    if isinstance(key, str):
        return b"s:" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b:" + key
    if isinstance(key, int) and not isinstance(key, bool):
        try:
            return b"i:" + str(int(key)).encode()
        except ValueError:  # more digits than this interpreter turns into text
            raise ValueError(
                f"{who} int keys are named in decimal on the server: at most "
                f"{sys.get_int_max_str_digits()} digits (sys.get_int_max_str_digits()), got "
                f"an int of {key.bit_length()} bits; use a str or bytes key"
            ) from None
    if isinstance(key, bool):
        raise TypeError(
            f"{who} keys must be str, bytes or int; bool ({shown_key(key)}) is refused "
            "because True == 1 would make it the same key as the int; use 1/0 or a str"
        )
    kind = repr(type(key).__name__)
    try:
        hash(key)
    except TypeError:
        kind = "unhashable " + kind
    raise TypeError(
        f"{who} keys must be str, bytes or int (they name structures on the server), "
        f"got {kind}: {shown_key(key)}; build a str, e.g. f'order:{{order_id}}'"
    )


#: Keys of recently used keys per scope are cached; a cache is cleared when it holds this many.
_CACHE_MAX: Final = 1024


class KeyNames:
    """Maps users' keys to :class:`RedisKey` objects under one prefix (with a small cache)."""

    __slots__ = ("_who", "cache", "prefix")

    def __init__(self, prefix: str, who: str) -> None:
        lock_keys(prefix, b"")  # checks the prefix (TypeError, ValueError) at construction
        self.prefix = prefix
        self._who = who
        # One cache per key type: a lookup never compares keys of two types (True == 1).
        # (Also the scope's mapped_keys: the lock looks there first.)
        self.cache: dict[type, dict[object, RedisKey]] = {str: {}, bytes: {}, int: {}}

    def __call__(self, key: object) -> RedisKey:
        """The :class:`RedisKey` of ``key``; TypeError unless a str, bytes or int (not bool)."""
        kind = type(key)  # (compared, not hashed: a subclass's metaclass may be unhashable)
        cache = self.cache[kind] if kind is str or kind is bytes or kind is int else None
        if cache is not None:
            found = cache.get(key)
            if found is not None:
                return found
        encoded = encode_key(key, self._who)
        local = RedisKey(encoded)
        local.key = key
        local.names = lock_keys(self.prefix, encoded)
        local.flight = flight_keys(self.prefix, encoded)
        if cache is not None:
            if len(cache) >= _CACHE_MAX:
                cache.clear()
            cache[key] = local
        return local


# --- ids ---------------------------------------------------------------------------------------


def _process_part() -> str:
    """This process's part of every id: ``<host>/<pid>/<random>`` (the random part tells
    apart two processes that had one pid, on one host, one after the other)."""
    host = socket.gethostname().replace("/", "_") or "-"
    return f"{host}/{os.getpid()}/{os.urandom(4).hex()}"


_process = [_process_part()]
_counter = [itertools.count(1)]


def new_id() -> str:
    """A new waiter (or member) id, unique across processes and attempts: it names the
    host and the process it comes from (see :func:`id_owner`)."""
    return f"{_process[0]}-{next(_counter[0])}"


def id_owner(waiter: str | None) -> Owner | None:
    """Who an id read back from Redis belongs to: its process (runtime ``"process"``), by
    process id and host; None for None or an id not made by :func:`new_id`."""
    if not waiter:
        return None
    parts = waiter.rsplit("/", 2)
    if len(parts) != 3 or not (parts[1].isascii() and parts[1].isdecimal()):
        return None
    return Owner("process", None, int(parts[1]), parts[0])


def _new_process_in_child() -> None:
    _process[0] = _process_part()
    _counter[0] = itertools.count(1)


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_new_process_in_child)
