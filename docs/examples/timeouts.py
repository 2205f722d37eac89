"""Timeouts: LockTimeout (a TimeoutError) for context managers, False for acquire()."""

import math
import threading

from keyedlock import KeyedLock, LockTimeout

lock = KeyedLock()
holding = threading.Event()
finish = threading.Event()


def holder() -> None:
    with lock("job:7"):
        holding.set()
        finish.wait(timeout=10)


t = threading.Thread(target=holder)
t.start()
holding.wait(timeout=10)

try:
    with lock("job:7", timeout=0.05):  # wait at most 50 ms
        raise AssertionError("unreachable: the key is held")
except TimeoutError as exc:  # LockTimeout is a TimeoutError
    print(f"gave up: {type(exc).__name__}: {exc}")

assert issubclass(LockTimeout, TimeoutError)
assert lock.acquire("job:7", timeout=0) is False  # 0: try once, never wait
assert lock.acquire("job:7", blocking=False) is False  # the same, threading.Lock style
assert lock.waiters("job:7") == 0  # a timed-out caller leaves nothing queued

finish.set()
t.join(timeout=10)
with lock("job:7", timeout=math.inf):  # inf (like None) waits as long as it takes
    print("got it")
assert len(lock) == 0
