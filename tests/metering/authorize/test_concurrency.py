"""Concurrent authorizations cannot together pass a limit that each passes alone (SPEC §5.1 holds)."""

from __future__ import annotations

import asyncio

import httpx

from metering.authorize.catalog import provider_catalog
from metering.authorize.service import AuthorizeRequest, authorize_service
from metering.db import Database
from tests.metering.authorize.helpers import ESTIMATE, holds, period_row, seed, set_limit


async def test_64_concurrent_requests_exactly_10_fit(client: httpx.AsyncClient, db: Database) -> None:
    """Over the app and the connection pool: the remaining limit fits exactly 10 estimates."""
    provider_catalog.clear()
    await seed(db)
    await set_limit(db, "solo-org", 10 * ESTIMATE)

    async def one() -> dict:
        response = await client.post(
            "/internal/v1/authorize",
            json={"user": "alice", "bill_to": "solo-org", "provider": "together", "model": "org/m"},
        )
        assert response.status_code == 200
        return response.json()

    answers = await asyncio.gather(*(one() for _ in range(64)))
    allowed = [a for a in answers if a["allowed"]]
    assert len(allowed) == 10
    assert {a["reason"] for a in answers if not a["allowed"]} == {"spending_limit_reached"}
    assert sorted(a["spending_limit_remaining_nano_usd"] for a in allowed) == [i * ESTIMATE for i in range(10)]
    assert (await period_row(db, "solo-org")).held_nano_usd == 10 * ESTIMATE
    assert sorted(h.id for h in await holds(db)) == sorted(a["hold_id"] for a in allowed)


async def test_separate_databases_objects_share_the_lock(db: Database, database_url: str) -> None:
    """Four processes' worth of engines deciding at once on one account whose period row exists
    (the one-statement lock path): still exactly 10 of the 11 estimates the limit fits."""
    provider_catalog.clear()
    await seed(db)
    await set_limit(db, "solo-org", 11 * ESTIMATE)
    request = AuthorizeRequest(user="alice", bill_to="solo-org", provider="together", model="org/m")
    assert (await authorize_service.authorize(db, request=request)).allowed
    engines = [Database(database_url, pool_size=4) for _ in range(4)]

    async def one(database: Database) -> bool:
        return (await authorize_service.authorize(database, request=request)).allowed

    try:
        results = await asyncio.gather(*(one(engines[i % 4]) for i in range(64)))
    finally:
        for database in engines:
            await database.dispose()
    assert results.count(True) == 10
    assert (await period_row(db, "solo-org")).held_nano_usd == 11 * ESTIMATE
