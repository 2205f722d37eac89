"""Cache stampede: 100 requests for one hot key cause one query; ttl absorbs the next ones."""

import asyncio

from keyedlock import SingleFlight

TTL = 1.0
profiles = SingleFlight(ttl=TTL)  # a loaded profile is reused for 1 s
queries = 0


async def query_database(user_id: int) -> dict[str, object]:
    global queries
    queries += 1
    await asyncio.sleep(0.02)  # the query's round trip
    return {"id": user_id, "name": f"user {user_id}", "version": queries}


async def get_profile(user_id: int) -> dict[str, object]:
    return await profiles.do(f"profile:{user_id}", query_database, user_id)


async def main() -> None:
    # 100 concurrent requests for one key: one query, and every caller shares its value.
    results = await asyncio.gather(
        *(profiles.do_ex("profile:42", query_database, 42) for _ in range(100))
    )
    print(queries, "query;", sum(r.shared for r in results), "callers shared it")
    assert queries == 1
    assert all(r.shared and r.value["version"] == 1 for r in results)

    # Right after, within ttl, requests reuse the value: no query at all.
    for _ in range(100):
        assert (await get_profile(42))["version"] == 1
    assert queries == 1

    # An update invalidates the kept value: forget(), and the next read queries again.
    profiles.forget("profile:42")
    assert (await get_profile(42))["version"] == 2

    # Once ttl has passed, the next wave of requests again causes exactly one query.
    await asyncio.sleep(TTL + 0.05)
    wave = await asyncio.gather(*(get_profile(42) for _ in range(100)))
    print(queries, "queries in all")  # 3 queries in all
    assert queries == 3
    assert all(profile["version"] == 3 for profile in wave)
    assert len(profiles) == 0  # nothing in flight: kept values are not calls


asyncio.run(main())
