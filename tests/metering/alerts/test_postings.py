"""Alert events written when costs post: once per account, period and percent, whatever the concurrency."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from sqlalchemy import func, select

from metering.alerts.errors import InvalidAlertThresholds
from metering.alerts.service import alerts_service
from metering.db import Database
from metering.events.service import NewEvent, event_service
from metering.ledger.verify import verify
from metering.limits.service import limits_service
from metering.models import Event
from metering.periods import current_period
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest, QuarantinedRequest
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.factories.usage import create_pending_usage
from tests.metering.alerts.conftest import stored_events

PRO_CREDITS = 2_000_000_000


async def pending(db: Database, count: int, *, account: str = "alice", limit: int | None = None) -> list[int]:
    """A pro account (with ``limit``), a credit-eligible provider and ``count`` pending requests; their row ids."""
    async with db.session_scope() as session:
        await create_account(session, account, plan="pro")
        await create_provider(session, "together")
        if limit is not None:
            await limits_service.set_spending_limit(session, account_name=account, limit_nano_usd=limit, actor=account)
        ids = await create_pending_usage(
            session, provider_id="together", request_ids=[f"r{i:03d}" for i in range(count)], user=account
        )
    return sorted(ids.values())


async def assert_ledger_ok(db: Database) -> None:
    report = await verify(db)
    assert report.ok, [line for check in report.checks for line in check.breaches]


class TestBurst:
    async def test_thresholds_crossed_by_concurrent_postings_fire_once_each(self, db: Database) -> None:
        # 40 requests of 0.1 USD, each posted in its own transaction, all at once: 4 USD against
        # 2 USD of credits, then 2 USD of pay-as-you-go against a 2.5 USD limit (80 %).
        ids = await pending(db, 40, limit=2_500_000_000)

        async def post(record_id: int) -> None:
            async with db.session_scope() as session:
                await settle(session, priced=[PricedRequest(record_id, 100_000_000)])

        await asyncio.gather(*(post(record_id) for record_id in ids))

        period = current_period()
        events = await stored_events(db)
        assert sorted((kind, account, p, data.get("percent")) for kind, account, p, data in events) == [
            ("credits.exhausted", "alice", period, None),
            ("credits.threshold", "alice", period, 50),
            ("credits.threshold", "alice", period, 80),
            ("credits.threshold", "alice", period, 100),
            ("spending_limit.threshold", "alice", period, 80),
        ]
        limit_event = next(data for kind, *_, data in events if kind == "spending_limit.threshold")
        assert limit_event == {
            "account": "alice",
            "period": period,
            "percent": 80,
            "spending_limit_nano_usd": 2_500_000_000,
            "committed_nano_usd": 2_000_000_000,
            "payg_nano_usd": 2_000_000_000,
        }
        await assert_ledger_ok(db)

    async def test_a_threshold_fires_once_per_period_even_when_crossed_again(self, db: Database) -> None:
        ids = await pending(db, 3)
        async with db.session_scope() as session:
            await settle(session, priced=[PricedRequest(ids[0], 1_200_000_000)])
        # Seats or a top-up could lower the share used; a later posting past 50 % again fires nothing new.
        async with db.session_scope() as session:
            await settle(session, priced=[PricedRequest(ids[1], 100_000_000)])
            await settle(session, priced=[PricedRequest(ids[2], 100_000_000)])

        assert [(kind, data["percent"]) for kind, *_, data in await stored_events(db)] == [("credits.threshold", 50)]
        await assert_ledger_ok(db)

    async def test_the_same_cause_written_by_two_transactions_at_once_is_one_event(self, db: Database) -> None:
        event = NewEvent("credits.threshold", "alice", "2026-12", "credits.threshold:alice:2026-12:50", {"percent": 50})

        async def write() -> int:
            async with db.session_scope() as session:
                return await event_service.emit(session, [event, event])

        assert sorted(await asyncio.gather(write(), write())) == [0, 1]
        async with db.session_scope() as session:
            assert await session.scalar(select(func.count()).select_from(Event)) == 1


class TestAccountThresholds:
    async def test_an_accounts_own_thresholds_replace_the_defaults(self, db: Database) -> None:
        ids = await pending(db, 1)
        async with db.session_scope() as session:
            await alerts_service.set_thresholds(
                session, account_name="alice", credits_percent=[25], spending_limit_percent=[], actor="alice"
            )
        async with db.session_scope() as session:
            await settle(session, priced=[PricedRequest(ids[0], 1_900_000_000)])

        assert [(kind, data["percent"]) for kind, *_, data in await stored_events(db)] == [("credits.threshold", 25)]
        await assert_ledger_ok(db)

    async def test_thresholds_out_of_range_are_refused(self, db: Database) -> None:
        await pending(db, 0)
        for bad in ([0], [101], list(range(1, 12))):
            with pytest.raises(InvalidAlertThresholds):
                async with db.session_scope() as session:
                    await alerts_service.set_thresholds(
                        session, account_name="alice", credits_percent=bad, spending_limit_percent=[], actor="alice"
                    )


class TestOutbox:
    async def test_events_roll_back_with_the_posting_that_caused_them(self, db: Database) -> None:
        ids = await pending(db, 1)
        with pytest.raises(RuntimeError):
            async with db.session_scope() as session:
                await settle(session, priced=[PricedRequest(ids[0], PRO_CREDITS)])
                # Written in the posting's own transaction...
                assert await session.scalar(select(func.count()).select_from(Event)) == 4
                raise RuntimeError("the transaction fails after the posting")

        # ...and gone with it.
        assert await stored_events(db) == []
        async with db.session_scope() as session:
            await settle(session, priced=[PricedRequest(ids[0], PRO_CREDITS)])
        assert sorted((kind, data.get("percent")) for kind, *_, data in await stored_events(db)) == [
            ("credits.exhausted", None),
            ("credits.threshold", 50),
            ("credits.threshold", 80),
            ("credits.threshold", 100),
        ]
        await assert_ledger_ok(db)

    async def test_a_quarantine_names_its_requests_for_the_platform_only(self, db: Database) -> None:
        ids = await pending(db, 105)
        async with db.session_scope() as session:
            await settle(
                session,
                quarantined=[QuarantinedRequest(record_id, f"bad value {i}") for i, record_id in enumerate(ids)][::-1],
            )
        async with db.session_scope() as session:
            event = await session.scalar(select(Event))
        assert (event.type, event.audience, event.dedupe_key) == (
            "provider.quarantine",
            "platform",
            f"provider.quarantine:together:{ids[0]}",
        )
        data = orjson.loads(event.body)["data"]
        assert {key: data[key] for key in ("account", "period", "provider", "count")} == {
            "account": "alice",
            "period": current_period(),
            "provider": "together",
            "count": 105,
        }
        # The first hundred by record, each with its request id and reason.
        assert data["requests"] == [{"request_id": f"r{i:03d}", "reason": f"bad value {i}"} for i in range(100)]
        await assert_ledger_ok(db)
