"""The host file scope: keyed locks across every process of one Linux host.

:class:`~keyedlock.FileKeyedLock` plugs :class:`FileScope` into the local
core. Each key is one byte of a lock file, at an offset taken from a stable
hash of the key (:func:`key_offset`), and holding the key means holding a
write lock on that byte through an *open file description* (OFD) lock
(``fcntl`` ``F_OFD_SETLK`` / ``F_OFD_SETLKW`` / ``F_OFD_GETLK``, Linux 3.15+).
The kernel arbitrates between processes, wakes a waiter when the byte frees
(no polling) and drops every lock of a process that dies, SIGKILL included.

Within a process, the local core serializes callers on the *offset* (the
local key, a :class:`KeyOffset`), so only the local holder of an offset ever
talks to the kernel about it; two keys whose hashes collide share one offset
and are serialized together: less parallelism, never less exclusion.

OFD locks belong to an open file description, not to a process or thread,
which shapes everything here:

- Locks taken through one description neither stack nor conflict, and one
  unlock drops them. The scope's *shared* descriptor serves the fast path
  (a non-blocking ``F_OFD_SETLK``) and the blocking waits of threads without
  a timeout (``F_OFD_SETLKW`` in the caller's thread; Ctrl-C interrupts it).
  A wait that may be abandoned (an async caller, or a timeout) runs in a
  daemon helper thread (:class:`~keyedlock._runtime._offload.Offload`) on a
  *private* descriptor (the file opened again), so that a lock the kernel
  grants after its waiter gave up can be dropped without touching anything
  else. ``_held`` remembers which descriptor holds the byte for each local
  holder (keyed by its hold, see :mod:`~keyedlock._scopes._base`), and
  release unlocks through that one.
- A waiter that gives up leaves its kernel wait running (``F_OFD_SETLKW``
  cannot be interrupted): the next local holder of that offset adopts it
  instead of starting another thread, so there is at most one helper thread
  per offset. If the kernel grants it while nobody has adopted it, the
  helper thread unlocks and closes it at once (the waiter's event loop may
  be gone by then).
- A forked child shares its parent's descriptions. After ``fork`` the child
  closes (never unlocks: that would drop the parent's locks) every inherited
  descriptor, opens a description of its own and starts with nothing held.
  Descriptors are opened, registered and closed under :data:`_FDS_LOCK`,
  which ``fork`` takes, so the child's list is exact. Descriptors are
  close-on-exec, so programs started with ``exec`` inherit none.

The lock file is never deleted (an empty file; deleting it while in use
would let processes holding the old file and processes opening a new one
miss each other).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import struct
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Hashable
from functools import partial
from typing import Final, cast

from .._core._keytable import Hold
from .._runtime._offload import Finished, Offload

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no fcntl; the constructor says so
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FileScope",
    "KeyOffset",
    "default_path",
    "key_offset",
    "not_held_error",
    "unsupported_reason",
]

# -- locking primitives -----------------------------------------------------

_SETLK: Final[int] = getattr(fcntl, "F_OFD_SETLK", -1)
_SETLKW: Final[int] = getattr(fcntl, "F_OFD_SETLKW", -1)
_GETLK: Final[int] = getattr(fcntl, "F_OFD_GETLK", -1)
_WRLCK: Final[int] = getattr(fcntl, "F_WRLCK", 1)
_UNLCK: Final[int] = getattr(fcntl, "F_UNLCK", 2)

#: ``struct flock``: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), native layout.
_FLOCK: Final = struct.Struct("hhqqi0q")

#: The errors of a non-blocking lock attempt on a byte someone else holds.
_BUSY: Final = (errno.EAGAIN, errno.EACCES)

#: Offsets are in [0, _SPAN): the byte's end (offset + 1) stays a valid off_t.
_SPAN: Final = (1 << 63) - 1

#: Personalization of the key hash (versioned: changing the encoding changes it).
_PERSON: Final = b"keyedlock.file.1"

_DEFAULT_NAME: Final = "keys.lock"


def _no_fcntl(fd: int, cmd: int, arg: bytes) -> bytes:  # pragma: no cover - no fcntl
    raise NotImplementedError("fcntl is not available on this platform")


_fcntl: Callable[[int, int, bytes], bytes] = getattr(fcntl, "fcntl", None) or _no_fcntl


def unsupported_reason(platform: str, module: object) -> str | None:
    """Why the file scope cannot run here (``module``: the fcntl module or None), or None."""
    if module is None:
        return (
            f"FileKeyedLock needs POSIX file locks (the fcntl module), which {platform!r} "
            "does not have; use KeyedLock within one process"
        )
    if not hasattr(module, "F_OFD_SETLK"):
        return (
            "FileKeyedLock needs open file description locks (fcntl.F_OFD_SETLK, Linux 3.15+), "
            f"which {platform!r} does not provide; use KeyedLock within one process, or "
            "keyedlock.multiprocessing.KeyedLockManager for processes started from one parent"
        )
    return None


# -- keys -------------------------------------------------------------------


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
        return repr(self.key)


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
            f"FileKeyedLock keys must be str, bytes or int; bool ({key!r}) is refused "
            "because True == 1 would make it the same key as the int; use 1/0 or a str"
        )
    kind = repr(type(key).__name__)
    try:
        hash(key)
    except TypeError:
        kind = "unhashable " + kind
    raise TypeError(
        f"FileKeyedLock keys must be str, bytes or int (hashed into the lock file), "
        f"got {kind}: {key!r}; build a str, e.g. f'order:{{order_id}}'"
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
    offset = KeyOffset(_FLOCK.pack(_WRLCK, os.SEEK_SET, number, 1, 0))
    offset.key = key
    offset.offset = number
    offset.unlock = _FLOCK.pack(_UNLCK, os.SEEK_SET, number, 1, 0)
    return offset


_OFFSETS_MAX: Final = 1024

#: Offsets of recently used keys, one cache per key type (hashing costs about as much as
#: a lock system call). Per type, so that a lookup never compares keys of two types:
#: ``True == 1 == 1.0`` must not share 1's entry, and under ``python -bb`` comparing a str
#: with bytes of the same hash raises. Each is bounded: cleared when full.
_offsets: Final[dict[type, dict[object, KeyOffset]]] = {str: {}, bytes: {}, int: {}}


def _offset_of(key: object) -> KeyOffset:
    """The :class:`KeyOffset` of ``key``; TypeError unless str, bytes or int (not bool)."""
    cache = _offsets.get(type(key))
    if cache is None:
        return _make_offset(key)  # a subclass (same offset as its value), or TypeError
    offset = cache.get(key)
    if offset is None:
        if len(cache) >= _OFFSETS_MAX:
            cache.clear()
        offset = cache[key] = _make_offset(key)
    return offset


# -- the lock file ----------------------------------------------------------


def _runtime_dir(uid: int) -> str | None:
    """``$XDG_RUNTIME_DIR`` if set and usable: absolute, a directory of ``uid``, mode 0700."""
    path = os.environ.get("XDG_RUNTIME_DIR")
    if not path or not os.path.isabs(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        return None
    if not os.access(path, os.W_OK | os.X_OK):
        return None
    return path


def default_path() -> str:
    """Where ``FileKeyedLock()`` keeps its lock file (nothing is created here).

    ``<base>/keyedlock-<uid>/keys.lock``, with ``<base>`` the user's
    ``$XDG_RUNTIME_DIR`` if set and usable, else :func:`tempfile.gettempdir`.
    """
    uid = os.geteuid()
    base = _runtime_dir(uid) or tempfile.gettempdir()
    return os.path.join(base, f"keyedlock-{uid}", _DEFAULT_NAME)


def _open_default() -> tuple[int, str]:
    """Open (creating if needed) the default lock file in the user's private directory.

    Refuses a directory that is a symbolic link, is owned by another user or
    is accessible to group or others, and a lock file that is a symbolic
    link or not a regular file (PermissionError naming the problem).
    """
    path = default_path()
    directory = os.path.dirname(path)
    uid = os.geteuid()
    with contextlib.suppress(FileExistsError):
        os.mkdir(directory, 0o700)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PermissionError(
                f"refusing the lock directory {directory!r}: it is a symbolic link or not a "
                "directory (someone else may have planted it); remove it, or pass path="
            ) from None
        raise
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != uid:
            raise PermissionError(
                f"refusing the lock directory {directory!r}: it is owned by uid {st.st_uid}, "
                f"not by this user (uid {uid}); remove it, or pass path="
            )
        if st.st_mode & 0o077:
            raise PermissionError(
                f"refusing the lock directory {directory!r}: its mode is "
                f"{stat.S_IMODE(st.st_mode):#o}, but it must be private to its owner (0o700); "
                "fix it with chmod 700, or pass path="
            )
        try:
            fd = os.open(
                _DEFAULT_NAME,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=dir_fd,
            )
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise PermissionError(
                    f"refusing the lock file {path!r}: it is a symbolic link"
                ) from None
            raise
    finally:
        os.close(dir_fd)
    return fd, path


def not_held_error(local_key: object) -> RuntimeError:
    """The error of a release by a caller that does not hold ``local_key`` in the lock file."""
    return RuntimeError(
        f"release of key {local_key!r}, which this caller does not hold in the lock file "
        "(not acquired yet, released already, or acquired before a fork by the parent process)"
    )


def _open_path(path: str, *, follow: bool, create: bool) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT
    if not follow:
        flags |= os.O_NOFOLLOW
    return os.open(path, flags, 0o600)


def _identity(fd: int) -> tuple[int, int]:
    """The file a descriptor is open on: (device, inode)."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


# -- fork safety ------------------------------------------------------------

#: Guards every open, registration and close of a lock-file descriptor, and the pending waits.
#: ``fork`` holds it, so a child's view of its inherited descriptors is exact. Reentrant: a
#: garbage-collected scope may be finalized in a thread that holds it.
_FDS_LOCK = threading.RLock()

_scopes: weakref.WeakSet[FileScope] = weakref.WeakSet()


def _before_fork() -> None:
    _FDS_LOCK.acquire()


def _after_fork_in_parent() -> None:
    _FDS_LOCK.release()


def _after_fork_in_child() -> None:
    global _FDS_LOCK
    _FDS_LOCK = threading.RLock()  # the parent's stays owned by a thread that is not here
    for scope in list(_scopes):
        scope._forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


# -- the scope --------------------------------------------------------------


class _KernelWait:
    """A blocking ``F_OFD_SETLKW`` on a private descriptor, in a helper thread."""

    __slots__ = ("fd", "job", "offset", "scope")

    def __init__(self, scope: FileScope, offset: KeyOffset, fd: int) -> None:
        self.scope = scope
        self.offset = offset
        self.fd = fd
        self.job: Offload[bytes] = Offload(
            partial(_fcntl, fd, _SETLKW, offset), self._drop, name="keyedlock-file-wait"
        )

    def _drop(self, finished: Finished[bytes]) -> None:
        """Nobody wants the outcome: give the lock back (if granted) and close the descriptor."""
        self.scope._end_wait(self, granted=finished.error is None)


class FileScope:
    """The :class:`~keyedlock._scopes._base.WideScope` of a lock file shared by the host.

    ``path``: the lock file (created if missing, mode 0600, symbolic links
    followed); None: :func:`default_path`, with its safety checks.
    """

    __slots__ = ("__weakref__", "_fd", "_fds", "_follow", "_held", "_ident", "_path", "_pending")

    _fd: int
    _fds: set[int]
    #: The descriptor through which each local holder holds its key's byte.
    _held: dict[Hold, int]
    _pending: dict[Hashable, _KernelWait]

    def __init__(
        self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None
    ) -> None:
        reason = unsupported_reason(sys.platform, fcntl)
        if reason is not None:
            raise NotImplementedError(reason)
        with _FDS_LOCK:
            if path is None:
                fd, self._path = _open_default()
                self._follow = False
            else:
                name = os.fsdecode(os.fspath(path))
                if not name:
                    raise ValueError("the lock file path is empty; pass a file name, or None")
                self._path = os.path.abspath(name)
                self._follow = True
                fd = _open_path(self._path, follow=True, create=True)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"the lock file {self._path!r} is not a regular file")
            except BaseException:
                os.close(fd)
                raise
            self._ident = _identity(fd)
            self._fd = fd
            self._fds = {fd}
            self._held = {}
            self._pending = {}
            _scopes.add(self)

    @property
    def path(self) -> str:
        """The lock file's absolute path."""
        return self._path

    def __del__(self) -> None:
        # Nothing can release this scope's keys any more: closing drops them, as an exit does.
        fds = getattr(self, "_fds", None)
        if not fds:
            return
        try:
            with _FDS_LOCK:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                fds.clear()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    # -- descriptors -------------------------------------------------------

    def _open_again(self, template: int) -> int:
        """Under _FDS_LOCK: a new open file description of the lock file, registered.

        Through ``/proc/self/fd/<template>`` (the very same file, whatever
        happened to its path) if ``template`` is an open descriptor of it,
        else through the path, checked to be the same file.
        """
        fd = -1
        if template >= 0:
            try:
                fd = os.open(f"/proc/self/fd/{template}", os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                fd = -1
        if fd < 0:
            try:
                fd = _open_path(self._path, follow=self._follow, create=False)
            except FileNotFoundError:
                fd = -1
            if fd < 0 or _identity(fd) != self._ident:
                if fd >= 0:
                    os.close(fd)
                raise RuntimeError(
                    f"the lock file {self._path!r} was replaced (deleted or moved) while in "
                    "use; processes using the old and the new file would not exclude each "
                    "other. Never delete a lock file that may be in use"
                )
        self._fds.add(fd)
        return fd

    def _shared(self) -> int:
        """The shared descriptor (opened again if a fork left this process without one)."""
        fd = self._fd
        if fd >= 0:
            return fd
        with _FDS_LOCK:
            if self._fd < 0:
                self._fd = self._open_again(-1)
            return self._fd

    def _close(self, fd: int) -> None:
        with _FDS_LOCK:
            if fd in self._fds:
                self._fds.discard(fd)
                os.close(fd)

    def _forked(self) -> None:
        """In a fork child: close every inherited descriptor (never unlock), hold nothing."""
        shared = self._fd
        fds = self._fds
        self._fd = -1
        self._fds = set()
        if shared >= 0:
            try:
                self._fd = self._open_again(shared)  # through /proc: no path lookup
            except Exception:
                self._fd = -1  # opened again on first use
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._held = {}
        self._pending = {}

    # -- WideScope ---------------------------------------------------------

    #: The key's :class:`KeyOffset`; TypeError unless a str, bytes or int (not bool).
    #: (The function itself, not a method calling it: one frame less per acquire.)
    local_key = staticmethod(_offset_of)

    def try_acquire(self, local_key: Hashable, hold: Hold) -> bool:
        """Lock the key's byte if it is free, without waiting (the uncontended path)."""
        if self._pending and local_key in self._pending:
            return False  # our own abandoned wait is still queued in the kernel
        fd = self._fd
        if fd < 0:
            fd = self._shared()
        offset: KeyOffset = local_key  # type: ignore[assignment]
        try:
            _fcntl(fd, _SETLK, offset)
        except OSError as exc:
            if exc.errno not in _BUSY:
                raise
            return False
        self._held[hold] = fd
        return True

    def acquire_sync(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """Lock the key's byte, blocking this thread; False if ``timeout`` elapses."""
        offset: KeyOffset = local_key  # type: ignore[assignment]
        if self.try_acquire(offset, hold):
            return True
        if timeout == 0:
            return False  # busy (or our own abandoned wait is still queued in the kernel)
        if timeout is None and offset not in self._pending:
            # Waits in this thread, through the shared descriptor: the wait is never
            # abandoned (KeyboardInterrupt ends the system call, holding nothing).
            fd = self._shared()
            _fcntl(fd, _SETLKW, offset)
            self._held[hold] = fd
            return True
        wait = self._start_wait(offset)
        finished = wait.job.wait(timeout)
        return finished is not None and self._settle(wait, finished, hold)

    async def acquire_async(self, local_key: Hashable, hold: Hold, timeout: float | None) -> bool:
        """As :meth:`acquire_sync`; a wait runs in a helper thread and stays cancellable."""
        offset: KeyOffset = local_key  # type: ignore[assignment]
        if self.try_acquire(offset, hold):
            return True
        if timeout == 0:
            return False
        wait = self._start_wait(offset)
        finished = await wait.job.wait_async(timeout)
        return finished is not None and self._settle(wait, finished, hold)

    def holds(self, hold: Hold) -> bool:
        """True if ``hold`` holds its key's byte."""
        return hold in self._held

    def release(self, local_key: Hashable, hold: Hold) -> None:
        """Unlock the key's byte through the descriptor ``hold`` holds it by."""
        fd = self._held.pop(hold, None)  # one atomic step: only one release gets it
        if fd is None:
            raise not_held_error(local_key)
        offset: KeyOffset = local_key  # type: ignore[assignment]
        _fcntl(fd, _SETLK, offset.unlock)
        if fd != self._fd:
            self._close(fd)

    def locked(self, local_key: Hashable) -> bool:
        """True if another open file description holds the key's byte (``F_OFD_GETLK``).

        A lock taken through the shared descriptor does not show (it is the
        asking description's own): the caller asks the local table first,
        and only a local holder locks through that descriptor.
        """
        reply = _fcntl(self._shared(), _GETLK, cast(KeyOffset, local_key))
        locked: bool = _FLOCK.unpack(reply)[0] != _UNLCK
        return locked

    # -- kernel waits in helper threads ------------------------------------

    def _start_wait(self, offset: KeyOffset) -> _KernelWait:
        """Adopt the offset's pending kernel wait, or start one on a private descriptor."""
        with _FDS_LOCK:
            wait = self._pending.get(offset)
            if wait is not None and wait.job.claim():
                return wait
            # None pending, or it just finished unclaimed (it is being dropped).
            wait = _KernelWait(self, offset, self._open_again(self._fd))
            wait.job.claim()
            self._pending[offset] = wait
        wait.job.start()
        return wait

    def _settle(self, wait: _KernelWait, finished: Finished[bytes], hold: Hold) -> bool:
        """The claimant got the wait's outcome: hold through its descriptor, or raise."""
        error = finished.error
        if error is not None:
            self._end_wait(wait, granted=False)
            raise error
        with _FDS_LOCK:
            if self._pending.get(wait.offset) is wait:
                del self._pending[wait.offset]
        self._held[hold] = wait.fd
        return True

    def _end_wait(self, wait: _KernelWait, granted: bool) -> None:
        """Forget a kernel wait nobody holds through: unlock if granted, close its descriptor."""
        with _FDS_LOCK:
            if self._pending.get(wait.offset) is wait:
                del self._pending[wait.offset]
            if wait.fd in self._fds:
                if granted:
                    with contextlib.suppress(OSError):  # closing it below drops the lock too
                        _fcntl(wait.fd, _SETLK, wait.offset.unlock)
                self._fds.discard(wait.fd)
                os.close(wait.fd)
