"""Spending-limit events written by authorize itself, in the transaction of the hold or refusal that causes them
(SPEC §11): before any cost is posted, once per threshold however many decisions cross it together."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select

from metering.alerts.service import alerts_service
from metering.authorize.service import AuthorizeRequest, Decision, authorize_service
from metering.db import Database
from metering.ledger.verify import verify
from metering.models import Hold, LedgerTransaction
from metering.periods import current_period
from tests.metering.alerts.conftest import stored_events
from tests.metering.authorize.helpers import seed, set_limit

PAID_ONLY_ESTIMATE = 300_000  # "paid-only" is not credit-eligible: every hold on it is pay-as-you-go
LIMIT_EVENTS = ("spending_limit.threshold", "spending_limit.reached")


def paid_only(user: str = "alice") -> AuthorizeRequest:
    return AuthorizeRequest(user=user, bill_to=None, provider="paid-only", model="org/m")


async def authorize_many(db: Database, count: int, *, user: str = "alice") -> list[Decision]:
    return list(await asyncio.gather(*(authorize_service.authorize(db, request=paid_only(user)) for _ in range(count))))


async def costs_posted(db: Database) -> int:
    async with db.session_scope() as session:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(LedgerTransaction)
                .where(LedgerTransaction.usage_record_id.is_not(None))
            )
            or 0
        )


class TestBurst:
    async def test_a_burst_past_the_limit_fires_each_threshold_and_reached_once(self, db: Database) -> None:
        # 10 holds of 0.0003 USD fit a 0.003 USD limit; 30 decisions at once: 10 allowed, 20 refused.
        await seed(db)
        await set_limit(db, "alice", 10 * PAID_ONLY_ESTIMATE)

        decisions = await authorize_many(db, 30)

        assert sum(d.allowed for d in decisions) == 10
        assert {d.reason for d in decisions if not d.allowed} == {"spending_limit_reached"}
        period = current_period()
        events = await stored_events(db, *LIMIT_EVENTS)
        assert sorted((kind, account, p, data.get("percent")) for kind, account, p, data in events) == [
            ("spending_limit.reached", "alice", period, None),
            ("spending_limit.threshold", "alice", period, 80),
            ("spending_limit.threshold", "alice", period, 100),
        ]
        eighty = next(data for kind, *_, data in events if kind == "spending_limit.threshold" and data["percent"] == 80)
        # Written by the hold that took the committed amount from 7 to 8 estimates: no cost has posted.
        assert eighty == {
            "account": "alice",
            "period": period,
            "percent": 80,
            "spending_limit_nano_usd": 3_000_000,
            "committed_nano_usd": 8 * PAID_ONLY_ESTIMATE,
            "payg_nano_usd": 0,
        }
        assert await costs_posted(db) == 0
        report = await verify(db)
        assert report.ok, [line for check in report.checks for line in check.breaches]

    async def test_decisions_below_every_threshold_write_nothing(self, db: Database) -> None:
        await seed(db)
        await set_limit(db, "alice", 10 * PAID_ONLY_ESTIMATE)

        decisions = await authorize_many(db, 7)

        assert all(d.allowed for d in decisions)
        assert await stored_events(db, *LIMIT_EVENTS) == []

    async def test_refusals_at_the_limit_write_reached_once(self, db: Database) -> None:
        # A limit of one estimate less one nano-USD: the first decision is already refused.
        await seed(db)
        await set_limit(db, "alice", PAID_ONLY_ESTIMATE - 1)

        decisions = await authorize_many(db, 12)

        assert not any(d.allowed for d in decisions)
        events = await stored_events(db, *LIMIT_EVENTS)
        assert [(kind, data["committed_nano_usd"]) for kind, _, _, data in events] == [("spending_limit.reached", 0)]

    async def test_a_zero_limit_has_no_shares_to_alert_on(self, db: Database) -> None:
        await seed(db)
        await set_limit(db, "alice", 0)

        decisions = await authorize_many(db, 3)

        assert [d.reason for d in decisions] == ["spending_limit_reached"] * 3
        assert await stored_events(db, *LIMIT_EVENTS) == []

    async def test_the_accounts_own_thresholds_are_used(self, db: Database) -> None:
        await seed(db)
        await set_limit(db, "alice", 10 * PAID_ONLY_ESTIMATE)
        async with db.session_scope() as session:
            await alerts_service.set_thresholds(
                session, account_name="alice", credits_percent=[], spending_limit_percent=[30], actor="alice"
            )

        await authorize_many(db, 4)

        events = await stored_events(db, *LIMIT_EVENTS)
        assert [(kind, data["percent"], data["committed_nano_usd"]) for kind, _, _, data in events] == [
            ("spending_limit.threshold", 30, 3 * PAID_ONLY_ESTIMATE)
        ]
        async with db.session_scope() as session:
            assert await session.scalar(select(func.count()).select_from(Hold)) == 4
