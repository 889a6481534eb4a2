"""A usage record naming another request's hold is stored and flagged; the hold stays in its owner's limit."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from metering.authorize.catalog import provider_catalog
from metering.db import Database
from metering.models import Hold, UsageRecord
from metering.periods import utcnow
from metering.usage.accounting import FOREIGN_HOLD
from tests.metering.authorize.helpers import ESTIMATE, period_row, seed


async def authorized_hold(client: httpx.AsyncClient) -> str:
    answer = await client.post(
        "/internal/v1/authorize", json={"user": "alice", "bill_to": None, "provider": "together", "model": "org/m"}
    )
    assert answer.json()["allowed"]
    return answer.json()["hold_id"]


def record(request_id: str, user: str, hold_id: str, provider: str = "together") -> dict:
    return {
        "request_id": request_id,
        "provider": provider,
        "user": user,
        "bill_to": None,
        "model": "org/m",
        "started_at": utcnow().isoformat(),
        "hold_id": hold_id,
    }


async def test_another_users_record_leaves_the_hold_alone(client: httpx.AsyncClient, db: Database) -> None:
    provider_catalog.clear()
    await seed(db)
    hold_id = await authorized_hold(client)

    answer = await client.post("/internal/v1/usage", json={"records": [record("from-bob", "bob", hold_id)]})

    assert answer.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert (await period_row(db, "alice")).held_nano_usd == ESTIMATE
    async with db.session_scope() as session:
        assert (await session.get(Hold, hold_id)).status == "held"
        stored = (await session.scalars(select(UsageRecord).where(UsageRecord.request_id == "from-bob"))).one()
        assert (stored.billing_account, stored.hold_flag_reason, stored.estimate_nano_usd) == (
            "bob",
            FOREIGN_HOLD,
            ESTIMATE,
        )

    # Its owner's record still releases it.
    await client.post("/internal/v1/usage", json={"records": [record("from-alice", "alice", hold_id)]})
    assert (await period_row(db, "alice")).held_nano_usd == 0
    assert (await period_row(db, "alice")).pending_estimate_nano_usd == ESTIMATE


async def test_a_record_of_another_provider_leaves_the_hold_alone(client: httpx.AsyncClient, db: Database) -> None:
    provider_catalog.clear()
    await seed(db)
    hold_id = await authorized_hold(client)

    await client.post("/internal/v1/usage", json={"records": [record("other", "alice", hold_id, "fireworks-ai")]})

    row = await period_row(db, "alice")
    assert (row.held_nano_usd, row.pending_estimate_nano_usd) == (ESTIMATE, 250_000)
