"""``create-partitions``: the coming months' partitions exist before any row needs them, and rows that
landed in DEFAULT (a month nobody created in time) move into a partition of their own, losing nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from jobs.create_partitions import run_once
from metering.db import Database
from metering.ledger.service import ledger_service
from metering.models import LedgerEntry, UsageRecord, UsageRequestKey, UsageRollup
from metering.partitions.service import months_ahead, partitions_service
from metering.periods import set_clock_offset, utcnow
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.factories.usage import create_pending_usage

FAR = datetime(2041, 3, 10, tzinfo=UTC)


@pytest.fixture
def clock() -> Iterator[None]:
    yield
    set_clock_offset(timedelta(0))


async def _where(db: Database, table: str, period: str) -> list[str]:
    async with db.session_scope() as session:
        return list(
            await session.scalars(
                text(f"SELECT DISTINCT tableoid::regclass::text FROM {table} WHERE period = :p"), {"p": period}
            )
        )


async def test_sqlite_has_nothing_to_create(db: Database) -> None:
    if db.by_dialect(sqlite=False, postgresql=True):
        pytest.skip("SQLite keeps one table per concept")
    assert await run_once(db) == "created 0 partitions; moved 0 rows out of DEFAULT"


async def test_the_coming_months_are_created_once(db: Database, clock: None) -> None:
    if db.by_dialect(sqlite=True, postgresql=False):
        pytest.skip("partitions are PostgreSQL's")
    # Eight months on: the three after the current one are new.
    set_clock_offset(timedelta(days=245))
    wanted = months_ahead(utcnow())
    first = await run_once(db)
    async with db.session_scope() as session:
        for table in ("usage_records", "ledger_entries"):
            assert set(wanted) <= await partitions_service.months(session, table=table)
            assert await partitions_service.missing_months(session, table=table, now=utcnow()) == []
    assert first.startswith("created ") and "moved 0 rows" in first
    assert await run_once(db) == "created 0 partitions; moved 0 rows out of DEFAULT"


async def test_rows_in_default_move_into_their_own_partition(db: Database) -> None:
    if db.by_dialect(sqlite=True, postgresql=False):
        pytest.skip("partitions are PostgreSQL's")
    period = f"{FAR.year:04d}-{FAR.month:02d}"
    async with db.session_scope() as session:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together")
        ids = await create_pending_usage(
            session, provider_id="together", request_ids=["far-1", "far-2"], user="alice", started_at=FAR
        )
        await ledger_service.post(
            session,
            kind="credit_grant",
            idempotency_key="grant:alice:far",
            period=period,
            entries=[(f"credits:alice:{period}", -5), (f"credits_expense:{period}", 5)],
            account_name="alice",
        )
    assert await _where(db, "usage_records", period) == ["usage_records_default"]
    assert await _where(db, "ledger_entries", period) == ["ledger_entries_default"]
    async with db.session_scope() as session:
        rollups_before = await session.scalar(select(func.sum(UsageRollup.requests)))

    summary = await run_once(db)

    assert "usage_records_p2041_03" in summary and "ledger_entries_p2041_03" in summary
    assert "moved 4 rows out of DEFAULT" in summary
    assert await _where(db, "usage_records", period) == ["usage_records_p2041_03"]
    assert await _where(db, "ledger_entries", period) == ["ledger_entries_p2041_03"]
    async with db.session_scope() as session:
        rows = (await session.execute(select(UsageRecord.request_id, UsageRecord.id).order_by(UsageRecord.id))).all()
        assert dict(rows) == ids
        keys = (await session.execute(select(UsageRequestKey.request_id, UsageRequestKey.usage_record_id))).all()
        assert dict(keys) == ids
        amounts = await session.scalars(select(LedgerEntry.amount_nano_usd).order_by(LedgerEntry.id))
        assert list(amounts) == [-5, 5]
        # A move, not an insert and a delete of usage: the totals the triggers keep are unchanged.
        assert await session.scalar(select(func.sum(UsageRollup.requests))) == rollups_before
        fillfactor = await session.scalar(
            text("SELECT reloptions FROM pg_class WHERE relname = 'usage_records_p2041_03'")
        )
    assert fillfactor == ["fillfactor=70"]
    # The next row of that month goes straight to its partition.
    async with db.session_scope() as session:
        await create_pending_usage(session, provider_id="together", request_ids=["far-3"], user="alice", started_at=FAR)
    assert await _where(db, "usage_records", period) == ["usage_records_p2041_03"]
