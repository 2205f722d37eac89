"""The lock file's descriptors: opened, registered and closed safely, across ``fork``.

A :class:`LockFile` owns the *shared* descriptor (``fd``) and every other
one it opens (``fds``). Descriptors are opened, registered and closed under
:data:`FDS_LOCK`, which ``fork`` takes, so a child's list is exact; a fork
child closes (never unlocks: that would drop the parent's locks) every
inherited descriptor and opens one of its own. Descriptors are close-on-exec,
so programs started with ``exec`` inherit none.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import threading
import weakref

from ..._ki import internal
from ._keys import fcntl_module
from ._paths import default_path, identity, open_default, open_path, unsupported_reason

__all__ = ["FDS_LOCK", "LockFile", "fds_lock"]


def _out_of_descriptors(exc: OSError, path: str, remedy: str, again: bool = True) -> OSError:
    """A clear error for a descriptor the lock file could not get (``again``: a second one):
    what ran out, and ``remedy``."""
    limit = "the process's limit on open files (RLIMIT_NOFILE, `ulimit -n`)"
    if exc.errno == errno.ENFILE:
        limit = "the system-wide limit on open files"
    error = OSError(
        exc.errno,
        f"FileKeyedLock could not open the lock file {path!r}{' again' if again else ''}: "
        f"{limit} is reached; {remedy}",
    )
    error.__cause__ = exc
    return error


# -- fork safety ------------------------------------------------------------

#: Guards every open, registration and close of a lock-file descriptor, and the pending waits.
#: ``fork`` holds it, so a child's view of its inherited descriptors is exact. Reentrant: a
#: garbage-collected scope may be finalized in a thread that holds it.
FDS_LOCK = threading.RLock()

_files: weakref.WeakSet[LockFile] = weakref.WeakSet()


def fds_lock() -> threading.RLock:
    """:data:`FDS_LOCK` as it is now (a fork child makes a new one)."""
    return FDS_LOCK


def _before_fork() -> None:
    FDS_LOCK.acquire()


def _after_fork_in_parent() -> None:
    FDS_LOCK.release()


def _after_fork_in_child() -> None:
    global FDS_LOCK
    FDS_LOCK = threading.RLock()  # the parent's stays owned by a thread that is not here
    for lock_file in list(_files):
        lock_file.forked()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )


@internal
class LockFile:
    """The descriptors of one lock file (see the module docstring).

    ``path``: the lock file (created if missing, mode 0600, symbolic links
    followed); None: :func:`~._paths.default_path`, with its safety checks.
    """

    __slots__ = ("__weakref__", "_follow", "_ident", "_path", "fd", "fds")

    fd: int
    fds: set[int]

    def __init__(
        self, path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None = None
    ) -> None:
        reason = unsupported_reason(sys.platform, fcntl_module)
        if reason is not None:
            raise NotImplementedError(reason)
        with FDS_LOCK:
            try:
                if path is None:
                    fd, self._path = open_default()
                    self._follow = False
                else:
                    name = os.fsdecode(os.fspath(path))
                    if not name:
                        raise ValueError("the lock file path is empty; pass a file name, or None")
                    self._path = os.path.abspath(name)
                    self._follow = True
                    fd = open_path(self._path, follow=True, create=True)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    where = default_path() if path is None else self._path
                    raise _out_of_descriptors(exc, where, self.remedy(), again=False) from None
                raise
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise ValueError(f"the lock file {self._path!r} is not a regular file")
            except BaseException:
                os.close(fd)
                raise
            self._ident = identity(fd)
            self.fd = fd
            self.fds = {fd}
            _files.add(self)

    @property
    def path(self) -> str:
        """The lock file's absolute path."""
        return self._path

    def __del__(self) -> None:
        # Nothing can release this scope's keys any more: closing drops them, as an exit does.
        fds = getattr(self, "fds", None)
        if not fds:
            return
        try:
            with FDS_LOCK:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                fds.clear()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    # -- descriptors -------------------------------------------------------

    def remedy(self) -> str:
        """What to do when the descriptors run out (said by the error that reports it)."""
        return "raise the limit, or use fewer descriptors"

    def _open_again(self, template: int) -> int:
        """Under FDS_LOCK: a new open file description of the lock file, registered.

        Through ``/proc/self/fd/<template>`` (the very same file, whatever
        happened to its path) if ``template`` is an open descriptor of it,
        else through the path, checked to be the same file.
        """
        fd = -1
        if template >= 0:
            try:
                fd = os.open(f"/proc/self/fd/{template}", os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise _out_of_descriptors(exc, self._path, self.remedy()) from None
                fd = -1
        if fd < 0:
            try:
                fd = open_path(self._path, follow=self._follow, create=False)
            except FileNotFoundError:
                fd = -1
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    raise _out_of_descriptors(exc, self._path, self.remedy()) from None
                raise
            if fd < 0 or identity(fd) != self._ident:
                if fd >= 0:
                    os.close(fd)
                raise RuntimeError(
                    f"the lock file {self._path!r} was replaced (deleted or moved) while in "
                    "use; processes using the old and the new file would not exclude each "
                    "other. Never delete a lock file that may be in use"
                )
        self.fds.add(fd)
        return fd

    def shared(self) -> int:
        """The shared descriptor (opened again if a fork left this process without one)."""
        fd = self.fd
        if fd >= 0:
            return fd
        with FDS_LOCK:
            if self.fd < 0:
                self.fd = self._open_again(-1)
            return self.fd

    def forked(self) -> None:
        """In a fork child: close every inherited descriptor (never unlock), hold nothing."""
        shared = self.fd
        fds = self.fds
        self.fd = -1
        self.fds = set()
        if shared >= 0:
            try:
                self.fd = self._open_again(shared)  # through /proc: no path lookup
            except Exception:
                self.fd = -1  # opened again on first use
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
