"""A task a call starts is another caller: it shares the call, and a call that waits for it
while it waits for the call waits for itself (the documented limit of docs/singleflight.md).

Only a join from the call's own task (or thread) is refused: a task the call starts may
legitimately wait for the call's outcome (the call does not wait for it), and nothing tells the
two apart when the task joins. Python 3.11's ``asyncio.wait_for`` awaits in such a task.
"""

from __future__ import annotations

import asyncio
import sys

import anyio
import pytest

from keyedlock import SingleFlight

from ..support import WAIT, wait_until_async


def never_called() -> str:
    raise AssertionError("a follower's fn must not run")


@pytest.mark.anyio
async def test_a_task_started_by_the_call_shares_it(sf: SingleFlight) -> None:
    got: list[str] = []

    async def follower() -> None:
        got.append(await sf.do("k", never_called))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:

            async def call() -> str:
                tg.start_soon(follower)  # started from inside the call, not waited for by it
                await wait_until_async(
                    lambda: sf._backend.waiters(sf._local("k")) == 1, "it follows"
                )
                return "led"

            assert await sf.do("k", call) == "led"
    assert got == ["led"]


def test_a_join_hidden_in_wait_for_waits_for_itself_until_its_timeout(
    sf: SingleFlight,
) -> None:
    """On 3.11, ``wait_for`` awaits the join in a task of its own: a follower of the call
    that waits for it, until the timeout. From 3.12 on, it joins in the caller's task: refused
    at once."""
    seen: list[str] = []

    async def call() -> str:
        try:
            await asyncio.wait_for(sf.do("k", never_called), 0.01)
        except TimeoutError:
            seen.append("timed out")
        except RuntimeError as exc:
            seen.append("refused" if "wait for itself" in str(exc) else repr(exc))
        return "led"

    async def main() -> str:
        return await asyncio.wait_for(sf.do("k", call), WAIT)

    assert asyncio.run(main()) == "led"
    assert seen == (["timed out"] if sys.version_info < (3, 12) else ["refused"])
    assert len(sf) == 0
