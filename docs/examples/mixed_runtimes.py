"""One key, three runtimes: a thread, an asyncio task and a trio task exclude each other."""

import asyncio
import threading
import time

import trio

from keyedlock import klock

inside = 0  # how many callers are in the critical section right now
most_inside = 0
done: list[str] = []
start = threading.Barrier(3)


def enter(who: str) -> None:
    global inside, most_inside
    inside += 1
    most_inside = max(most_inside, inside)
    done.append(who)


def leave() -> None:
    global inside
    inside -= 1


def in_a_thread() -> None:
    start.wait(timeout=10)
    for _ in range(20):
        with klock("report:2024"):
            enter("thread")
            time.sleep(0.0005)
            leave()


async def asyncio_main() -> None:
    for _ in range(20):
        async with klock("report:2024"):
            enter("asyncio")
            await asyncio.sleep(0.0005)
            leave()


async def trio_main() -> None:
    for _ in range(20):
        async with klock("report:2024"):
            enter("trio")
            await trio.sleep(0.0005)
            leave()


def run_asyncio() -> None:
    start.wait(timeout=10)
    asyncio.run(asyncio_main())


def run_trio() -> None:
    start.wait(timeout=10)
    trio.run(trio_main)


workers = [threading.Thread(target=f) for f in (in_a_thread, run_asyncio, run_trio)]
for w in workers:
    w.start()
for w in workers:
    w.join(timeout=30)

print(len(done), "turns; at most", most_inside, "caller inside at once")  # 60 turns; at most 1
assert len(done) == 60
assert most_inside == 1
assert len(klock) == 0
