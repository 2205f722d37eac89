"""FileKeyedLock in one process: the KeyedLock contract, keys, the lock file and its safety."""

from __future__ import annotations

import gc
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

import keyedlock
import keyedlock._scopes._lockfile._filebackend as file_backend
import keyedlock._scopes._lockfile._files as file_files
import keyedlock._scopes._lockfile._keys as file_keys
import keyedlock._scopes._lockfile._paths as file_paths
import keyedlock._scopes._lockfile._scope as file_scope
from keyedlock import Aborted, FileKeyedLock, LockTimeout, QueueFull
from keyedlock._core import Hold

from ..support import (
    WAIT,
    run_python,
    scope_of,
    start_thread,
    three_tasks_two_wait,
    wait_until,
)
from .file_support import fds_of, wait_waiters

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="open file description locks"
)


# -- the KeyedLock contract ------------------------------------------------------------------


def test_acquire_release_and_introspection(file_lock: FileKeyedLock) -> None:
    assert not file_lock.locked("k")
    assert file_lock.acquire("k")
    assert file_lock.locked("k")
    assert len(file_lock) == 1
    assert file_lock.waiters("k") == 0
    file_lock.release("k")
    assert not file_lock.locked("k")
    assert len(file_lock) == 0
    with pytest.raises(RuntimeError, match="not held"):
        file_lock.release("k")
    with file_lock("k"):
        assert file_lock.locked("k")
    assert len(file_lock) == 0


def test_timeout_zero_tries_once(file_lock: FileKeyedLock) -> None:
    held = start_thread(lambda: file_lock.acquire("k"), "holder")
    assert held.result() is True
    assert file_lock.acquire("k", timeout=0) is False
    assert file_lock.acquire("k", blocking=False) is False
    with pytest.raises(LockTimeout, match="'k' is busy"), file_lock("k", timeout=0):
        pytest.fail("entered a held key")
    with pytest.raises(LockTimeout, match="timed out after"), file_lock("k", timeout=0.01):
        pytest.fail("entered a held key")
    file_lock.release("k")  # any thread may release
    assert len(file_lock) == 0


def test_blocking_reacquire_by_the_holder_raises(file_lock: FileKeyedLock) -> None:
    with file_lock("k"):
        with pytest.raises(RuntimeError, match="already held by this owner"):
            file_lock.acquire("k")
        assert file_lock.acquire("k", blocking=False) is False
    assert len(file_lock) == 0


class _RaceAfterRead(dict[Hold, int]):
    """A scope's hold records that run ``between`` once, right after their first read (the
    moment before an exit claims its record: a race only a free-threaded build can hit)."""

    def __init__(self, records: dict[Hold, int], between: Callable[[], None]) -> None:
        super().__init__(records)
        self.between: Callable[[], None] | None = between

    def __getitem__(self, hold: Hold) -> int:
        value = super().__getitem__(hold)
        between, self.between = self.between, None
        if between is not None:
            between()
        return value


def test_an_exit_racing_a_release_never_unlocks_the_next_holder(lock_path: str) -> None:
    """Another caller's ``release(key)`` lands while a context exits: the next holder is safe.

    The release lands at the worst moment, inside the context's own exit,
    and then a new caller takes the key. The context must neither unlock the
    new holder's byte in the lock file nor release its local hold: it says
    that its hold was released by another caller.
    """
    lock, other = FileKeyedLock(lock_path), FileKeyedLock(lock_path)
    scope = scope_of(lock)
    ctx = lock("k")

    def release_then_take() -> None:
        lock.release("k")  # another caller releases the holder's hold...
        assert lock.acquire("k", blocking=False)  # ...and the next holder takes the key

    ctx.__enter__()
    scope.held = _RaceAfterRead(scope.held, release_then_take)
    with pytest.raises(RuntimeError, match="already released by another caller"):
        ctx.__exit__(None, None, None)
    assert other.locked("k")  # the next holder holds the key on the host...
    assert not other.acquire("k", blocking=False)
    assert lock.locked("k")  # ...and here
    assert len(lock) == 1
    lock.release("k")
    assert other.acquire("k", blocking=False)
    other.release("k")
    assert len(lock) == 0


def test_release_hands_the_key_to_local_waiters_in_order(lock_path: str) -> None:
    """``release(key)`` by any thread passes the key to the first local waiter, on the host too."""
    lock, other = FileKeyedLock(lock_path), FileKeyedLock(lock_path)
    assert lock.acquire("k")
    got: list[int] = []

    def waiter(i: int) -> bool:
        acquired = lock.acquire("k")
        got.append(i)
        return acquired

    waiters = []
    for i in range(3):
        waiters.append(start_thread(partial(waiter, i), f"w{i}"))
        wait_waiters(lock, "k", i + 1)
    for i in range(3):
        lock.release("k")  # not by the holder's own thread
        assert waiters[i].result() is True
        assert got == list(range(i + 1))  # first come, first served
        assert other.locked("k")  # the new holder holds it in the lock file
        assert not other.acquire("k", blocking=False)
    lock.release("k")
    assert len(lock) == 0
    assert other.acquire("k", blocking=False)
    other.release("k")


def test_release_of_a_caller_still_waiting_in_the_kernel_raises(lock_path: str) -> None:
    """A caller first in this process's line, waiting in the kernel for another holder,
    holds nothing yet: ``release(key)`` refuses, and the caller goes on waiting."""
    lock, other = FileKeyedLock(lock_path), FileKeyedLock(lock_path)
    assert other.acquire("k")
    waiting = start_thread(lambda: lock.acquire("k", timeout=WAIT), "waiting")
    wait_until(lambda: len(lock) == 1, "the caller waits in the kernel")
    with pytest.raises(RuntimeError, match="does not hold in the lock file"):
        lock.release("k")
    assert len(lock) == 1
    other.release("k")
    assert waiting.result() is True
    assert not other.acquire("k", blocking=False)
    lock.release("k")
    assert len(lock) == 0


def test_an_interrupted_release_leaves_nothing_held(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt in the middle of ``release(key)`` still frees the key here."""
    lock = FileKeyedLock(lock_path)
    real = file_keys.fcntl_call

    def interrupted(fd: int, cmd: int, arg: bytes) -> bytes:
        real(fd, cmd, arg)
        raise KeyboardInterrupt

    assert lock.acquire("k")
    # (The backend's written-out release unlocks through its own module's name.)
    monkeypatch.setattr(file_scope, "fcntl_call", interrupted)
    monkeypatch.setattr(file_backend, "fcntl_call", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lock.release("k")
    monkeypatch.setattr(file_scope, "fcntl_call", real)
    monkeypatch.setattr(file_backend, "fcntl_call", real)
    assert len(lock) == 0
    assert not lock.locked("k")
    assert lock.acquire("k", blocking=False)
    lock.release("k")


def test_a_dropped_lock_closes_its_file_though_the_holder_it_watched_goes_on(
    lock_path: str,
) -> None:
    """A caller that waited behind an acquire() makes the lock watch the holder's thread (for
    an end without release); the watch must not keep the lock, nor its descriptors, alive
    for as long as that thread (here the main one) lives."""
    lock = FileKeyedLock(lock_path)
    assert lock.acquire("k")
    waiter = start_thread(partial(lock.acquire, "k", timeout=WAIT), "waiter")
    wait_waiters(lock, "k", 1)
    lock.release("k")  # to the waiter
    assert waiter.result() is True
    lock.release("k")
    assert fds_of(lock_path)
    del lock, waiter
    gc.collect()
    assert fds_of(lock_path) == []


def test_a_dropped_lock_with_warn_after_closes_its_file(lock_path: str) -> None:
    """``warn_after`` gives the lock a context class of its own, watched by a thread of the
    process: neither may keep the lock's descriptors once it is dropped."""
    lock = FileKeyedLock(lock_path, warn_after=60)
    with lock("k"):
        pass
    assert fds_of(lock_path)
    del lock
    gc.collect()
    assert fds_of(lock_path) == []


def test_two_objects_on_one_file_exclude_each_other(lock_path: str) -> None:
    first, second = FileKeyedLock(lock_path), FileKeyedLock(lock_path)
    with first("k"):
        assert second.locked("k")
        assert not second.acquire("k", timeout=0)
    assert second.acquire("k", timeout=0)
    second.release("k")


def test_max_waiters_is_per_process(lock_path: str) -> None:
    lock = FileKeyedLock(lock_path, max_waiters=1)
    assert lock.max_waiters == 1
    assert lock.acquire("k")
    waiter = start_thread(lambda: lock.run_sync("k", lambda: "ran"), "waiter")
    wait_waiters(lock, "k", 1)
    assert lock.waiters("k") == 1
    extra = start_thread(lambda: lock.acquire("k", timeout=WAIT), "extra")
    with pytest.raises(QueueFull):
        extra.result()
    lock.release("k")
    assert waiter.result() == "ran"
    assert len(lock) == 0


def test_max_waiters_counts_the_first_caller_waiting_for_another_process(lock_path: str) -> None:
    """The caller that waits in the kernel (another process holds the key) is one of the
    key's waiters, for max_waiters as for waiters(key), from the moment it takes the key
    here: of three callers started at once with max_waiters=2, two wait and one is refused,
    whatever their timing."""
    other = FileKeyedLock(lock_path)  # (an open file description of its own: another process)
    assert other.acquire("k")
    lock = FileKeyedLock(lock_path, max_waiters=2)
    go = threading.Barrier(3)

    def caller() -> str:
        go.wait(WAIT)
        try:
            return lock.run_sync("k", lambda: "ran", timeout=WAIT)
        except QueueFull:
            return "refused"

    callers = [start_thread(caller, f"caller {i}") for i in range(3)]
    wait_until(lambda: sum(c.finished.is_set() for c in callers) == 1, "one caller is refused")
    assert lock.waiters("k") == 2
    other.release("k")
    assert sorted(c.result() for c in callers) == ["ran", "ran", "refused"]
    assert len(lock) == 0


@pytest.mark.anyio
async def test_max_waiters_counts_the_first_task_from_the_moment_it_takes_the_key(
    lock_path: str,
) -> None:
    """As above, with tasks (under trio the first one checkpoints before it reaches the
    kernel): of three started at once with max_waiters=2, two wait and one is refused."""
    other = FileKeyedLock(lock_path)
    assert other.acquire("k", blocking=False)  # (a blocking one is refused in a task)
    await three_tasks_two_wait(FileKeyedLock(lock_path, max_waiters=2), lambda: other.release("k"))


def test_on_error_stop_aborts_this_processs_waiters(file_lock: FileKeyedLock) -> None:
    gate = threading.Event()

    def fail() -> None:
        assert gate.wait(WAIT)
        raise ValueError("boom")

    runner = start_thread(lambda: file_lock.run_sync("k", fail, on_error="stop"), "runner")
    wait_until(lambda: file_lock.locked("k"), "the runner holds the key")
    queued = start_thread(lambda: file_lock.acquire("k", timeout=WAIT), "queued")
    wait_waiters(file_lock, "k", 1)
    gate.set()
    with pytest.raises(ValueError, match="boom"):
        runner.result()
    with pytest.raises(Aborted) as info:
        queued.result()
    assert isinstance(info.value.__cause__, ValueError)
    assert not file_lock.locked("k")


def test_run_run_sync_and_guard(file_lock: FileKeyedLock) -> None:
    assert file_lock.run_sync("k", lambda x: x + 1, 1) == 2

    @file_lock.guard("order:{order_id}")
    def ship(order_id: int) -> bool:
        return file_lock.locked(f"order:{order_id}")

    assert ship(7) is True
    assert not file_lock.locked("order:7")


@pytest.mark.anyio
async def test_async_api(file_lock: FileKeyedLock) -> None:
    async with file_lock("k"):
        assert file_lock.locked("k")
        assert await file_lock.acquire_async("k", timeout=0) is False
    assert await file_lock.acquire_async("k") is True
    file_lock.release("k")

    async def body(x: int) -> int:
        await anyio.lowlevel.checkpoint()
        return x * 2

    assert await file_lock.run("k", body, 21) == 42

    @file_lock.guard("k")
    async def guarded() -> bool:
        return file_lock.locked("k")

    assert await guarded() is True
    with pytest.raises(RuntimeError, match="async with"), file_lock("k"):
        pass  # a blocking `with` inside an event loop is refused
    assert file_lock.acquire("k", blocking=False) is True  # non-blocking is allowed here
    file_lock.release("k")


# -- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [1.0, None, ("a", 1), object(), True, False, bytearray(b"k"), frozenset()],
    ids=["float", "None", "tuple", "object", "True", "False", "bytearray", "frozenset"],
)
def test_keys_other_than_str_bytes_int_are_refused(file_lock: FileKeyedLock, key: object) -> None:
    with pytest.raises(TypeError, match="keys must be str, bytes or int"):
        file_lock(key)
    with pytest.raises(TypeError, match="keys must be str, bytes or int"):
        file_lock.locked(key)


def test_keys_equal_to_cached_keys_are_still_refused(file_lock: FileKeyedLock) -> None:
    """Offsets of used keys are cached, but True == 1 == 1.0 never shares 1's entry."""
    for key in (1, 0, "1", b"1"):
        with file_lock(key):
            pass
    for refused in (True, False, 1.0, 0.0):
        with pytest.raises(TypeError, match="keys must be str, bytes or int"):
            file_lock(refused)
    assert len(file_lock) == 0


def test_str_and_bytes_keys_are_never_compared(tmp_path: Path) -> None:
    """An ASCII str and the same bytes hash alike; the key cache must never compare them,
    since under ``python -bb`` that comparison raises BytesWarning."""
    code = f"""
from keyedlock import FileKeyedLock
lock = FileKeyedLock({str(tmp_path / "bb.lock")!r})
for key in ("user:1", b"user:1", "user:1", b"user:1"):
    with lock(key):
        pass
print("ok")
"""
    assert run_python(code, "-bb").strip() == "ok"


def test_unhashable_key_is_refused(file_lock: FileKeyedLock) -> None:
    with pytest.raises(TypeError, match=r"keys must be str, bytes or int.*got unhashable 'list'"):
        file_lock.acquire(["k"])  # type: ignore[arg-type]


def test_str_bytes_and_int_keys_are_distinct(file_lock: FileKeyedLock) -> None:
    offsets = {file_keys.key_offset(k) for k in ["1", b"1", 1]}
    assert len(offsets) == 3
    with file_lock("1"):
        assert file_lock.acquire(b"1", timeout=0)
        assert file_lock.acquire(1, timeout=0)
        file_lock.release(b"1")
        file_lock.release(1)
    big = 10**40
    with file_lock(big), file_lock(-big):
        assert file_lock.locked(big)
        assert file_lock.locked(-big)


def test_offsets_are_valid_bytes_of_the_file() -> None:
    for key in ["", "k", b"\x00", 0, -1, 2**100, "\ud800"]:
        offset = file_keys.key_offset(key)
        assert 0 <= offset < 2**63 - 1


def test_colliding_keys_serialize(lock_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two keys with one offset are one local key: they take turns, never overlap."""
    monkeypatch.setattr(file_keys, "key_offset", lambda key: 12345)
    forget_offsets = partial(map, dict.clear, file_keys.offsets.values())
    list(forget_offsets())  # no offset cached from before: every key is hashed (to 12345)
    try:
        lock = FileKeyedLock(lock_path)
        with lock("a"):
            other = start_thread(lambda: lock.acquire("b", timeout=0), "other")
            assert other.result() is False
            assert lock.locked("b")
        assert lock.acquire("b", timeout=0)
        lock.release("b")
    finally:
        list(forget_offsets())  # and none cached for the tests after this one


def test_errors_name_the_key_not_the_offset(file_lock: FileKeyedLock) -> None:
    with pytest.raises(RuntimeError, match="'user:1'"):
        file_lock.release("user:1")
    assert repr(scope_of(file_lock).map_key("user:1")) == "'user:1'"


# -- the lock file ---------------------------------------------------------------------------


@pytest.fixture
def temp_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory in place of /tmp: the default path goes here."""
    base = tmp_path / "tmp"
    base.mkdir()
    monkeypatch.setattr(file_paths, "DEFAULT_BASE", str(base))
    return base


def test_default_path_is_private(temp_base: Path) -> None:
    lock = FileKeyedLock()
    directory = temp_base / f"keyedlock-{os.geteuid()}"
    assert lock.path == str(directory / "keys.lock")
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE(os.stat(lock.path).st_mode) & 0o077 == 0
    with lock("k"):
        assert FileKeyedLock().locked("k")  # the same default file


def test_default_path_is_one_for_every_environment(
    temp_base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cron job, a login session and a batch job see other $XDG_RUNTIME_DIR and $TMPDIR
    (or none): each must still find the one file, or they would not exclude each other."""
    expected = str(temp_base / f"keyedlock-{os.geteuid()}" / "keys.lock")
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    temp = tmp_path / "job-tmp"
    temp.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert FileKeyedLock().path == expected
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.delenv("TMPDIR")
    assert FileKeyedLock().path == expected


def test_a_default_directory_that_cannot_be_made_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_paths, "DEFAULT_BASE", str(tmp_path / "missing"))
    with pytest.raises(OSError, match=r"cannot make the default lock directory .* pass a path"):
        FileKeyedLock()


def test_default_dir_symlink_is_refused(temp_base: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (temp_base / f"keyedlock-{os.geteuid()}").symlink_to(elsewhere)
    with pytest.raises(PermissionError, match="symbolic link"):
        FileKeyedLock()


def test_default_lock_file_symlink_is_refused(temp_base: Path, tmp_path: Path) -> None:
    directory = temp_base / f"keyedlock-{os.geteuid()}"
    directory.mkdir(mode=0o700)
    (directory / "keys.lock").symlink_to(tmp_path / "target")
    with pytest.raises(PermissionError, match="symbolic link"):
        FileKeyedLock()
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("mode", [0o755, 0o770, 0o701])
def test_default_dir_open_to_others_is_refused(temp_base: Path, mode: int) -> None:
    directory = temp_base / f"keyedlock-{os.geteuid()}"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(PermissionError, match=f"mode is {mode:#o}"):
        FileKeyedLock()


def test_default_dir_of_another_user_is_refused(
    temp_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.geteuid()
    pretend = real + 1
    # The directory this user would use, created by someone else (here: the real user).
    (temp_base / f"keyedlock-{pretend}").mkdir(mode=0o700)
    monkeypatch.setattr(os, "geteuid", lambda: pretend)
    with pytest.raises(PermissionError, match=f"owned by uid {real}, not by this user"):
        FileKeyedLock()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_default_dir_chowned_to_another_user_is_refused(temp_base: Path) -> None:
    directory = temp_base / f"keyedlock-{os.geteuid()}"
    directory.mkdir(mode=0o700)
    os.chown(directory, 65534, 65534)
    with pytest.raises(PermissionError, match="owned by uid 65534"):
        FileKeyedLock()


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as two users needs root")
def test_default_dir_another_user_made_first_says_what_to_do() -> None:
    """Another user made the directory first, private to it (the user cannot even look
    inside, and cannot remove it from the sticky base): refused with what to do, not a bare
    EACCES."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to run as another user")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    env = {**os.environ, "PYTHONPATH": str(Path(keyedlock.__file__).parent.parent)}
    probe = [*as_nobody, "-c", "import keyedlock"]
    if subprocess.run(probe, capture_output=True, env=env, timeout=WAIT * 3).returncode:
        pytest.skip("this interpreter or keyedlock cannot be run by another user here")
    base = Path(tempfile.mkdtemp(prefix="keyedlock-base-", dir="/tmp"))
    try:
        base.chmod(0o1777)  # as /tmp
        (base / "keyedlock-65534").mkdir(mode=0o700)  # made by root, first
        code = (
            "import keyedlock._scopes._lockfile._paths as p, sys\n"
            f"p.DEFAULT_BASE = {str(base)!r}\n"
            "from keyedlock import FileKeyedLock\n"
            "try:\n    FileKeyedLock()\n"
            "except PermissionError as exc:\n    print(exc)\n"
        )
        proc = subprocess.run(
            [*as_nobody, "-c", code],
            capture_output=True,
            text=True,
            timeout=WAIT * 3,
            check=False,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(
            f"refusing the lock directory '{base}/keyedlock-65534': it is owned by uid 0, not "
            "by this user (uid 65534): another user made it first; have it removed"
        ), proc.stdout
        assert "pass a path to FileKeyedLock" in proc.stdout
    finally:
        shutil.rmtree(base)


def test_explicit_path_must_be_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        FileKeyedLock(fifo)
    with pytest.raises(IsADirectoryError):
        FileKeyedLock(tmp_path)


def test_explicit_path_is_created_private_and_accepts_pathlike(tmp_path: Path) -> None:
    lock = FileKeyedLock(tmp_path / "app.lock")
    assert lock.path == str(tmp_path / "app.lock")
    assert stat.S_IMODE(os.stat(lock.path).st_mode) & 0o077 == 0
    assert "app.lock" in repr(lock)


@pytest.mark.parametrize("use", ["with", "acquire"])
def test_a_lost_descriptor_is_opened_again_on_first_use(file_lock: FileKeyedLock, use: str) -> None:
    """A fork child that could not reopen the lock file (EMFILE, say) has no descriptor
    (-1) until its first acquire opens one: the fast paths must take the general path."""
    scope = scope_of(file_lock)
    file_lock.acquire("k", blocking=False)  # the key's offset is cached: the fast path's case
    file_lock.release("k")
    scope.fd = -1  # as _forked() leaves it when opening again failed
    if use == "with":
        with file_lock("k"):
            assert file_lock.locked("k")
    else:
        assert file_lock.acquire("k")
        file_lock.release("k")
    assert scope.fd >= 0
    assert not file_lock.locked("k")
    assert len(file_lock) == 0


def test_replaced_lock_file_is_detected(lock_path: str) -> None:
    """A descriptor is opened again through the path only if /proc is unusable; then a
    replaced file is refused rather than silently splitting the processes."""
    lock = FileKeyedLock(lock_path)
    os.unlink(lock_path)
    with pytest.raises(RuntimeError, match="was replaced"):
        scope_of(lock)._open_again(-1)
    assert not os.path.exists(lock_path)  # not created again
    Path(lock_path).write_text("")
    with pytest.raises(RuntimeError, match="was replaced"):
        scope_of(lock)._open_again(-1)
    assert scope_of(lock)._open_again(scope_of(lock).fd) >= 0  # through /proc: the same file


# -- platforms -------------------------------------------------------------------------------


def test_platform_without_ofd_locks_is_refused_at_construction(
    lock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_files, "fcntl_module", types.SimpleNamespace(fcntl=None))
    with pytest.raises(NotImplementedError, match="F_OFD_SETLK"):
        FileKeyedLock(lock_path)
    monkeypatch.setattr(file_files, "fcntl_module", None)
    with pytest.raises(NotImplementedError, match="fcntl"):
        FileKeyedLock(lock_path)


def test_module_imports_without_fcntl(lock_path: str) -> None:
    """As on Windows: importing works, constructing raises a clear error."""
    code = (
        "import sys; sys.modules['fcntl'] = None\n"
        "import keyedlock\n"
        "from keyedlock._filelock import FileKeyedLock\n"
        "try:\n"
        f"    FileKeyedLock({lock_path!r})\n"
        "except NotImplementedError as exc:\n"
        "    print('refused:', exc)\n"
    )
    out = run_python(code, "-I", timeout=WAIT)
    assert out.startswith("refused: FileKeyedLock needs POSIX file locks")


def test_statistics_say_locked_as_locked_does_while_a_waiter_takes_the_byte(
    file_lock: FileKeyedLock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key handed here to a waiter that has not locked its byte yet: locked, as
    ``locked(key)`` says, with that caller among the waiters (it still waits for the file)."""
    paused, resume = threading.Event(), threading.Event()
    acquire_sync = file_scope.FileScope.acquire_sync

    def pausing(self: file_scope.FileScope, *args: object) -> bool:
        if threading.current_thread().name == "waiter":
            paused.set()
            assert resume.wait(WAIT)
        return acquire_sync(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(file_scope.FileScope, "acquire_sync", pausing)
    file_lock.acquire("k")

    def wait() -> None:
        assert file_lock.acquire("k", timeout=WAIT)
        file_lock.release("k")

    waiter = start_thread(wait, "waiter")
    wait_until(lambda: file_lock.waiters("k") == 1, "the waiter queues")
    file_lock.release("k")  # handed to the waiter, which stops before its byte
    assert paused.wait(WAIT)
    try:
        stats = file_lock.statistics("k")
        assert file_lock.locked("k")
        assert stats.locked
        assert stats.waiters == 1
    finally:
        resume.set()
    waiter.result()
