"""A database with months to archive, built through the real paths: two closed months of priced usage,
holds and grants, a late cost of the second posted to the open month, and usage of the open month."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select

from metering.db import Database
from metering.invoicing.service import invoicing_service
from metering.models import Hold, LedgerEntry, LedgerTransaction, UsageRecord
from metering.periods import next_period, period_bounds, period_of, utcnow
from tests.factories.billing_data import price, seed_world
from tests.factories.usage import create_pending_usage
from tests.support import databases

PER_MONTH = 6


@dataclass(frozen=True)
class World:
    months: tuple[str, str]  # the two closed months, oldest first
    current: str
    # Per month: the rows of each archived table before the archive.
    rows: dict[str, dict[str, int]]
    late_request: str  # a request of the second month priced after it closed


@contextmanager
def scratch_database() -> Iterator[str]:
    """A migrated PostgreSQL database of one test's own (its partitions get dropped)."""
    name, url = databases.migrated_pg_database("metering_archive_test")
    try:
        yield url
    finally:
        databases.drop_pg_database(name)


async def build_world(db: Database) -> World:
    now = utcnow()
    first = period_of(now - timedelta(days=130))
    second, current = next_period(first), period_of(now)
    await seed_world(db)
    late = f"{second}-late"
    for month in (first, second, current):
        start, _ = period_bounds(month)
        started = now - timedelta(minutes=30) if month == current else start + timedelta(days=3)
        request_ids = [f"{month}-{i}" for i in range(PER_MONTH)] + ([late] if month == second else [])
        async with db.session_scope() as session:
            for index, request_id in enumerate(request_ids):
                user, payer = (("alice", "acme"), ("erin", "erin"), ("dave", "globex"))[index % 3]
                await create_pending_usage(
                    session,
                    provider_id="together",
                    request_ids=[request_id],
                    user=user,
                    billing_account=payer,
                    started_at=started + timedelta(minutes=index),
                )
            if month != current:
                for index, status in enumerate(("expired", "attached")):
                    session.add(
                        Hold(
                            id=str(uuid.uuid4()),
                            account_name="erin",
                            user_name="erin",
                            provider_id="together",
                            model="org/model",
                            period=month,
                            amount_nano_usd=1_000 + index,
                            status=status,
                            created_at=started,
                            expires_at=started + timedelta(minutes=15),
                        )
                    )
        await price(db, {request_id: 1_500_000_000 + 7 * i for i, request_id in enumerate(request_ids[:PER_MONTH])})
    async with db.session_scope() as session:
        await invoicing_service.close_period(session, period=second, now=now)
    # Priced after its month closed: posted to the open month, naming a record of the closed one.
    await price(db, {late: 900_000})
    rows = {month: await month_rows(db, month) for month in (first, second)}
    return World((first, second), current, rows, late)


async def month_rows(db: Database, period: str) -> dict[str, int]:
    async with db.session_scope() as session:
        return {
            model.__tablename__: int(
                await session.scalar(select(func.count()).select_from(model).where(model.period == period)) or 0
            )
            for model in (UsageRecord, LedgerEntry, LedgerTransaction, Hold)
        }
