"""FileKeyedLock across real processes: fork and spawn children, unrelated programs, crashes.

Every child is reaped at teardown (killed first if still running) and every wait is bounded.
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import pytest

from keyedlock import FileKeyedLock

from ..support import WAIT, scope_of, start_thread, wait_until
from .file_support import (
    Children,
    count_under_key,
    fds_of,
    fork_child_exit,
    fork_child_report,
    helper_threads,
    hold_until_set,
    own_fds,
)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="open file description locks"),
    # Helper threads of earlier tests may linger while a test forks; newer Pythons warn.
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")

PROCESSES = 4
INCREMENTS = 200


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("timeout", [None, WAIT], ids=["in-thread", "helper"])
def test_exact_counter_across_processes(
    method: str, timeout: float | None, file_lock: FileKeyedLock, children: Children, tmp_path: Path
) -> None:
    """4 processes x 200 read-yield-write increments under one key lose no update."""
    ctx = FORK if method == "fork" else SPAWN
    counter = tmp_path / "counter"
    counter.write_text("0")
    start = ctx.Barrier(PROCESSES)
    workers = [
        # fork: the child inherits the object; spawn: it is pickled and reopens the path
        children.process(ctx, count_under_key, file_lock, str(counter), INCREMENTS, start, timeout)
        for _ in range(PROCESSES)
    ]
    children.join(workers)
    assert int(counter.read_text()) == PROCESSES * INCREMENTS


def test_unrelated_programs_exclude_each_other(
    file_lock: FileKeyedLock, children: Children, lock_path: str, tmp_path: Path
) -> None:
    """Two separate ``python -c`` programs sharing only the path."""
    first, second = children.agent(lock_path), children.agent(lock_path)
    assert first.ask("acquire", "k", 0) == "True"
    assert second.ask("locked", "k") == "True"
    assert second.ask("acquire", "k", 0) == "False"
    assert second.ask("acquire", "other", 0) == "True"  # different keys: in parallel
    assert file_lock.locked("k")
    assert file_lock.locked("other")
    assert not file_lock.acquire("k", timeout=0)
    second.send("acquire", "k", WAIT)  # waits in the kernel for the first program
    assert first.ask("release", "k") == "ok"
    assert second.reply() == "True"
    assert first.ask("acquire", "k", 0) == "False"
    assert second.ask("release", "k") == "ok"
    assert second.ask("release", "other") == "ok"
    assert not file_lock.locked("k")

    counter = tmp_path / "counter"
    counter.write_text("0")
    first.send("count", "counter", counter, INCREMENTS)
    second.send("count", "counter", counter, INCREMENTS)
    assert first.reply() == "done"
    assert second.reply() == "done"
    assert int(counter.read_text()) == 2 * INCREMENTS


def test_key_offsets_are_the_same_in_every_process(children: Children, lock_path: str) -> None:
    """Offsets come from a stable hash, not from the per-process salted hash()."""
    from keyedlock._scopes import key_offset

    agent = children.agent(lock_path)
    for key in ["user:42", "é/ü/中", "k" * 300]:
        assert agent.ask("offset", key) == str(key_offset(key))


@pytest.mark.parametrize("waiter", ["thread", "program"])
def test_sigkilled_holder_frees_its_keys(
    waiter: str, file_lock: FileKeyedLock, children: Children, lock_path: str
) -> None:
    """The kernel drops a killed process's locks at once: a waiter gets the key."""
    holder = children.agent(lock_path)
    assert holder.ask("acquire", "k", 0) == "True"
    assert file_lock.locked("k")
    if waiter == "thread":
        handle = start_thread(lambda: file_lock.acquire("k", timeout=WAIT), "waiter")
        wait_until(lambda: bool(scope_of(file_lock).pending), "the waiter waits in the kernel")
        killed = time.monotonic()
        holder.kill()
        assert handle.result() is True
        file_lock.release("k")
    else:
        other = children.agent(lock_path)
        other.send("acquire", "k", WAIT)
        killed = time.monotonic()
        holder.kill()
        assert other.reply() == "True"
    assert time.monotonic() - killed < WAIT  # at once: far below the bound, never a poll


def test_sigkilled_multiprocessing_holder(file_lock: FileKeyedLock, children: Children) -> None:
    held = FORK.Event()
    holder = children.process(FORK, hold_until_set, file_lock.path, "k", held, None)
    assert held.wait(WAIT)
    assert file_lock.locked("k")
    assert not file_lock.acquire("k", timeout=0)
    holder.kill()
    assert file_lock.acquire("k", timeout=WAIT)
    file_lock.release("k")


def test_fork_child_holds_nothing_and_never_drops_the_parents_keys(
    file_lock: FileKeyedLock, children: Children, lock_path: str
) -> None:
    other = children.agent(lock_path)
    assert other.ask("acquire", "w", 0) == "True"
    assert file_lock.acquire("k")
    # A pending kernel wait (on the waits' descriptor) exists when the child forks.
    assert not file_lock.acquire("w", timeout=0.01)
    assert scope_of(file_lock).pending
    try:
        theirs_conn, ours_conn = FORK.Pipe(duplex=False)
        child = children.process(FORK, fork_child_report, file_lock, "k", ours_conn)
        ours_conn.close()
        assert theirs_conn.poll(WAIT), "the fork child did not report"
        report = theirs_conn.recv()
        children.join([child])
        assert report["len"] == 0  # local state starts empty
        assert report["locked"] is True  # the parent's lock, seen through the kernel
        assert report["try"] is False  # the parent holds it, not the child
        assert "does not hold" in str(report["release"]) or "not held" in str(report["release"])
        assert report["fds"] == 1  # inherited descriptors closed; one description of its own
        # The child closed its copies without unlocking: the parent still holds "k".
        assert other.ask("acquire", "k", 0) == "False"
        assert file_lock.locked("k")
    finally:
        file_lock.release("k")
    assert other.ask("acquire", "k", WAIT) == "True"
    # The parent's pending wait still works: it gets "w" and, abandoned, drops it at once.
    assert other.ask("release", "w") == "ok"
    wait_until(lambda: not scope_of(file_lock).pending, "the abandoned wait ends")
    assert other.ask("acquire", "w", WAIT) == "True"
    assert fds_of(lock_path) == own_fds(file_lock)
    wait_until(lambda: not helper_threads(), "the helper thread exits")


def test_fork_child_leaving_the_parents_with_never_unlocks(
    file_lock: FileKeyedLock, children: Children, lock_path: str
) -> None:
    other = children.agent(lock_path)
    ctx = file_lock("k")
    with ctx:
        theirs_conn, ours_conn = FORK.Pipe(duplex=False)
        child = children.process(FORK, fork_child_exit, ctx, ours_conn)
        ours_conn.close()
        assert theirs_conn.poll(WAIT), "the fork child did not report"
        report = theirs_conn.recv()
        children.join([child])
        assert "does not hold" in report  # RuntimeError: the key is the parent's
        assert other.ask("acquire", "k", 0) == "False"  # and the parent still holds it
        assert file_lock.locked("k")
    assert not file_lock.locked("k")
    assert other.ask("acquire", "k", WAIT) == "True"


def test_lock_object_travels_to_spawn_children_by_path(file_lock: FileKeyedLock) -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(file_lock))
    assert isinstance(copy, FileKeyedLock)
    assert copy is not file_lock
    assert copy.path == file_lock.path
    with file_lock("k"):
        assert not copy.acquire("k", timeout=0)  # a separate description: excluded
    assert len(copy) == 0
