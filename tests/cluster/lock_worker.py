"""A worker process of the cluster-scope tests: callers of a RedisKeyedLock / RedisSingleFlight,
steered by the test through JSON lines.

Run as ``python lock_worker.py CONFIG`` (CONFIG: JSON with ``url`` or ``nodes`` (host, port
pairs of a cluster), ``lease`` and ``prefix``). It reads commands on stdin and writes events
on stdout, one JSON object per line. Agents run in threads, in tasks of one asyncio loop, or in
tasks of one trio run (``runtime``), each in a thread of its own in this process.

Commands (``id`` names an agent):

- ``hold``: take ``key`` (``with`` / ``async with``, ``timeout``); ``held`` (with its token)
  once inside, then wait for ``release``; ``released``, or ``error`` (type and message);
- ``release``: let agent ``id`` leave;
- ``queued``: wait (bounded) until ``count`` callers of this process queue on ``key`` in the
  process (behind its own first caller); ``queued``;
- ``watch``: wait (bounded) until agent ``id``'s lease is known lost; ``lost``;
- ``work``: ``rounds`` critical sections on ``key``, each a read-then-write of the counter
  ``counter`` and an ``RPUSH`` of ``"<id> <token>"`` to ``log``; ``done``;
- ``flight``: ``do_sync`` / ``await do`` on ``key``; the function reports ``running``, waits
  for ``finish`` if ``block``, and returns ``value`` (raises ValueError(value) if ``fail``);
  ``result`` (value, shared) or ``error``;
- ``finish``: let agent ``id``'s function return;
- ``exit``: end the process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import redis
import trio
from redis.cluster import ClusterNode, RedisCluster

from keyedlock.redis import RedisKeyedLock, RedisSingleFlight

#: Bound of every wait of the worker (seconds): the test fails before this matters.
WAIT = 30.0

_out = threading.Lock()


def emit(event: str, agent: str, **fields: Any) -> None:
    line = json.dumps({"ev": event, "id": agent, **fields})
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        target: Any
        if "nodes" in config:
            nodes = [ClusterNode(host, port) for host, port in config["nodes"]]  # type: ignore[no-untyped-call]
            target = RedisCluster(startup_nodes=nodes)
            self.plain: Any = target
        else:
            target = config["url"]
            self.plain = redis.Redis.from_url(target)
        options = {"prefix": config.get("prefix", "keyedlock:"), "lease": config["lease"]}
        self.lock = RedisKeyedLock(target, **options)
        self.flight = RedisSingleFlight(target, **options)
        self.gates: dict[str, threading.Event] = {}
        self.contexts: dict[str, Any] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.trio_token: trio.lowlevel.TrioToken | None = None

    def gate(self, name: str) -> threading.Event:
        return self.gates.setdefault(name, threading.Event())

    # -- runtimes --------------------------------------------------------------

    def start(self, runtime: str, agent: str, sync: Callable[[], None], task: Any) -> None:
        if runtime == "thread":
            threading.Thread(target=self.guarded(agent, sync), daemon=True).start()
        elif runtime == "asyncio":
            loop = self.asyncio_loop()
            loop.call_soon_threadsafe(lambda: loop.create_task(self.guarded_async(agent, task)))
        else:
            token = self.trio_run()
            token.run_sync_soon(self.trio_spawn, agent, task)

    def guarded(self, agent: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:
                emit("error", agent, type=type(exc).__name__, message=str(exc))

        return run

    async def guarded_async(self, agent: str, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await fn()
        except BaseException as exc:
            emit("error", agent, type=type(exc).__name__, message=str(exc))

    def asyncio_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True).start()
            self.loop = loop
        return self.loop

    def trio_run(self) -> trio.lowlevel.TrioToken:
        if self.trio_token is None:
            ready = threading.Event()

            async def main() -> None:
                self.trio_token = trio.lowlevel.current_trio_token()
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    ready.set()
                    await trio.sleep_forever()

            threading.Thread(target=trio.run, args=(main,), daemon=True).start()
            ready.wait(WAIT)
        assert self.trio_token is not None
        return self.trio_token

    def trio_spawn(self, agent: str, task: Any) -> None:
        self.nursery.start_soon(self.guarded_async, agent, task)

    async def wait_gate(self, name: str) -> None:
        gate = self.gate(name)
        if sniffio_name() == "trio":
            await trio.to_thread.run_sync(gate.wait, WAIT)
        else:
            await asyncio.get_running_loop().run_in_executor(None, gate.wait, WAIT)

    # -- commands --------------------------------------------------------------

    def hold(self, agent: str, key: str, runtime: str, timeout: float | None) -> None:
        def sync() -> None:
            with self.lock(key, timeout=timeout) as held:
                self.contexts[agent] = held
                emit("held", agent, token=held.token)
                self.gate("release:" + agent).wait(WAIT)
            emit("released", agent)

        async def task() -> None:
            async with self.lock(key, timeout=timeout) as held:
                self.contexts[agent] = held
                emit("held", agent, token=held.token)
                await self.wait_gate("release:" + agent)
            emit("released", agent)

        self.start(runtime, agent, sync, task)

    def queued(self, agent: str, key: str, count: int) -> None:
        """Report ``queued`` once ``count`` callers of this process queue on ``key`` here."""

        def sync() -> None:
            table = self.lock._backend.table
            local = self.lock._local(key)
            deadline = time.monotonic() + WAIT
            while table.waiters(local) < count and time.monotonic() < deadline:
                time.sleep(0.001)
            emit("queued", agent)

        self.start("thread", agent, sync, None)

    def watch(self, agent: str) -> None:
        def sync() -> None:
            held = self.contexts[agent]
            deadline = time.monotonic() + WAIT
            while not held.lost and time.monotonic() < deadline:
                time.sleep(0.005)
            emit("lost", agent)

        self.start("thread", agent, sync, None)

    def work(self, agent: str, key: str, runtime: str, rounds: int, counter: str, log: str) -> None:
        plain = self.plain

        def section(token: int) -> None:
            value = int(plain.get(counter) or 0)
            plain.set(counter, value + 1)
            plain.rpush(log, f"{agent} {token}")

        def sync() -> None:
            for _ in range(rounds):
                with self.lock(key) as held:
                    section(held.token)
            emit("done", agent)

        async def task() -> None:
            for _ in range(rounds):
                async with self.lock(key) as held:
                    section(held.token)  # (blocking, briefly: a test's critical section)
            emit("done", agent)

        self.start(runtime, agent, sync, task)

    def do_flight(
        self, agent: str, key: str, runtime: str, value: Any, block: bool, fail: bool
    ) -> None:
        def fn() -> Any:
            emit("running", agent)
            if block:
                self.gate("finish:" + agent).wait(WAIT)
            if fail:
                raise ValueError(value)
            return value

        def sync() -> None:
            result = self.flight.do_sync_ex(key, fn)
            emit("result", agent, value=result.value, shared=result.shared)

        async def task() -> None:
            result = await self.flight.do_ex(key, fn)
            emit("result", agent, value=result.value, shared=result.shared)

        self.start(runtime, agent, sync, task)

    def serve(self) -> None:
        emit("ready", "worker")
        for line in sys.stdin:
            command = json.loads(line)
            op = command.pop("op")
            agent = command.get("id", "")
            if op == "exit":
                break
            if op == "hold":
                self.hold(agent, command["key"], command["runtime"], command.get("timeout"))
            elif op == "release":
                self.gate("release:" + agent).set()
            elif op == "queued":
                self.queued(agent, command["key"], command["count"])
            elif op == "watch":
                self.watch(agent)
            elif op == "work":
                self.work(
                    agent,
                    command["key"],
                    command["runtime"],
                    command["rounds"],
                    command["counter"],
                    command["log"],
                )
            elif op == "flight":
                self.do_flight(
                    agent,
                    command["key"],
                    command["runtime"],
                    command["value"],
                    command.get("block", False),
                    command.get("fail", False),
                )
            elif op == "finish":
                self.gate("finish:" + agent).set()
            else:
                emit("error", agent, type="ValueError", message=f"unknown op {op!r}")


def sniffio_name() -> str | None:
    import sniffio

    try:
        return sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return None


if __name__ == "__main__":
    Worker(json.loads(sys.argv[1])).serve()
