"""Closing a period: invoices per pay-as-you-go account, lines per provider, cents with a carried remainder."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from jobs import close_period
from metering.accounts.service import AccountSync, account_service
from metering.config import Settings
from metering.db import Database
from metering.exports.service import export_service
from metering.invoicing.errors import PeriodNotEnded
from metering.invoicing.service import invoicing_service
from metering.ledger import codes
from metering.ledger.service import ledger_service
from metering.ledger.verify import verify
from metering.models import LedgerAccount, LedgerTransaction, Period
from tests.metering.invoicing.helpers import charge, invoices, lines

SEPT = datetime(2026, 9, 10, 12, tzinfo=UTC)
OCT = datetime(2026, 10, 10, 12, tzinfo=UTC)
AFTER_GRACE = datetime(2026, 11, 5, tzinfo=UTC)


async def close(db: Database, period: str, *, force: bool = True, now: datetime = AFTER_GRACE):
    async with db.session_scope() as session:
        return await invoicing_service.close_period(session, period=period, force=force, now=now)


class TestClosePeriod:
    async def test_invoices_each_payg_account_with_a_line_per_provider(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 1_234_567_890, "a2": 10_000_000})
        await charge(seeded, account="alice", started_at=SEPT, costs={"a3": 5_432_109}, provider="fireworks-ai")
        await charge(seeded, account="bob", started_at=SEPT, costs={"b1": 900_000_000})  # free: written off

        result = await close(seeded, "2026-09")

        assert (result.outcome, result.invoices, result.amount_cents, result.refused) == ("closed", 1, 124, {})
        found = await invoices(seeded)
        assert list(found) == [("alice", "2026-09")]
        invoice = found[("alice", "2026-09")]
        assert (invoice.payg_nano_usd, invoice.carried_in_nano_usd) == (1_249_999_999, 0)
        assert (invoice.amount_cents, invoice.carried_out_nano_usd, invoice.status) == (124, 9_999_999, "pending")
        by_provider = await lines(seeded, invoice.id)
        together, fireworks = by_provider["together"], by_provider["fireworks-ai"]
        assert (together.requests_count, together.amount_nano_usd, together.amount_cents) == (2, 1_244_567_890, 124)
        assert (together.stripe_status, fireworks.stripe_status) == ("pending", "skipped")
        assert (fireworks.requests_count, fireworks.amount_nano_usd, fireworks.amount_cents) == (1, 5_432_109, 0)
        async with seeded.session_scope() as session:
            assert await invoicing_service.line_request_ids(session, line_id=together.id) == ["a1", "a2"]
            assert await invoicing_service.line_request_ids(session, line_id=fireworks.id) == ["a3"]
            period = await session.get(Period, "2026-09")
            assert (period.status, period.closed_at) == ("closed", AFTER_GRACE)
        assert (await verify(seeded)).ok

    async def test_each_line_traces_to_its_request_ids_in_the_ledger_export(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 1_234_567_890, "a2": 10_000_000})
        await charge(seeded, account="alice", started_at=SEPT, costs={"a3": 5_432_109}, provider="fireworks-ai")
        await close(seeded, "2026-09")
        invoice = (await invoices(seeded))[("alice", "2026-09")]

        body = b"".join(
            [
                chunk
                async for chunk in export_service.stream_report(seeded, report="ledger", period="2026-09", fmt="jsonl")
            ]
        )
        receivable = [
            row
            for row in map(orjson.loads, body.splitlines())
            if row["ledger_account_kind"] == codes.RECEIVABLE and row["account_name"] == "alice"
        ]
        for provider, line in (await lines(seeded, invoice.id)).items():
            entries = [row for row in receivable if row["provider_id"] == provider]
            assert sorted(row["request_id"] for row in entries) == sorted(
                {"together": ["a1", "a2"], "fireworks-ai": ["a3"]}[provider]
            )
            assert sum(row["amount_nano_usd"] for row in entries) == line.amount_nano_usd

    async def test_a_second_close_is_a_no_op(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 25_000_000})
        assert (await close(seeded, "2026-09")).invoices == 1

        again = await close(seeded, "2026-09")

        assert again.outcome == "already_closed"
        assert [(i.amount_cents, i.carried_out_nano_usd) for i in (await invoices(seeded)).values()] == [(2, 5_000_000)]

    async def test_waits_for_the_grace_window_unless_forced(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 30_000_000})
        in_grace = datetime(2026, 10, 2, 23, 59, tzinfo=UTC)  # 47h59m after the end

        waiting = await close(seeded, "2026-09", force=False, now=in_grace)
        assert (waiting.outcome, waiting.closes_after) == ("in_grace", datetime(2026, 10, 3, tzinfo=UTC))
        assert await invoices(seeded) == {}

        closed = await close(seeded, "2026-09", force=False, now=datetime(2026, 10, 3, tzinfo=UTC))
        assert (closed.outcome, closed.amount_cents) == ("closed", 3)

    async def test_forced_close_skips_the_grace_window(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 30_000_000})
        result = await close(seeded, "2026-09", force=True, now=datetime(2026, 10, 1, 0, 1, tzinfo=UTC))
        assert (result.outcome, result.amount_cents) == ("closed", 3)

    async def test_default_is_the_previous_period(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=OCT, costs={"a1": 70_000_000})
        message = await close_period.run_once(seeded, now=AFTER_GRACE + timedelta(days=1))
        assert message.startswith("period 2026-10 closed: 1 invoices, 7 cents from 70000000 nano-USD")

    async def test_refuses_a_period_not_yet_over(self, seeded: Database) -> None:
        with pytest.raises(PeriodNotEnded):
            await close(seeded, "2026-11", now=datetime(2026, 11, 30, 23, tzinfo=UTC))

    async def test_a_month_before_a_closed_one_counts_as_closed(self, seeded: Database) -> None:
        await close(seeded, "2026-10")
        result = await close(seeded, "2026-09")
        assert (result.outcome, result.closed_by) == ("already_closed", "2026-10")
        assert result.describe() == "period 2026-09 counts as closed: the later period 2026-10 is closed"

    async def test_closing_a_month_closes_the_earlier_active_months_first(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 12_345_678})
        await charge(seeded, account="alice", started_at=OCT, costs={"a2": 20_000_000})

        result = await close(seeded, "2026-10")

        assert [(r.period, r.outcome, r.amount_cents) for r in result.earlier] == [("2026-09", "closed", 1)]
        assert (result.period, result.outcome, result.amount_cents) == ("2026-10", "closed", 2)
        assert result.describe().startswith("period 2026-09 closed: 1 invoices, 1 cents")
        found = await invoices(seeded)
        assert (found[("alice", "2026-09")].carried_out_nano_usd, found[("alice", "2026-10")].carried_in_nano_usd) == (
            2_345_678,
            2_345_678,
        )
        assert (await verify(seeded)).ok

    async def test_a_late_cost_of_a_month_before_a_closed_one_lands_in_the_open_period(self, seeded: Database) -> None:
        """A spool delivered late: its month was never closed itself, but a later one was."""
        await charge(seeded, account="alice", started_at=OCT, costs={"a1": 10_000_000})
        await close(seeded, "2026-10")

        await charge(seeded, account="alice", started_at=SEPT, costs={"late": 30_000_000})

        async with seeded.session_scope() as session:
            late = (
                await session.scalars(
                    select(LedgerTransaction).where(LedgerTransaction.kind == codes.LATE_REQUEST_COST)
                )
            ).one()
            open_period = late.period
            assert (late.original_period, open_period > "2026-10") == ("2026-09", True)
            grants = await session.scalars(
                select(LedgerTransaction.period).where(LedgerTransaction.kind == codes.GRANT)
            )
            assert "2026-09" not in set(grants)
            receivable = await session.scalar(
                select(LedgerAccount.balance_nano_usd).where(
                    LedgerAccount.code == codes.receivable("alice", open_period)
                )
            )
            assert receivable == 30_000_000
        assert (await close(seeded, "2026-09")).outcome == "already_closed"
        assert (await verify(seeded)).ok

    async def test_free_account_with_a_receivable_is_refused_not_invoiced(self, seeded: Database) -> None:
        # Impossible through pricing (a free account's overage is written off); made by hand here.
        async with seeded.session_scope() as session:
            await ledger_service.post(
                session,
                kind="manual",
                idempotency_key="manual:bob",
                period="2026-09",
                account_name="bob",
                entries=[
                    (codes.receivable("bob", "2026-09"), 50_000_000),
                    (codes.payable("together", "2026-09"), -50_000_000),
                ],
            )
        result = await close(seeded, "2026-09")
        assert (result.invoices, result.refused) == (
            0,
            {"bob": "charged 50000000 nano-USD on plan 'free', which has no pay-as-you-go"},
        )
        assert "REFUSED bob" in result.describe()
        assert await invoices(seeded) == {}

    async def test_pay_as_you_go_run_up_before_a_downgrade_to_free_is_invoiced(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 1_000_000_000})
        async with seeded.session_scope() as session:
            await account_service.upsert_account(session, name="alice", sync=AccountSync(kind="user", plan="free"))
            plans = list(
                await session.scalars(select(LedgerTransaction.plan).where(LedgerTransaction.kind == "request_cost"))
            )
        assert plans == ["pro"]  # the plan the cost was charged under
        assert (await verify(seeded)).ok

        result = await close(seeded, "2026-09")

        assert (result.invoices, result.amount_cents, result.refused) == (1, 100, {})
        assert (await invoices(seeded))[("alice", "2026-09")].payg_nano_usd == 1_000_000_000
        assert (await verify(seeded)).ok


class TestCarriedRemainder:
    async def test_remainder_carries_to_the_next_invoice(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 15_000_000})
        await charge(seeded, account="alice", started_at=OCT, costs={"a2": 6_000_000})
        await close(seeded, "2026-09")
        await close(seeded, "2026-10")

        found = await invoices(seeded)
        sept, october = found[("alice", "2026-09")], found[("alice", "2026-10")]
        assert (sept.amount_cents, sept.carried_out_nano_usd) == (1, 5_000_000)
        assert (october.carried_in_nano_usd, october.amount_cents, october.carried_out_nano_usd) == (
            5_000_000,
            1,
            1_000_000,
        )
        assert (await lines(seeded, october.id))["together"].amount_cents == 1

    async def test_under_a_cent_is_kept_as_nothing_due_and_carried(self, seeded: Database) -> None:
        await charge(seeded, account="erin", started_at=SEPT, costs={"e1": 4_000_000})
        await charge(seeded, account="erin", started_at=OCT, costs={"e2": 7_000_000})
        first = await close(seeded, "2026-09")
        await close(seeded, "2026-10")

        assert (first.invoices, first.nothing_due) == (0, 1)
        found = await invoices(seeded)
        sept, october = found[("erin", "2026-09")], found[("erin", "2026-10")]
        assert (sept.status, sept.amount_cents, sept.carried_out_nano_usd) == ("nothing_due", 0, 4_000_000)
        assert (october.status, october.amount_cents, october.carried_out_nano_usd) == ("pending", 1, 1_000_000)

    async def test_late_cost_after_close_lands_in_the_open_period(self, seeded: Database) -> None:
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 20_000_000})
        await close(seeded, "2026-09")

        await charge(seeded, account="alice", started_at=SEPT, costs={"late": 30_000_000})

        assert (await invoices(seeded))[("alice", "2026-09")].payg_nano_usd == 20_000_000
        async with seeded.session_scope() as session:
            late = await session.scalar(
                select(LedgerTransaction).where(LedgerTransaction.kind == codes.LATE_REQUEST_COST)
            )
            receivable = await session.scalar(
                select(LedgerAccount).where(LedgerAccount.code == codes.receivable("alice", late.period))
            )
        assert (late.original_period, late.period != "2026-09", receivable.balance_nano_usd) == (
            "2026-09",
            True,
            30_000_000,
        )
        assert (await verify(seeded)).ok


class TestCloseCommand:
    async def test_metering_jobs_run_once_close_period(
        self, seeded: Database, settings: Settings, tmp_path: Path, backend: str
    ) -> None:
        if backend != "sqlite":
            pytest.skip("the command line is the same on both backends; the close itself is tested on both above")
        await charge(seeded, account="alice", started_at=SEPT, costs={"a1": 41_000_000})
        env = {
            **os.environ,
            "METERING_DATABASE_URL": settings.database_url,
            "METERING_DATA_DIR": str(tmp_path),
            "METERING_SERVICE_TOKENS": settings.service_tokens,
            "METERING_SECRET_KEY": settings.secret_key,
            "METERING_JWT_SECRET": settings.jwt_secret,
        }
        command = [
            sys.executable,
            "-m",
            "cli.main",
            "jobs",
            "run-once",
            "close-period",
            "--period",
            "2026-09",
            "--force",
        ]
        root = Path(__file__).resolve().parents[3]

        first = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=60)
        second = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=60)

        assert first.returncode == 0, first.stderr
        assert first.stdout.startswith("period 2026-09 closed: 1 invoices, 4 cents from 41000000 nano-USD")
        assert second.stdout.strip() == "period 2026-09 already closed"
        assert [(i.amount_cents, i.carried_out_nano_usd) for i in (await invoices(seeded)).values()] == [(4, 1_000_000)]
