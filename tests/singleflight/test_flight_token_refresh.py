"""The token-refresh scenario: many concurrent requests, one refresh per expiry.

An OAuth-style client hands out auth headers. When its token is missing or expired, the
caller refreshes it through single-flight, so 50 concurrent requests cause exactly one
refresh, and the next expiry exactly one more. Expiry is driven by a fake clock attribute,
never by real time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import pytest
import trio.lowlevel

from keyedlock import SingleFlight

from ..conformance.scopes import Scope
from ..support import WAIT, Threads, wait_until, wait_until_async
from .flight_support import wait_followers

CALLERS = 50
LIFETIME = 3600.0


class OAuthClient:
    """A client whose token refresh must run once for all concurrent callers.

    ``now`` is the client's clock (a plain attribute the test advances). ``refresh_gate``, when
    set, holds every refresh until the test opens it; otherwise a refresh passes a few
    scheduler checkpoints, like a network round trip would.
    """

    def __init__(self, sf: SingleFlight, checkpoint: Callable[[], Awaitable[None]]) -> None:
        self.sf = sf
        self.key = f"oauth-token:{id(self)}"
        self.checkpoint = checkpoint
        self.now = 0.0
        self.token: str | None = None
        self.expires_at = 0.0
        self.refreshes = 0
        self.refresh_gate: anyio.Event | None = None

    async def get_auth_headers(self) -> dict[str, str]:
        """Headers for one request; refreshes the token first if it expired."""
        token = self.token
        if token is None or self.now >= self.expires_at:
            token = await self.sf.do(self.key, self._refresh)
        return {"Authorization": f"Bearer {token}"}

    async def _refresh(self) -> str:
        self.refreshes += 1
        if self.refresh_gate is not None:
            await self.refresh_gate.wait()
        for _ in range(3):
            await self.checkpoint()
        self.token = f"token-{self.refreshes}"
        self.expires_at = self.now + LIFETIME
        return self.token


class ThreadOAuthClient:
    """The same client for threads: ``do_sync``, a thread event as the refresh gate."""

    def __init__(self, sf: SingleFlight) -> None:
        self.sf = sf
        self.key = f"oauth-token:{id(self)}"
        self.now = 0.0
        self.token: str | None = None
        self.expires_at = 0.0
        self.refreshes = 0
        self.refresh_gate = threading.Event()

    def get_auth_headers(self) -> dict[str, str]:
        token = self.token
        if token is None or self.now >= self.expires_at:
            token = self.sf.do_sync(self.key, self._refresh)
        return {"Authorization": f"Bearer {token}"}

    def _refresh(self) -> str:
        self.refreshes += 1
        assert self.refresh_gate.wait(WAIT)
        self.token = f"token-{self.refreshes}"
        self.expires_at = self.now + LIFETIME
        return self.token


def backend_checkpoint(anyio_backend: str) -> Callable[[], Awaitable[None]]:
    """The runtime's own scheduler checkpoint: ``asyncio.sleep(0)`` or trio's."""
    if anyio_backend == "trio":
        return trio.lowlevel.checkpoint
    return partial(asyncio.sleep, 0)


async def burst(client: OAuthClient, *, hold_refresh: bool = False) -> list[dict[str, str]]:
    """``CALLERS`` concurrent requests; their headers.

    ``hold_refresh``: keep the refresh open until every other caller waits on it.
    """
    headers: list[dict[str, str]] = []
    client.refresh_gate = anyio.Event() if hold_refresh else None

    async def request() -> None:
        headers.append(await client.get_auth_headers())

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            for _ in range(CALLERS):
                tg.start_soon(request)
            if client.refresh_gate is not None:
                await wait_until_async(
                    lambda: client.sf._backend.waiters(client.sf._local(client.key)) == CALLERS - 1,
                    "every other caller waits on the refresh",
                )
                client.refresh_gate.set()
    return headers


@pytest.mark.anyio
async def test_fifty_callers_refresh_once(
    flight_scope: Scope, sf: SingleFlight, anyio_backend: str
) -> None:
    client = OAuthClient(sf, backend_checkpoint(anyio_backend))
    # In another process's group, joining is a round trip: a caller that saw the token expired
    # may join after the refresh ended, and start another (the client checks, then joins). So
    # there, the refresh is held until every caller waits on it.
    hold = flight_scope.remote

    headers = await burst(client, hold_refresh=hold)
    assert client.refreshes == 1
    assert headers == [{"Authorization": "Bearer token-1"}] * CALLERS

    client.now += LIFETIME / 2  # still valid: no refresh
    assert await burst(client) == [{"Authorization": "Bearer token-1"}] * CALLERS
    assert client.refreshes == 1

    client.now += LIFETIME  # expired
    headers = await burst(client, hold_refresh=hold)
    assert client.refreshes == 2
    assert headers == [{"Authorization": "Bearer token-2"}] * CALLERS


@pytest.mark.anyio
async def test_fifty_callers_wait_on_one_refresh(sf: SingleFlight, anyio_backend: str) -> None:
    """With the refresh held open until all 50 callers are in, every one of them shares it."""
    client = OAuthClient(sf, backend_checkpoint(anyio_backend))
    headers = await burst(client, hold_refresh=True)
    assert client.refreshes == 1
    assert headers == [{"Authorization": "Bearer token-1"}] * CALLERS

    client.now += 2 * LIFETIME  # the token expires
    headers = await burst(client, hold_refresh=True)
    assert client.refreshes == 2
    assert headers == [{"Authorization": "Bearer token-2"}] * CALLERS


def test_fifty_threads_refresh_once(sf: SingleFlight, threads: Threads) -> None:
    client = ThreadOAuthClient(sf)

    def burst_of_threads() -> list[dict[str, str]]:
        client.refresh_gate.clear()
        refreshes = client.refreshes
        handles = [threads.start(client.get_auth_headers, "request") for _ in range(CALLERS)]
        wait_until(lambda: client.refreshes == refreshes + 1, "the refresh starts")
        wait_followers(sf, client.key, CALLERS - 1)
        client.refresh_gate.set()
        return [handle.result() for handle in handles]

    assert burst_of_threads() == [{"Authorization": "Bearer token-1"}] * CALLERS
    assert client.refreshes == 1
    client.now += 2 * LIFETIME  # the token expires
    assert burst_of_threads() == [{"Authorization": "Bearer token-2"}] * CALLERS
    assert client.refreshes == 2
