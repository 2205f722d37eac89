"""Token refresh: 50 concurrent requests find the token expired; it is refreshed once."""

import asyncio
import time

from keyedlock import SingleFlight

flight = SingleFlight()


class OAuthClient:
    """Hands out auth headers, refreshing the access token when it has expired."""

    def __init__(self) -> None:
        self.token = ""
        self.expires_at = 0.0  # the token is missing: expired from the start
        self.refreshes = 0

    async def get_auth_headers(self) -> dict[str, str]:
        token = self.token
        if time.monotonic() >= self.expires_at:
            # Every request that finds the token expired asks; one refresh runs.
            token = await flight.do(("oauth-token", id(self)), self._refresh)
        return {"Authorization": f"Bearer {token}"}

    async def _refresh(self) -> str:
        self.refreshes += 1
        await asyncio.sleep(0.05)  # the round trip to the token endpoint
        self.token = f"token-{self.refreshes}"
        self.expires_at = time.monotonic() + 3600
        return self.token


async def main() -> None:
    client = OAuthClient()
    headers = await asyncio.gather(*(client.get_auth_headers() for _ in range(50)))
    print(f"{len(headers)} requests, {client.refreshes} refresh")  # 50 requests, 1 refresh
    assert client.refreshes == 1
    assert headers == [{"Authorization": "Bearer token-1"}] * 50

    client.expires_at = 0.0  # the token expires: the next burst refreshes it once more
    headers = await asyncio.gather(*(client.get_auth_headers() for _ in range(50)))
    print(f"after expiry: {client.refreshes} refreshes in all")  # after expiry: 2 refreshes in all
    assert client.refreshes == 2
    assert headers == [{"Authorization": "Bearer token-2"}] * 50


asyncio.run(main())
