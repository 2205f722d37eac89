"""Hosts: RedisKeyedLock makes a read-modify-write atomic per key for every process that uses
one Redis (or Valkey) server, and RedisSingleFlight runs a call once for all of them.

Four spawned processes (they could as well run on four hosts) each add 100 to a balance kept
in Redis, one read-modify-write at a time. Every write carries the holder's fencing token, and
the store refuses a token lower than the last one it accepted: a holder whose lease ran out
(stopped, or cut off from Redis, for longer than the lease) cannot overwrite newer data. Then
an asyncio task takes the same key and writes the same fenced way, through redis-py's asyncio
client, and two processes share one call of a slow function.

Needs a server: REDIS_URL (default redis://localhost:6379/0).
"""

import asyncio
import multiprocessing
import os
import time

import redis
import redis.asyncio

from keyedlock.redis import RedisKeyedLock, RedisSingleFlight

URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")

# The store's side of fencing: write only with a token at least as high as the last one seen.
FENCED_WRITE = """
local last = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
if tonumber(ARGV[1]) < last then
  return 0
end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'balance', ARGV[2])
return 1
"""


def deposit(times: int) -> None:
    lock = RedisKeyedLock(URL, prefix="example:", lease=5)
    store = redis.Redis.from_url(URL)
    write = store.register_script(FENCED_WRITE)
    for _ in range(times):
        with lock("account:42", timeout=30) as held:  # one process at a time, on every host
            balance = int(store.hget("example-account:42", "balance") or 0)
            accepted = write(keys=["example-account:42"], args=[held.token, balance + 1])
            assert accepted == 1, "a fresh holder's token is never refused"
    store.close()


def slow_lookup(process: str) -> str:
    flight = RedisSingleFlight(URL, prefix="example:", lease=5)
    calls = redis.Redis.from_url(URL)

    def compute() -> str:
        calls.incr("example-calls")
        time.sleep(2)  # a slow fetch: the other process joins the call meanwhile
        return f"computed once, by {process}"

    try:
        return flight.do_sync("rates:EUR", compute)
    finally:
        calls.close()


def ready(_: int) -> int:
    return os.getpid()


async def add_one_from_a_task() -> int:
    lock = RedisKeyedLock(URL, prefix="example:", lease=5)
    # A task talks to the store through redis-py's asyncio client: a blocking call would stop
    # the event loop, and every other task on it, while it waits for the server.
    async with redis.asyncio.Redis.from_url(URL) as store:
        write = store.register_script(FENCED_WRITE)
        async with lock("account:42", timeout=30) as held:  # the loop runs on while it waits
            balance = int(await store.hget("example-account:42", "balance") or 0)
            accepted = await write(keys=["example-account:42"], args=[held.token, balance + 1])
            assert accepted == 1, "a fresh holder's token is never refused"
    return balance + 1


if __name__ == "__main__":
    store = redis.Redis.from_url(URL)
    store.delete("example-account:42", "example-calls")

    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=deposit, args=(100,)) for _ in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
    balance = int(store.hget("example-account:42", "balance") or 0)
    print("balance:", balance)  # balance: 400
    assert balance == 400

    assert asyncio.run(add_one_from_a_task()) == 401

    with ctx.Pool(2) as pool:
        pool.map(ready, range(2))  # the workers are up (this module imported in them)
        results = pool.map(slow_lookup, ["first", "second"], chunksize=1)
    print(results)  # the same value twice
    assert results[0] == results[1]
    assert int(store.get("example-calls") or 0) == 1  # one call for both processes
    store.delete("example-account:42", "example-calls")
    store.close()
