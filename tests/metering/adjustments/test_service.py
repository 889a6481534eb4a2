"""Making an adjustment: where it is posted, its ledger posting and audit, Idempotency-Key replays, refusals."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest
from sqlalchemy import func, select

from metering.adjustments.errors import AccountNotInvoiced, AdjustmentKeyReused, InvalidAdjustment
from metering.db import Database
from metering.errors import AccountNotFound
from metering.invoicing.service import invoicing_service
from metering.ledger import codes
from metering.ledger.verify import verify
from metering.models import AuditEvent, LedgerTransaction
from tests.metering.adjustments.helpers import (
    LATER,
    USD,
    adjust,
    adjustment_balance,
    adjustments,
    balance,
    close,
)
from tests.metering.invoicing.helpers import charge

SEPT = datetime(2026, 9, 10, 12, tzinfo=UTC)


async def postings(db: Database) -> list[LedgerTransaction]:
    async with db.session_scope() as session:
        return list(
            await session.scalars(
                select(LedgerTransaction)
                .where(LedgerTransaction.kind == codes.ACCOUNT_ADJUSTMENT)
                .order_by(LedgerTransaction.id)
            )
        )


class TestWhereItIsPosted:
    async def test_to_the_corrected_period_while_it_is_open(self, seeded: Database) -> None:
        made = await adjust(seeded, "alice", -USD // 2, "2026-09", request_ids=["r1", "r2"])

        view = made.adjustment
        assert (view.period, view.corrects_period, view.amount_nano_usd, view.kind) == (
            "2026-09",
            "2026-09",
            -500_000_000,
            "adjustment",
        )
        assert (view.request_ids, view.created_by, view.created_at, made.replayed) == (
            ["r1", "r2"],
            "fiona",
            LATER,
            False,
        )
        assert await adjustment_balance(seeded, "alice", "2026-09") == -500_000_000
        assert await balance(seeded, f"{codes.ADJUSTMENTS}:2026-09") == 500_000_000
        [posting] = await postings(seeded)
        assert (posting.idempotency_key, posting.period, posting.account_name, posting.plan) == (
            f"adjustment:{view.id}",
            "2026-09",
            "alice",
            "pro",
        )
        assert (await verify(seeded)).ok

    async def test_after_its_close_to_the_first_open_period(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": USD})
        await close(seeded, "2026-09")

        made = await adjust(seeded, "alice", -USD // 4, "2026-09")

        assert (made.adjustment.period, made.adjustment.corrects_period) == ("2026-10", "2026-09")
        assert await adjustment_balance(seeded, "alice", "2026-10") == -250_000_000
        [posting] = await postings(seeded)
        assert (posting.period, posting.original_period) == ("2026-10", "2026-09")
        assert (await verify(seeded)).ok

    async def test_a_month_before_a_closed_one_counts_as_closed(self, seeded: Database) -> None:
        await close(seeded, "2026-10")

        made = await adjust(seeded, "alice", USD, "2026-08")

        assert (made.adjustment.period, made.adjustment.corrects_period) == ("2026-11", "2026-08")

    async def test_the_current_period(self, seeded: Database) -> None:
        made = await adjust(seeded, "acme", 3 * USD, "2026-12")
        assert made.adjustment.period == "2026-12"


class TestAudit:
    async def test_who_when_why_before_and_after(self, seeded: Database) -> None:
        await adjust(seeded, "alice", USD, "2026-09")
        made = await adjust(seeded, "alice", -USD // 4, "2026-09", reason="double-charged request", request_ids=["x"])

        async with seeded.session_scope() as session:
            events = list(
                await session.scalars(
                    select(AuditEvent).where(AuditEvent.account_name == "alice").order_by(AuditEvent.id)
                )
            )
        assert [(event.actor, event.action, event.created_at) for event in events] == [
            ("fiona", "adjustment.create", LATER),
            ("fiona", "adjustment.create", LATER),
        ]
        assert orjson.loads(events[1].before) == {"period": "2026-09", "adjustments_nano_usd": USD}
        assert orjson.loads(events[1].after) == {
            "id": made.adjustment.id,
            "kind": "adjustment",
            "amount_nano_usd": -250_000_000,
            "period": "2026-09",
            "corrects_period": "2026-09",
            "reason": "double-charged request",
            "request_ids": ["x"],
            "adjustments_nano_usd": 750_000_000,
        }


class TestIdempotencyKey:
    async def test_the_same_key_and_body_is_the_same_adjustment_posted_once(self, seeded: Database) -> None:
        first = await adjust(seeded, "alice", -USD, "2026-09", key="k-1", request_ids=["r1"])
        again = await adjust(seeded, "alice", -USD, "2026-09", key="k-1", request_ids=["r1"])

        assert (again.adjustment, again.replayed, first.replayed) == (first.adjustment, True, False)
        assert len(await adjustments(seeded, "alice")) == 1
        assert len(await postings(seeded)) == 1
        assert await adjustment_balance(seeded, "alice", "2026-09") == -USD

    async def test_a_replay_after_the_period_closed_is_still_the_same_adjustment(self, seeded: Database) -> None:
        first = await adjust(seeded, "alice", USD, "2026-09", key="k-1")
        await close(seeded, "2026-09")

        again = await adjust(seeded, "alice", USD, "2026-09", key="k-1")

        assert (again.adjustment.id, again.adjustment.period, again.replayed) == (first.adjustment.id, "2026-09", True)
        assert len(await postings(seeded)) == 1

    @pytest.mark.parametrize(
        "change",
        [{"amount": -2 * USD}, {"reason": "another"}, {"period": "2026-08"}, {"request_ids": ["r2"]}],
        ids=["amount", "reason", "period", "request-ids"],
    )
    async def test_the_same_key_with_another_body_is_a_conflict(self, seeded: Database, change: dict) -> None:
        first = await adjust(seeded, "alice", -USD, "2026-09", key="k-1", request_ids=["r1"])
        asked = {"amount": -USD, "period": "2026-09", "request_ids": ["r1"], **change}

        with pytest.raises(AdjustmentKeyReused) as refused:
            await adjust(
                seeded,
                "alice",
                asked["amount"],
                asked["period"],
                key="k-1",
                **{name: value for name, value in asked.items() if name in ("reason", "request_ids")},
            )

        assert "\n" not in refused.value.detail
        assert f"adjustment {first.adjustment.id}" in refused.value.detail
        assert len(await postings(seeded)) == 1

    async def test_keys_are_per_account(self, seeded: Database) -> None:
        alice = await adjust(seeded, "alice", USD, "2026-09", key="k-1")
        erin = await adjust(seeded, "erin", USD, "2026-09", key="k-1")
        assert alice.adjustment.id != erin.adjustment.id
        assert not erin.replayed

    async def test_without_a_key_each_request_is_a_new_adjustment(self, seeded: Database) -> None:
        await adjust(seeded, "alice", USD, "2026-09")
        await adjust(seeded, "alice", USD, "2026-09")
        assert await adjustment_balance(seeded, "alice", "2026-09") == 2 * USD


class TestRefusals:
    async def test_an_account_without_pay_as_you_go_is_never_invoiced(self, seeded: Database) -> None:
        with pytest.raises(AccountNotInvoiced) as refused:
            await adjust(seeded, "bob", -USD, "2026-09")
        assert "plan 'free'" in refused.value.detail
        assert await adjustments(seeded, "bob") == []

    async def test_an_unknown_account(self, seeded: Database) -> None:
        with pytest.raises(AccountNotFound):
            await adjust(seeded, "nobody", USD, "2026-09")

    @pytest.mark.parametrize(
        ("amount", "period", "reason", "request_ids", "key"),
        [
            (0, "2026-09", "why", None, None),
            (True, "2026-09", "why", None, None),
            (10**15 + 1, "2026-09", "why", None, None),
            (-(10**15) - 1, "2026-09", "why", None, None),
            (USD, "2027-01", "why", None, None),
            (USD, "1969-12", "why", None, None),
            (USD, "2026-13", "why", None, None),
            (USD, "2026-09", "   ", None, None),
            (USD, "2026-09", "x" * 501, None, None),
            (USD, "2026-09", "why", ["r"] * 1_001, None),
            (USD, "2026-09", "why", ["r" * 257], None),
            (USD, "2026-09", "why", [""], None),
            (USD, "2026-09", "why", None, "has space"),
            (USD, "2026-09", "why", None, "k" * 201),
        ],
        ids=[
            "zero",
            "bool",
            "too-large",
            "too-small",
            "future",
            "before-1970",
            "month-13",
            "blank-reason",
            "long-reason",
            "too-many-ids",
            "long-id",
            "empty-id",
            "key-with-space",
            "long-key",
        ],
    )
    async def test_invalid_input(
        self, seeded: Database, amount: object, period: str, reason: str, request_ids: list[str] | None, key: str | None
    ) -> None:
        with pytest.raises(InvalidAdjustment):
            await adjust(seeded, "alice", amount, period, reason=reason, request_ids=request_ids, key=key)
        async with seeded.session_scope() as session:
            assert await session.scalar(select(func.count()).select_from(LedgerTransaction)) == 0


class TestConcurrency:
    async def test_requests_racing_with_one_key_make_one_adjustment(self, seeded: Database) -> None:
        made = await asyncio.gather(*(adjust(seeded, "alice", -USD, "2026-09", key="race") for _ in range(4)))

        assert len({m.adjustment.id for m in made}) == 1
        assert sorted(m.replayed for m in made) == [False, True, True, True]
        assert len(await postings(seeded)) == 1
        assert await adjustment_balance(seeded, "alice", "2026-09") == -USD
        assert (await verify(seeded)).ok

    async def test_an_adjustment_waits_for_a_close_in_progress_then_lands_after_it(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": USD})
        async with seeded.session_scope() as closing:
            await invoicing_service.close_period(closing, period="2026-09", force=True, now=LATER)
            waiting = asyncio.create_task(adjust(seeded, "alice", -USD // 2, "2026-09"))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # held by the close's lock until it commits

        made = await waiting

        assert made.adjustment.period == "2026-10"
        assert await adjustment_balance(seeded, "alice", "2026-09") == 0
        assert (await verify(seeded)).ok
