"""fork: a child process starts holding nothing, whatever the parent's threads were doing.

Each test runs a small program in a fresh interpreter (``run_python``) whose parent has
threads holding keys, waiting for them, running a shared call, or inside the table's guard
at the moment it forks; the child must find every key free and every lock usable. (The file,
manager and Redis scopes have tests of their own for their wider state.)
"""

from __future__ import annotations

import os

import pytest

from ..support import run_python

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

HELD_BY_THREADS = """
import os, sys, threading, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # (3.12: fork with threads running)
from keyedlock import KeyedLock, SingleFlight

lock, flight = KeyedLock(), SingleFlight()
holding, running, done = threading.Event(), threading.Event(), threading.Event()

def hold():
    with lock("k"):
        holding.set()
        done.wait()

def wait():
    with lock("k"):
        pass

def lead():
    def call():
        running.set()
        done.wait()
        return "parent's"
    flight.do_sync("call", call)

threads = [threading.Thread(target=hold)]
threads[0].start(); holding.wait()
threads.append(threading.Thread(target=wait)); threads[-1].start()
threads.append(threading.Thread(target=lead)); threads[-1].start(); running.wait()
while lock.waiters("k") != 1:
    pass
pid = os.fork()
if pid == 0:
    code = 1
    try:
        assert not lock.locked("k") and len(lock) == 0 and lock.waiters("k") == 0
        with lock("k", timeout=5):
            pass
        assert not flight.in_flight("call") and len(flight) == 0
        assert flight.do_sync("call", lambda: "child's") == "child's"
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
done.set()
for thread in threads:
    thread.join()
assert len(lock) == 0 and len(flight) == 0
print("child", os.waitstatus_to_exitcode(status))
"""

GUARD_HELD = """
import faulthandler, os, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)
from keyedlock import KeyedLock

hashing = threading.Event()
hashes = []

class SlowKey:
    # The waiter hashes it three times: in lock(key), in the first try, and in queueing,
    # under the table's guard: there it stays a while.
    def __hash__(self):
        if threading.current_thread().name == "waiter":
            hashes.append(1)
            if len(hashes) == 3:
                hashing.set()
                time.sleep(1)
        return 1

lock, key = KeyedLock(), SlowKey()
assert lock.acquire(key)
ctx = lock("entered before the fork"); ctx.__enter__()
waiter = threading.Thread(target=lambda: lock.acquire(key), name="waiter", daemon=True)
waiter.start(); hashing.wait()
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(20, exit=True)  # (a hang fails the test, not the run)
    code = 1
    try:
        with lock("unrelated", timeout=5):
            pass
        ctx.__exit__(None, None, None)  # the parent's hold: nothing to do with the child's
        assert len(lock) == 0
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
print("child", os.waitstatus_to_exitcode(status))
"""


def test_a_child_finds_free_what_the_parents_threads_held_waited_for_or_ran() -> None:
    assert run_python(HELD_BY_THREADS).strip() == "child 0"


def test_a_child_forked_while_a_thread_was_inside_the_tables_guard_can_use_the_lock() -> None:
    assert run_python(GUARD_HELD).strip() == "child 0"


WATCHED = """
import logging, os, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)
from keyedlock import KeyedLock

class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []
    def emit(self, record):
        self.messages.append(record.getMessage())

lock = KeyedLock(warn_after=0.2)
holding, done = threading.Event(), threading.Event()

def hold():
    with lock("parent's"):
        holding.set()
        done.wait()

thread = threading.Thread(target=hold, name="parent-holder")
thread.start(); holding.wait()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        records = Records()
        logging.getLogger("keyedlock").addHandler(records)
        with lock("child's"):
            deadline = time.monotonic() + 10
            while not records.messages and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep(0.5)  # (a warning about the parent's hold would come by now)
        assert len(records.messages) == 1, records.messages
        assert "child's" in records.messages[0], records.messages
        code = 0
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
done.set(); thread.join()
print("child", os.waitstatus_to_exitcode(status))
"""


def test_a_child_watches_its_own_holds_not_its_parents() -> None:
    """warn_after in a fork child: its long holds are logged; the parent's are not its own."""
    assert run_python(WATCHED).strip() == "child 0"
