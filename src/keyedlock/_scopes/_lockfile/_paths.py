"""The lock file of the lock-file scope: where it is and how it is opened, safely.

The lock file is never deleted (an empty file; deleting it while in use
would let processes holding the old file and processes opening a new one
miss each other).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Final

__all__ = [
    "default_path",
    "identity",
    "open_default",
    "open_path",
    "unsupported_reason",
]

_DEFAULT_NAME: Final = "keys.lock"
#: The directory the default lock file's private directory is made in (a variable only
#: for the tests: the same for every process of the host).
DEFAULT_BASE = "/tmp"


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


def default_path() -> str:
    """Where ``FileKeyedLock()`` keeps its lock file (nothing is created here).

    ``/tmp/keyedlock-<uid>/keys.lock``: one path for every process of the user, whatever
    its environment. Not ``$XDG_RUNTIME_DIR`` nor ``$TMPDIR``: a cron job, a login
    session, a batch job and a service each see other values of them (or none), and
    processes on two files would never exclude each other.
    """
    uid = os.geteuid()
    return os.path.join(DEFAULT_BASE, f"keyedlock-{uid}", _DEFAULT_NAME)


#: What to do about a default lock directory that another user made first (in /tmp, which
#: is sticky, only its owner or root may remove it).
_PLANTED: Final = (
    "have it removed (only its owner or root can), or pass a path to FileKeyedLock "
    "(--file on the command line) in a directory only this user can write to"
)


def _not_ours(directory: str, owner: int, uid: int) -> PermissionError:
    return PermissionError(
        f"refusing the lock directory {directory!r}: it is owned by uid {owner}, not by this "
        f"user (uid {uid}): another user made it first; {_PLANTED}"
    )


def open_default() -> tuple[int, str]:
    """Open (creating if needed) the default lock file in the user's private directory.

    Refuses a directory that is a symbolic link, is owned by another user or
    is accessible to group or others, and a lock file that is a symbolic
    link or not a regular file (PermissionError naming the problem).
    """
    path = default_path()
    directory = os.path.dirname(path)
    uid = os.geteuid()
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:  # (/tmp read-only, say)
        raise OSError(
            exc.errno,
            f"cannot make the default lock directory {directory!r} ({exc.strerror}); "
            "pass a path to FileKeyedLock (--file on the command line)",
        ) from exc
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise PermissionError(
                f"refusing the lock directory {directory!r}: it is a symbolic link or not a "
                f"directory (someone else may have planted it); {_PLANTED}"
            ) from None
        if exc.errno == errno.EACCES:
            owner = uid
            with contextlib.suppress(OSError):
                owner = os.lstat(directory).st_uid
            if owner != uid:
                raise _not_ours(directory, owner, uid) from None
        raise
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != uid:
            raise _not_ours(directory, st.st_uid, uid)
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


def open_path(path: str, *, follow: bool, create: bool) -> int:
    flags = os.O_RDWR | os.O_CLOEXEC
    if create:
        flags |= os.O_CREAT
    if not follow:
        flags |= os.O_NOFOLLOW
    return os.open(path, flags, 0o600)


def identity(fd: int) -> tuple[int, int]:
    """The file a descriptor is open on: (device, inode)."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
