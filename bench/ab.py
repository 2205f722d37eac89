"""Interleaved A/B of two versions of keyedlock on the uncontended paths.

    python bench/ab.py OLD_SRC NEW_SRC [--pairs 8] [--only asyncio,threads]

OLD_SRC and NEW_SRC are ``src`` directories of two checkouts (``git worktree add
/tmp/old REV`` gives one). Each *pair* runs every scenario once in a fresh
subprocess on each version, alternating which goes first, so that drift of the
machine (other load, frequency) hits both alike; the result is the median over
the pairs of each version's ns/op, and their ratio (new / old: below 1.0 is
faster). The scenarios are the uncontended acquire + release of every scope, and the
uncontended single-flight call:

- ``threads``: ``with lock(key): pass`` in a thread;
- ``asyncio``: ``async with lock(key): pass`` in an asyncio task;
- ``trio``: ``async with lock(key): pass`` in a trio task;
- ``trio-fast``: the same with ``KeyedLock(fast_acquire=True)`` where the version has that
  option (no checkpoints for a free key, as every version before it);
- ``file``: ``with FileKeyedLock(path)(key): pass``;
- ``flight-threads``, ``flight-asyncio``, ``flight-trio``: a single-flight call nobody else
  shares, ``flight.do_sync(key, fn)`` / ``await flight.do(key, fn)`` with a sync ``fn``;
- ``manager``: ``with manager.KeyedLock()(key): pass`` (round trips to the manager process).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

SCENARIOS = {
    "threads": (
        200_000,
        """
        lock = KeyedLock()
        def body():
            for _ in range(N):
                with lock("k"):
                    pass
        run = body
        """,
    ),
    "asyncio": (
        200_000,
        """
        import asyncio
        lock = KeyedLock()
        async def main():
            for _ in range(N):
                async with lock("k"):
                    pass
        def run():
            asyncio.run(main())
        """,
    ),
    "trio": (
        100_000,
        """
        import trio
        lock = KeyedLock()
        async def main():
            for _ in range(N):
                async with lock("k"):
                    pass
        def run():
            trio.run(main)
        """,
    ),
    "trio-fast": (
        100_000,
        """
        import inspect, trio
        # fast_acquire=True where the version has it: no checkpoints for a free key.
        fast = "fast_acquire" in inspect.signature(KeyedLock).parameters
        lock = KeyedLock(fast_acquire=True) if fast else KeyedLock()
        async def main():
            for _ in range(N):
                async with lock("k"):
                    pass
        def run():
            trio.run(main)
        """,
    ),
    "file": (
        100_000,
        """
        import tempfile, os
        lock = FileKeyedLock(os.path.join(tempfile.mkdtemp(), "ab.lock"))
        def run():
            for _ in range(N):
                with lock("k"):
                    pass
        """,
    ),
    "flight-threads": (
        200_000,
        """
        from keyedlock import SingleFlight
        flight = SingleFlight()
        def fn():
            return 1
        def run():
            for _ in range(N):
                flight.do_sync("k", fn)
        """,
    ),
    "flight-asyncio": (
        200_000,
        """
        import asyncio
        from keyedlock import SingleFlight
        flight = SingleFlight()
        def fn():
            return 1
        async def main():
            for _ in range(N):
                await flight.do("k", fn)
        def run():
            asyncio.run(main())
        """,
    ),
    "flight-trio": (
        100_000,
        """
        import trio
        from keyedlock import SingleFlight
        flight = SingleFlight()
        def fn():
            return 1
        async def main():
            for _ in range(N):
                await flight.do("k", fn)
        def run():
            trio.run(main)
        """,
    ),
    "manager": (
        5_000,
        """
        from keyedlock.multiprocessing import KeyedLockManager
        manager = KeyedLockManager()
        manager.start()
        lock = manager.KeyedLock()
        def run():
            for _ in range(N):
                with lock("k"):
                    pass
        """,
    ),
}

CHILD = """
import gc, json, sys, time
from keyedlock import FileKeyedLock, KeyedLock
N = {n}
{setup}
run()  # warm up (and a first import of everything)
gc.collect()
gc.disable()
start = time.perf_counter_ns()
run()
elapsed = time.perf_counter_ns() - start
print(json.dumps(elapsed / N))
"""


def measure(src: str, scenario: str) -> float:
    n, setup = SCENARIOS[scenario]
    code = CHILD.format(n=n, setup=textwrap.dedent(setup))
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))  # (the child runs elsewhere)
    with tempfile.TemporaryDirectory() as cwd:  # never import a checkout from the cwd
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    return float(json.loads(out.stdout.splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench/ab.py", description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the src directory of the old version")
    parser.add_argument("new", help="the src directory of the new version")
    parser.add_argument("--pairs", type=int, default=8, help="rounds of (old, new) (default 8)")
    parser.add_argument("--only", default="", help="comma-separated scenarios (default: all)")
    args = parser.parse_args()
    names = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    results: dict[str, dict[str, list[float]]] = {s: {"old": [], "new": []} for s in names}
    for pair in range(args.pairs):
        for scenario in names:
            order = [("old", args.old), ("new", args.new)]
            if pair % 2:
                order.reverse()
            for label, src in order:
                results[scenario][label].append(measure(src, scenario))
        print(f"pair {pair + 1}/{args.pairs} done", file=sys.stderr)
    header = f"{'scenario':10s} {'old ns/op':>10s} {'new ns/op':>10s} {'new/old':>8s}"
    print(f"{header}  (median of pairs)")
    for scenario in names:
        old = statistics.median(results[scenario]["old"])
        new = statistics.median(results[scenario]["new"])
        pairs = zip(results[scenario]["new"], results[scenario]["old"], strict=True)
        ratios = [n / o for n, o in pairs]
        spread = f"{min(ratios):.3f}-{max(ratios):.3f}"
        print(f"{scenario:10s} {old:10.0f} {new:10.0f} {new / old:8.3f}  pairs {spread}")


if __name__ == "__main__":
    main()
