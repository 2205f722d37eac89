"""What a key looks like now: statistics(key), keys(), and warn_after logging."""

import logging
import threading

from keyedlock import KeyedLock

logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")

klock = KeyedLock(warn_after=0.05)  # log a hold still held after 50 ms
logged = threading.Event()


class Seen(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logged.set()


logging.getLogger("keyedlock").addHandler(Seen())

entered = threading.Event()
release = threading.Event()


def worker() -> None:
    with klock("invoice:7"):
        entered.set()
        release.wait(10)


holder = threading.Thread(target=worker, name="billing-worker")
holder.start()
entered.wait(10)

stats = klock.statistics("invoice:7")
print(stats)
assert stats.locked
assert stats.holder is not None
assert (stats.holder.runtime, stats.holder.name) == ("thread", "billing-worker")
assert stats.held_for is not None  # recorded: this lock has warn_after
assert klock.keys() == ["invoice:7"]

assert logged.wait(10)  # "keyedlock: key 'invoice:7' has been held for 0.05 s ..."
release.set()
holder.join(10)
assert not klock.statistics("invoice:7").locked
assert klock.keys() == []
