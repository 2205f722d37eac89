"""on_error="stop": when the holder's work fails, everyone queued behind it gets Aborted."""

import asyncio

from keyedlock import Aborted, KeyedLock

lock = KeyedLock()


async def refresh_token() -> str:
    await asyncio.sleep(0.01)
    raise ConnectionError("identity provider is down")


async def caller(name: str) -> str:
    try:
        return await lock.run("token", refresh_token, on_error="stop")
    except Aborted as exc:
        # Did not run: the call ahead of it failed. __cause__ is that failure.
        return f"{name}: aborted ({exc.__cause__!r})"
    except ConnectionError as exc:
        return f"{name}: ran and failed ({exc!r})"


async def main() -> None:
    results = await asyncio.gather(*(caller(f"caller {i}") for i in range(3)))
    for line in results:
        print(line)
    assert results[0].startswith("caller 0: ran and failed")
    assert all("aborted" in line for line in results[1:])
    # Callers arriving after the failure start fresh: the key is free.
    assert not lock.locked("token")
    assert len(lock) == 0


asyncio.run(main())
