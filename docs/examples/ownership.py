"""Who may release: release(key) frees whoever holds; a context manager frees only its own hold."""

import threading

from keyedlock import KeyedLock

lock = KeyedLock()

# Not reentrant: a blocking re-acquire by the owner raises instead of deadlocking.
with lock("k"):
    try:
        lock.acquire("k")
    except RuntimeError as exc:
        print("re-acquire:", str(exc).split(";")[0])
    assert lock.acquire("k", blocking=False) is False  # a non-blocking try just fails

# Like threading.Lock, any thread may release a key acquired elsewhere.
assert lock.acquire("job")
t = threading.Thread(target=lock.release, args=("job",))
t.start()
t.join(timeout=10)
assert not lock.locked("job")

# A context manager whose hold was released by someone else raises on exit,
# and leaves the key's new holder alone.
try:
    with lock("k"):
        lock.release("k")  # released behind the context manager's back
        assert lock.acquire("k")  # a new holder
except RuntimeError as exc:
    print("exit:", exc)
assert lock.locked("k")  # still held by the new holder
lock.release("k")

try:
    lock.release("k")
except RuntimeError as exc:
    print("release:", exc)  # release of key 'k', which is not held
assert len(lock) == 0
