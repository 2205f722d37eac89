"""The demo's runtimes inside one process: threads, asyncio, trio, and all three at once.

Each runs the checkouts on one ``Wallet`` in memory, guarded by
``klock("wallet:alice")`` in the locked run. The trio scenarios need trio,
an optional dependency: :func:`need_trio` skips them without it, naming the
command that installs it (:func:`install_hint`).
"""

from __future__ import annotations

import asyncio
import importlib
import shlex
import threading
import time
import tomllib
from pathlib import Path

from keyedlock import klock

from ._demo_wallet import AMOUNT, START_TIMEOUT, Outcome, ScenarioSkipped, Wallet, guarded

__all__ = [
    "THREAD_IO_SECONDS",
    "install_hint",
    "need_trio",
    "run_asyncio",
    "run_mixed",
    "run_threads",
    "run_trio",
    "source_checkout",
]

#: How long a thread "does I/O" between reading and writing the balance.
#: Long against thread start-up jitter, so that unlocked threads reliably
#: all read before any of them writes.
THREAD_IO_SECONDS = 0.005


# -- threads -------------------------------------------------------------------


def run_threads(locked: bool, checkouts: int) -> Outcome:
    """``checkouts`` threads, each ``with klock(key):`` around read, I/O, write."""
    wallet = Wallet()
    lock = klock if locked else None
    start = threading.Barrier(checkouts)

    def checkout() -> None:
        start.wait(START_TIMEOUT)
        with guarded(lock, "wallet:alice"):
            seen = wallet.balance
            time.sleep(THREAD_IO_SECONDS)
            wallet.commit(seen, AMOUNT)

    threads = [threading.Thread(target=checkout) for _ in range(checkouts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(START_TIMEOUT + checkouts)
    return Outcome(wallet.charges, wallet.balance)


# -- asyncio -------------------------------------------------------------------


def run_asyncio(locked: bool, checkouts: int) -> Outcome:
    """``checkouts`` asyncio tasks, each ``async with klock(key):`` around read, await, write."""
    wallet = Wallet()
    lock = klock if locked else None

    async def checkout() -> None:
        async with guarded(lock, "wallet:alice"):
            seen = wallet.balance
            await asyncio.sleep(0)  # yield to the loop, as real I/O would
            wallet.commit(seen, AMOUNT)

    async def main() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(checkouts):
                tg.create_task(checkout())

    asyncio.run(main())
    return Outcome(wallet.charges, wallet.balance)


# -- trio ----------------------------------------------------------------------


def source_checkout(start: Path) -> Path | None:
    """The root of the keyedlock source tree that ``start`` lies in, or None.

    The nearest of ``start`` and its parents holding a ``pyproject.toml`` of
    the project named keyedlock.
    """
    for folder in (start, *start.parents):
        try:
            with open(folder / "pyproject.toml", "rb") as f:
                project = tomllib.load(f).get("project", {})
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(project, dict) and project.get("name") == "keyedlock":
            return folder
    return None


def install_hint(extra: str, *, cwd: Path | None = None, package: Path | None = None) -> str:
    """The command that installs keyedlock's optional dependencies ``extra``.

    From a source checkout (the working directory ``cwd`` is in one, or the
    package was imported from one: ``package``, this package's folder) it
    installs that checkout: ``pip install ".[trio]"`` at its root. Elsewhere
    it names both the released package and the checkout form.
    """
    cwd = Path.cwd() if cwd is None else cwd
    package = Path(__file__).resolve().parent if package is None else package
    root = source_checkout(cwd) or source_checkout(package)
    if root is None:
        return f"pip install 'keyedlock[{extra}]', or in a clone: pip install \".[{extra}]\""
    if root == cwd:
        return f'pip install ".[{extra}]"'
    return "pip install " + shlex.quote(f"{root}[{extra}]")


def need_trio() -> None:
    """Import trio ahead of the timed run; skip the scenario if it is not installed."""
    try:
        importlib.import_module("trio")
    except ImportError:
        raise ScenarioSkipped(f"trio is not installed ({install_hint('trio')})") from None


def run_trio(locked: bool, checkouts: int) -> Outcome:
    """``checkouts`` trio tasks, each ``async with klock(key):`` around read, await, write."""
    import trio
    import trio.lowlevel

    wallet = Wallet()
    lock = klock if locked else None

    async def checkout() -> None:
        async with guarded(lock, "wallet:alice"):
            seen = wallet.balance
            await trio.lowlevel.checkpoint()  # yield to the scheduler, as real I/O would
            wallet.commit(seen, AMOUNT)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(checkouts):
                nursery.start_soon(checkout)

    trio.run(main)
    return Outcome(wallet.charges, wallet.balance)


# -- all three at once -----------------------------------------------------------


def run_mixed(locked: bool, checkouts: int) -> Outcome:
    """Threads, an asyncio loop and a trio run charging one wallet through one lock.

    The checkouts are split across plain threads, asyncio tasks (in a loop
    in its own thread) and trio tasks (in a trio run in its own thread); the
    same ``klock("wallet:alice")`` excludes all of them from each other.
    """
    import trio

    wallet = Wallet()
    lock = klock if locked else None
    n_async = checkouts // 3
    n_trio = checkouts // 3
    n_threads = checkouts - n_async - n_trio
    start = threading.Barrier(n_threads + 2)

    def thread_checkout() -> None:
        start.wait(START_TIMEOUT)
        with guarded(lock, "wallet:alice"):
            seen = wallet.balance
            time.sleep(THREAD_IO_SECONDS)
            wallet.commit(seen, AMOUNT)

    async def asyncio_checkout() -> None:
        async with guarded(lock, "wallet:alice"):
            seen = wallet.balance
            await asyncio.sleep(THREAD_IO_SECONDS)
            wallet.commit(seen, AMOUNT)

    async def asyncio_main() -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(n_async):
                tg.create_task(asyncio_checkout())

    async def trio_checkout() -> None:
        async with guarded(lock, "wallet:alice"):
            seen = wallet.balance
            await trio.sleep(THREAD_IO_SECONDS)
            wallet.commit(seen, AMOUNT)

    async def trio_main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(n_trio):
                nursery.start_soon(trio_checkout)

    def asyncio_thread() -> None:
        start.wait(START_TIMEOUT)
        asyncio.run(asyncio_main())

    def trio_thread() -> None:
        start.wait(START_TIMEOUT)
        trio.run(trio_main)

    workers = [threading.Thread(target=thread_checkout) for _ in range(n_threads)]
    workers.append(threading.Thread(target=asyncio_thread))
    workers.append(threading.Thread(target=trio_thread))
    for w in workers:
        w.start()
    for w in workers:
        w.join(START_TIMEOUT + checkouts)
    return Outcome(wallet.charges, wallet.balance)
