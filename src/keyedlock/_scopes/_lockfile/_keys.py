"""Keys of the lock-file scope: each key is one byte of the lock file, and its lock request.

The byte's offset is a stable 63-bit hash of the key's type-tagged encoding
(:func:`key_offset`), the same in every process and run. The local key the
core serializes on is a :class:`KeyOffset`: the packed write-lock request for
that byte itself, so locking is one system call with the local key, and two
keys with one offset are one local key (they take turns).
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from collections.abc import Callable
from typing import Final

from ..._errors import shown_key

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no fcntl; the constructor says so
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "BUSY",
    "FLOCK",
    "GETLK",
    "SETLK",
    "SETLKW",
    "UNLCK",
    "KeyOffset",
    "fcntl_call",
    "fcntl_module",
    "key_offset",
    "offset_of",
    "offsets",
]

#: The fcntl module, or None where there is none.
fcntl_module: Final = fcntl

SETLK: Final[int] = getattr(fcntl, "F_OFD_SETLK", -1)
SETLKW: Final[int] = getattr(fcntl, "F_OFD_SETLKW", -1)
GETLK: Final[int] = getattr(fcntl, "F_OFD_GETLK", -1)
_WRLCK: Final[int] = getattr(fcntl, "F_WRLCK", 1)
UNLCK: Final[int] = getattr(fcntl, "F_UNLCK", 2)

#: ``struct flock``: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), native layout.
FLOCK: Final = struct.Struct("hhqqi0q")

#: The errors of a non-blocking lock attempt on a byte someone else holds.
BUSY: Final = (errno.EAGAIN, errno.EACCES)

#: Offsets are in [0, _SPAN): the byte's end (offset + 1) stays a valid off_t.
_SPAN: Final = (1 << 63) - 1

#: Personalization of the key hash (versioned: changing the encoding changes it).
_PERSON: Final = b"keyedlock.file.1"


def _no_fcntl(fd: int, cmd: int, arg: bytes) -> bytes:  # pragma: no cover - no fcntl
    raise NotImplementedError("fcntl is not available on this platform")


#: ``fcntl.fcntl`` (or a stand-in that raises where there is none).
fcntl_call: Callable[[int, int, bytes], bytes] = getattr(fcntl, "fcntl", None) or _no_fcntl


class KeyOffset(bytes):
    """A key's byte in the lock file: the local key the core serializes on.

    Its value is the packed write-lock request for the byte (``struct
    flock``), so locking is one system call with the local key itself, and
    two keys with one offset are equal local keys: they take turns. (A bytes
    object keeps its hash, so a dictionary operation on it is a lookup and
    nothing more.) It remembers the byte's ``offset``, the packed ``unlock``
    request and the key it was made for (its repr, so messages name the key).
    """

    key: object
    offset: int
    unlock: bytes

    def __repr__(self) -> str:
        return shown_key(self.key)


def _encode(key: object) -> bytes:
    """The type-tagged byte encoding of a key; TypeError for keys the file scope refuses."""
    if isinstance(key, str):
        return b"s" + key.encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):
        return b"b" + key
    if isinstance(key, int) and not isinstance(key, bool):
        return b"i" + int(key).to_bytes((key.bit_length() + 8) // 8, "big", signed=True)
    if isinstance(key, bool):
        raise TypeError(
            f"FileKeyedLock keys must be str, bytes or int; bool ({shown_key(key)}) is refused "
            "because True == 1 would make it the same key as the int; use 1/0 or a str"
        )
    kind = repr(type(key).__name__)
    try:
        hash(key)
    except TypeError:
        kind = "unhashable " + kind
    raise TypeError(
        f"FileKeyedLock keys must be str, bytes or int (hashed into the lock file), "
        f"got {kind}: {shown_key(key)}; build a str, e.g. f'order:{{order_id}}'"
    )


def key_offset(key: object) -> int:
    """The byte offset of ``key`` in the lock file: the same in every process and run.

    A 63-bit BLAKE2b hash of the key's type-tagged encoding (``"1"``,
    ``b"1"`` and ``1`` are three different keys); never Python's ``hash()``,
    which is salted per process for str and bytes. TypeError for keys other
    than str, bytes and int (bool is refused).
    """
    digest = hashlib.blake2b(_encode(key), digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") % _SPAN


def _make_offset(key: object) -> KeyOffset:
    number = key_offset(key)
    offset = KeyOffset(FLOCK.pack(_WRLCK, os.SEEK_SET, number, 1, 0))
    offset.key = key
    offset.offset = number
    offset.unlock = FLOCK.pack(UNLCK, os.SEEK_SET, number, 1, 0)
    return offset


_OFFSETS_MAX: Final = 1024

#: Offsets of recently used keys, one cache per key type (hashing costs about as much as
#: a lock system call). Per type, so that a lookup never compares keys of two types:
#: ``True == 1 == 1.0`` must not share 1's entry, and under ``python -bb`` comparing a str
#: with bytes of the same hash raises. Each is bounded: cleared when full.
offsets: Final[dict[type, dict[object, KeyOffset]]] = {str: {}, bytes: {}, int: {}}


def offset_of(key: object) -> KeyOffset:
    """The :class:`KeyOffset` of ``key``; TypeError unless str, bytes or int (not bool)."""
    kind = type(key)  # (compared, not hashed: a subclass's metaclass may be unhashable)
    cache = offsets[kind] if kind is str or kind is bytes or kind is int else None
    if cache is None:
        return _make_offset(key)  # a subclass (same offset as its value), or TypeError
    offset = cache.get(key)
    if offset is None:
        if len(cache) >= _OFFSETS_MAX:
            cache.clear()
        offset = cache[key] = _make_offset(key)
    return offset
