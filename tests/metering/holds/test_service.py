"""Holds leave ``held_nano_usd`` exactly once: attached to their usage record or expired by the job."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from jobs import expire_holds
from metering.authorize.catalog import provider_catalog
from metering.authorize.service import AuthorizeRequest, authorize_service
from metering.db import Database
from metering.holds.service import HoldClaim, holds_service
from metering.models import Hold, UsageRecord
from metering.periods import current_period, utcnow
from tests.metering.authorize.helpers import ESTIMATE, holds, period_row, seed


async def place(db: Database, user: str = "alice", provider: str = "together", bill_to: str | None = None) -> str:
    decision = await authorize_service.authorize(
        db, request=AuthorizeRequest(user=user, bill_to=bill_to, provider=provider, model="org/m")
    )
    assert decision.allowed
    return decision.hold_id


async def usage_record(db: Database, hold_id: str, request_id: str) -> int:
    """A stored usage record to attach to (inserted directly: ingest is not under test here)."""
    now = utcnow()
    async with db.session_scope() as session:
        result = await session.execute(
            insert(UsageRecord).returning(UsageRecord.id),
            [
                {
                    "provider_id": "together",
                    "request_id": request_id,
                    "user_name": "alice",
                    "bill_to": None,
                    "billing_account": "alice",
                    "bill_to_flagged": False,
                    "model": "org/m",
                    "custom_key": False,
                    "started_at": now,
                    "period": current_period(),
                    "hold_id": hold_id,
                    "content_hash": "x" * 32,
                    "status": "pending",
                    "estimate_nano_usd": 0,
                    "received_at": now,
                    "attempts": 0,
                }
            ],
        )
        return result.scalar_one()


def claims(*pairs: tuple[str, int], user: str = "alice", account: str = "alice", provider: str = "together") -> dict:
    """Hold claims of records of ``user`` billed to ``account`` for ``provider``: (hold_id, record id) pairs."""
    return {hold_id: HoldClaim(record_id, user, account, provider) for hold_id, record_id in pairs}


async def attach(db: Database, claimed: dict) -> dict[str, int]:
    async with db.session_scope() as session:
        return (await holds_service.attach_holds(session, claimed)).amounts


async def age_holds(db: Database, seconds: int) -> None:
    async with db.session_scope() as session:
        for hold in await session.scalars(select(Hold)):
            hold.expires_at = utcnow() - timedelta(seconds=seconds)


class TestPlace:
    async def test_hold_expires_after_the_ttl(self, db: Database) -> None:
        provider_catalog.clear()
        await seed(db)
        before = utcnow()
        await place(db)
        [hold] = await holds(db)
        assert hold.period == current_period()
        assert before + timedelta(seconds=900) <= hold.expires_at <= utcnow() + timedelta(seconds=900)


class TestAttachHolds:
    async def test_attaches_once_and_releases(self, db: Database) -> None:
        provider_catalog.clear()
        await seed(db)
        first, second = await place(db), await place(db, provider="fireworks-ai")
        record_one = await usage_record(db, first, "r1")
        record_two = await usage_record(db, second, "r2")
        attached = await attach(
            db,
            {
                **claims((first, record_one), ("no-such-hold", record_one)),
                **claims((second, record_two), provider="fireworks-ai"),
            },
        )
        assert attached == {first: ESTIMATE, second: 250_000}
        assert (await period_row(db, "alice")).held_nano_usd == 0
        by_id = {h.id: h for h in await holds(db)}
        assert (by_id[first].status, by_id[first].usage_record_id) == ("attached", record_one)
        assert (by_id[second].status, by_id[second].usage_record_id) == ("attached", record_two)
        assert await attach(db, claims((first, record_one))) == {}
        assert (await period_row(db, "alice")).held_nano_usd == 0

    @pytest.mark.parametrize(
        "owner",
        [{"user": "bob"}, {"account": "acme"}, {"provider": "fireworks-ai"}],
        ids=["another user", "another billing account", "another provider"],
    )
    async def test_a_hold_is_released_only_by_its_own_request(self, db: Database, owner: dict) -> None:
        provider_catalog.clear()
        await seed(db)
        hold_id = await place(db)
        async with db.session_scope() as session:
            attached = await holds_service.attach_holds(session, claims((hold_id, 7), **owner))
        assert (attached.amounts, attached.foreign) == ({}, [7])
        assert (await period_row(db, "alice")).held_nano_usd == ESTIMATE
        assert {h.id: h.status for h in await holds(db)}[hold_id] == "held"

    async def test_releases_from_each_account(self, db: Database) -> None:
        provider_catalog.clear()
        await seed(db)
        mine, orgs, kept = await place(db), await place(db, bill_to="acme"), await place(db, bill_to="acme")
        attached = await attach(db, {**claims((mine, 1)), **claims((orgs, 2), account="acme")})
        assert attached == {mine: ESTIMATE, orgs: ESTIMATE}
        assert (await period_row(db, "alice")).held_nano_usd == 0
        assert (await period_row(db, "acme")).held_nano_usd == ESTIMATE
        assert {h.id: h.status for h in await holds(db)}[kept] == "held"

    async def test_expired_hold_is_not_attached(self, db: Database) -> None:
        provider_catalog.clear()
        await seed(db)
        hold_id = await place(db)
        await age_holds(db, 1)
        assert await expire_holds.run_once(db) == f"expired 1 holds ({ESTIMATE} nano-USD) of 1 accounts"
        assert await attach(db, claims((hold_id, 1))) == {}
        assert (await period_row(db, "alice")).held_nano_usd == 0

    async def test_past_ttl_but_not_yet_expired_still_attaches(self, db: Database) -> None:
        provider_catalog.clear()
        await seed(db)
        hold_id = await place(db)
        await age_holds(db, 60)
        assert await attach(db, claims((hold_id, 1))) == {hold_id: ESTIMATE}
        assert await expire_holds.run_once(db) == "expired 0 holds (0 nano-USD) of 0 accounts"
        assert (await period_row(db, "alice")).held_nano_usd == 0


class TestExpireHolds:
    async def test_only_past_ttl_expire(self, db: Database) -> None:
        provider_catalog.clear()
        await seed(db)
        for _ in range(3):
            await place(db)
        await place(db, bill_to="acme")
        await age_holds(db, 5)
        fresh = await place(db)
        assert await expire_holds.run_once(db) == f"expired 4 holds ({4 * ESTIMATE} nano-USD) of 2 accounts"
        assert (await period_row(db, "alice")).held_nano_usd == ESTIMATE
        assert (await period_row(db, "acme")).held_nano_usd == 0
        assert {h.id: h.status for h in await holds(db)}[fresh] == "held"
        assert sorted(h.status for h in await holds(db)) == ["expired"] * 4 + ["held"]
        assert await expire_holds.run_once(db) == "expired 0 holds (0 nano-USD) of 0 accounts"

    async def test_expiry_frees_room_under_the_limit(self, db: Database) -> None:
        from tests.metering.authorize.helpers import set_limit

        provider_catalog.clear()
        await seed(db)
        await set_limit(db, "solo-org", ESTIMATE)
        await place(db, bill_to="solo-org")
        request = AuthorizeRequest(user="alice", bill_to="solo-org", provider="together", model="org/m")
        assert (await authorize_service.authorize(db, request=request)).reason == "spending_limit_reached"
        await age_holds(db, 1)
        await expire_holds.run_once(db)
        assert (await authorize_service.authorize(db, request=request)).allowed
