"""The usage series reads only the (billing_account, started_at) index on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from metering.analytics.service import analytics_service
from metering.db import Database
from metering.models import Account
from tests.factories.billing_data import insert_usage, seed_world


async def test_the_series_is_an_index_only_scan_with_the_same_counts(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("SQLite has no covering indexes; its index is unchanged")
    await seed_world(db)
    start = datetime(2026, 10, 1, tzinfo=UTC)
    await insert_usage(
        db,
        [
            {
                "request_id": f"r{i}",
                "user": ("alice", "bob")[i % 2],
                "billing_account": "acme",
                "started_at": start + timedelta(hours=i),
                "status": "priced",
                "cost": 1_000 + i,
            }
            for i in range(48)
        ],
    )
    async with db.engine.connect() as connection:  # VACUUM runs outside a transaction
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text("VACUUM (ANALYZE) usage_records"))
    async with db.session_scope() as session:
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        await session.execute(text("SET LOCAL enable_bitmapscan = off"))
        plan = "\n".join(
            row[0]
            for row in await session.execute(
                text(
                    "EXPLAIN SELECT user_name, count(*), sum(cost_nano_usd) FROM usage_records "
                    "WHERE billing_account = 'acme' AND started_at >= :start GROUP BY user_name"
                ),
                {"start": start},
            )
        )
        # usage_records is partitioned by month on PostgreSQL: each partition scans its copy of the index.
        copies = set(
            await session.scalars(
                text(
                    "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = CAST('ix_usage_records_billing_time' AS regclass)"
                )
            )
        )
        account = await session.get(Account, "acme")
        series = await analytics_service.get_usage_series(
            session, account=account, start=start, end=start + timedelta(days=2), interval="day", group_by="member"
        )
    scans = [line.split(" on ")[0].split("->")[-1].strip() for line in plan.splitlines() if " Scan " in line]
    assert scans and all(scan.startswith("Index Only Scan using ") for scan in scans), plan
    assert {scan.removeprefix("Index Only Scan using ") for scan in scans} <= copies
    assert [(row.key, row.requests, row.cost_nano_usd) for row in series.buckets] == [
        ("alice", 12, sum(1_000 + i for i in range(0, 24, 2))),
        ("bob", 12, sum(1_000 + i for i in range(1, 24, 2))),
        ("alice", 12, sum(1_000 + i for i in range(24, 48, 2))),
        ("bob", 12, sum(1_000 + i for i in range(25, 48, 2))),
    ]
