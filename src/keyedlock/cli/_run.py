"""``keyedlock run KEY -- COMMAND ...``: run a command while holding a key in the host scope.

The key is taken in a :class:`~keyedlock.FileKeyedLock` (the lock file of
``--file``, or the default one), then COMMAND starts as a child process and
the key is held until the child ends; the exit status is the child's.

Signals. Before anything else the signals that are forwarded (:data:`FORWARDED`,
less those ignored when the program started, as under ``nohup``) and SIGCHLD
are blocked, in the main thread, so every thread started later (the wait for
the key may run in helper threads) has them blocked too; the main thread
takes them one at a time with ``sigwaitinfo``. There is no signal handler and
so no race between a signal and the start or the end of the child:

- While waiting for the key, a forwarded signal ends the program as that
  signal would have (its default action), having started nothing.
- While the command runs, each one is sent on to the child, except SIGINT and
  SIGQUIT sent by the terminal (Ctrl-C, Ctrl-\\): the terminal sends those to
  its whole foreground process group, which the child is in as well, and a
  second copy would count as a second Ctrl-C.
- SIGCHLD says the child changed state (or, while waiting, that the wait
  for the key is over: the waiting thread sends it to the main thread).

The child starts with ``posix_spawn``: with the signal mask the program
started with, SIGPIPE and SIGXFSZ back to their default action (Python
ignores them), SIGCHLD too (at its default action in this program, even if
it was ignored when it started) and every inheritable descriptor the program
itself inherited;
the lock file's descriptors are close-on-exec, so the child has none of
them. If this program is killed, the kernel drops the key with its last
descriptor (the child, if still running, keeps running without it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import shutil
import signal
import threading
from typing import Final, TextIO

from keyedlock import FileKeyedLock

from ._words import shell_word

__all__ = [
    "BUSY",
    "CANNOT_EXECUTE",
    "FORWARDED",
    "LOCK_FILE_ERROR",
    "NAMED_FORWARDED",
    "NOT_FOUND",
    "run_command",
]

#: The key could not be taken: still busy when ``--timeout`` elapsed, or busy with
#: ``--nonblock`` (sysexits' EX_TEMPFAIL: try again later).
BUSY: Final = 75
#: The lock file could not be opened or used (sysexits' EX_OSERR).
LOCK_FILE_ERROR: Final = 71
#: COMMAND was found but could not be executed (as shells say).
CANNOT_EXECUTE: Final = 126
#: COMMAND was not found (as shells say).
NOT_FOUND: Final = 127

#: The signals sent on to the command: those a user or a supervisor sends to end, stop
#: or tell a program something, whose default action would end this one (and leave the
#: command running without the key): every such signal but the faults a program raises
#: itself (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGSYS), and the real-time signals.
#: (SIGPIPE and SIGXFSZ are ignored in this program, as Python sets them.)
NAMED_FORWARDED: Final = tuple(
    getattr(signal, name)
    for name in (
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGQUIT",
        "SIGUSR1",
        "SIGUSR2",
        "SIGALRM",
        "SIGVTALRM",
        "SIGPROF",
        "SIGABRT",
        "SIGXCPU",
        "SIGIO",
        "SIGPWR",
        "SIGSTKFLT",
    )
    if hasattr(signal, name)  # (SIGPWR, SIGSTKFLT: Linux's)
)
#: :data:`NAMED_FORWARDED`, then the real-time signals (SIGRTMIN to SIGRTMAX), where there are.
FORWARDED: Final = NAMED_FORWARDED + tuple(
    range(getattr(signal, "SIGRTMIN", 0), getattr(signal, "SIGRTMAX", -1) + 1)
)

#: The signals a terminal sends to its whole foreground process group (the command's too).
_FROM_KEYBOARD: Final = frozenset({signal.SIGINT, signal.SIGQUIT})

#: ``si_code`` of a signal the kernel sent (a terminal's Ctrl-C), as opposed to kill().
_SI_KERNEL: Final = 0x80

#: What Python ignores and a command expects at its default action.
_DEFAULT_IN_CHILD: Final = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)


def _die_by(signum: int) -> int:
    """End this process by ``signum``'s default action, as if it had not been blocked.

    Returns (128 + ``signum``) only if the signal did not end the process.
    """
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # pending: the main thread blocks it
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})  # delivered here, now
    return 128 + signum


def _acquire(
    lock: FileKeyedLock, key: str, timeout: float | None, waited: set[signal.Signals]
) -> tuple[bool, BaseException | None]:
    """Take ``key``; (taken, error). A forwarded signal meanwhile ends the process.

    ``timeout=0`` tries once, here. Otherwise the wait runs in a thread,
    which wakes this one with SIGCHLD when it is over, while this thread
    takes the signals.
    """
    if timeout == 0:
        try:
            return lock.acquire(key, timeout=0), None
        except Exception as exc:
            return False, exc
    outcome: list[tuple[bool, BaseException | None]] = []
    main = threading.get_ident()

    def wait() -> None:
        try:
            outcome.append((lock.acquire(key, timeout=timeout), None))
        except BaseException as exc:
            outcome.append((False, exc))
        finally:
            signal.pthread_kill(main, signal.SIGCHLD)

    threading.Thread(target=wait, name="keyedlock-run-wait", daemon=True).start()
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            raise SystemExit(_die_by(info.si_signo))  # (the waiting thread holds nothing)
        if outcome:
            return outcome[0]


def _supervise(pid: int, waited: set[signal.Signals]) -> int:
    """Forward signals to the child ``pid`` until it ends; its exit status, shell style."""
    while True:
        info = signal.sigwaitinfo(waited)
        signum = info.si_signo
        if signum == signal.SIGCHLD:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                code = os.waitstatus_to_exitcode(status)
                return code if code >= 0 else 128 - code
            continue
        if signum in _FROM_KEYBOARD and info.si_code == _SI_KERNEL:
            continue  # the terminal sent it to the child too
        with contextlib.suppress(ProcessLookupError):  # gone: reaped at its SIGCHLD
            os.kill(pid, signum)


def _located(name: str) -> str | None:
    """The file ``posix_spawnp`` runs for ``name`` (a path to a file, or found on PATH), or
    None if there is none."""
    if "/" in name:
        return name if os.path.isfile(name) else None
    return shutil.which(name)


def _spawn(command: list[str], mask: set[int | signal.Signals]) -> int:
    """Start ``command`` (see the module docstring); its process id.

    A file found and executable but in no executable format (a script without
    ``#!``) runs with ``/bin/sh``, as ``execvp`` (and so ``flock(1)``) and the
    shells do; ``posix_spawnp`` does not.
    """
    try:
        return os.posix_spawnp(
            command[0], command, os.environ, setsigmask=mask, setsigdef=_DEFAULT_IN_CHILD
        )
    except OSError as exc:
        if exc.errno != errno.ENOEXEC:
            raise
        found = _located(command[0])
        if found is None:
            raise
        return os.posix_spawn(
            "/bin/sh",
            ["/bin/sh", found, *command[1:]],
            os.environ,
            setsigmask=mask,
            setsigdef=_DEFAULT_IN_CHILD,
        )


def run_command(
    key: str,
    command: list[str],
    *,
    path: str | None,
    timeout: float | None,
    prog: str,
    err: TextIO,
) -> int:
    """Run ``command`` holding ``key`` in the lock file ``path``; the exit status.

    ``timeout``: None waits as long as it takes, 0 tries once. ``prog``
    (the name of this command, ``... run``) prefixes the messages written
    to ``err``. Call it from the main thread
    of a process that has started no other thread.
    """
    # SIGCHLD ignored when the program started (inherited across exec) would have the kernel
    # reap the child unseen, and no SIGCHLD come: back to its default, in the child too.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    forwarded = [s for s in FORWARDED if signal.getsignal(s) != signal.SIG_IGN]
    waited = {*forwarded, signal.SIGCHLD}
    start_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)

    def say(message: str) -> None:
        print(f"{prog}: {message}", file=err, flush=True)

    try:
        lock = FileKeyedLock(path)
    except (OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        say(f"cannot use the lock file: {exc}")
        return LOCK_FILE_ERROR
    where = f"in the lock file {lock.path}"
    taken, error = _acquire(lock, key, timeout, waited)
    if error is not None:
        say(f"cannot take key {key!r} {where}: {error}")
        return LOCK_FILE_ERROR
    if not taken:
        why = "is busy" if timeout == 0 else f"was still busy after {timeout:g} s"
        see = f"{prog.removesuffix(' run')} holders"
        if path is not None:
            see += f" --file {shlex.quote(lock.path)}"
        if key.startswith("-"):
            see += " --"  # (the key is no option)
        say(f"key {key!r} {why} {where} (who holds it: {see} {shell_word(key)})")
        return BUSY
    try:
        try:
            pid = _spawn(command, start_mask)
        except FileNotFoundError:
            if _located(command[0]) is not None:  # (as bash says it; its status is 127 too)
                say(
                    f"{command[0]}: cannot execute: required file not found "
                    "(the interpreter its #! line names, or the loader it needs)"
                )
            else:
                say(f"{command[0]}: command not found")
            return NOT_FOUND
        except OSError as exc:
            say(f"{command[0]}: cannot execute: {exc.strerror or exc}")
            return CANNOT_EXECUTE
        return _supervise(pid, waited)
    finally:
        lock.release(key)
