"""Ledger throughput: ``account_for_new_usage`` per 1,000 new records and ``settle`` per 10,000 costs.

Stores N pending usage records of 1,000 users directly (ingest's HTTP path is measured by
``bench/ingest.py``), accounts for them in batches of 1,000 as ingest does, then settles them
in batches of 10,000 as cost collection does (costs split over credits and pay-as-you-go),
and finally runs ``verify`` over the result. PostgreSQL and SQLite.

    python bench/settle_costs.py [--records 100000] [--quick]

Targets: settle < 0.5 s per 10,000 on PostgreSQL; account_for_new_usage a small share of the
20 ms per 1,000 records that ingest's 50,000 records/s allows. Each batch here names 1,000
distinct accounts, the worst case for the per-account period rows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401
from _common import Row, pg_database, postgres_reachable, print_table
from sqlalchemy import insert

from metering.config import Settings, set_settings
from metering.db import Database
from metering.ledger.verify import verify
from metering.migrate import upgrade_sync
from metering.models import Account, Provider, UsageRecord
from metering.periods import period_of
from metering.usage.accounting import account_for_new_usage, settle
from metering.usage.types import AcceptedUsage, PricedRequest

USERS = 1_000
INGEST_BATCH = 1_000
SETTLE_BATCH = 10_000


async def _seed(database: Database, records: int) -> list[AcceptedUsage]:
    now = datetime.now(UTC)
    started = now - timedelta(minutes=30) if now.day != 1 or now.hour else now
    async with database.session_scope() as session:
        await session.execute(
            insert(Account),
            [
                {
                    "name": f"user-{i:05d}",
                    "kind": "user",
                    "plan": "pro" if i % 2 else "free",
                    "seats": 1,
                    "status": "active",
                    "created_at": now,
                    "updated_at": now,
                }
                for i in range(USERS)
            ],
        )
        session.add(
            Provider(
                id="together",
                url="https://together.example",
                pricing="cost_endpoint",
                cost_endpoint="https://together.example/costs",
                credit_eligible=True,
                default_estimate_nano_usd=100_000,
                hardware_prices_nano_usd_per_second={},
                models={},
                created_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        period = period_of(started)
        accepted: list[AcceptedUsage] = []
        for start in range(0, records, 5_000):
            rows = [
                {
                    "provider_id": "together",
                    "request_id": f"req-{i:09d}",
                    "user_name": f"user-{i % USERS:05d}",
                    "billing_account": f"user-{i % USERS:05d}",
                    "model": "org/model",
                    "custom_key": False,
                    "started_at": started,
                    "period": period,
                    "content_hash": "0" * 32,
                    "status": "pending",
                    "estimate_nano_usd": 0,
                    "received_at": now,
                    "attempts": 0,
                    "bill_to_flagged": False,
                }
                for i in range(start, min(records, start + 5_000))
            ]
            result = await session.execute(insert(UsageRecord).returning(UsageRecord.id), rows)
            for row, record_id in zip(rows, result.scalars(), strict=True):
                accepted.append(
                    AcceptedUsage(
                        id=record_id,
                        provider_id="together",
                        request_id=row["request_id"],
                        user_name=row["user_name"],
                        billing_account=row["billing_account"],
                        model="org/model",
                        period=period,
                        started_at=started,
                        custom_key=False,
                        hold_id=None,
                        duration_ms=None,
                        hardware=None,
                        input_tokens=None,
                        output_tokens=None,
                    )
                )
    return accepted


async def _run(database_url: str, records: int, label: str) -> list[Row]:
    database = Database(database_url)
    try:
        accepted = await _seed(database, records)
        started, started_cpu = time.perf_counter(), time.process_time()
        for start in range(0, len(accepted), INGEST_BATCH):
            async with database.session_scope() as session:
                await account_for_new_usage(session, accepted[start : start + INGEST_BATCH])
        account_seconds = time.perf_counter() - started
        account_cpu = time.process_time() - started_cpu
        batch_seconds, batch_cpu = [], []
        for start in range(0, len(accepted), SETTLE_BATCH):
            batch = accepted[start : start + SETTLE_BATCH]
            began, began_cpu = time.perf_counter(), time.process_time()
            async with database.session_scope() as session:
                result = await settle(session, priced=[PricedRequest(u.id, 1_000_000 + u.id % 997) for u in batch])
            batch_seconds.append(time.perf_counter() - began)
            batch_cpu.append(time.process_time() - began_cpu)
            assert result.priced == len(batch), result
        began = time.perf_counter()
        report = await verify(database)
        verify_seconds = time.perf_counter() - began
        assert report.ok, [(c.name, c.breaches[:3]) for c in report.checks if not c.ok]
    finally:
        await database.dispose()
    per_batch = sorted(batch_seconds)[len(batch_seconds) // 2]
    per_batch_cpu = sorted(batch_cpu)[len(batch_cpu) // 2]
    # Wall time on a shared machine is mostly waiting for a core; this process's CPU time is the
    # steadier figure of Metering's own share (the database server's CPU is not in it on PostgreSQL).
    return [
        Row(f"{label} account_for_new_usage", records / account_seconds, "records/s", "", "wall clock"),
        Row(f"{label} account_for_new_usage, CPU", records / account_cpu, "records/s", "", "this process"),
        Row(
            f"{label} settle, median per 10,000",
            per_batch,
            "s",
            "< 0.5" if label == "pg" else "",
            f"wall clock, {len(batch_seconds)} batches",
        ),
        Row(f"{label} settle per 10,000, CPU", per_batch_cpu, "s", "", "this process"),
        Row(f"{label} verify of {records:,} priced", verify_seconds, "s", "", "clean"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="20,000 records")
    args = parser.parse_args()
    records = 20_000 if args.quick else args.records
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="metering-bench-") as data_dir:
        set_settings(
            Settings(
                environment="embedded",
                data_dir=Path(data_dir),
                service_tokens="bench",
                secret_key="x" * 43 + "=",
                jwt_secret="bench-jwt-secret-long-enough",
            )
        )
        if postgres_reachable():
            with pg_database() as (_, url):
                rows += asyncio.run(_run(url, records, "pg"))
        else:
            print("PostgreSQL not reachable: SQLite only")
        sqlite_url = f"sqlite+aiosqlite:///{data_dir}/bench.db"
        upgrade_sync(sqlite_url)
        rows += asyncio.run(_run(sqlite_url, records, "sqlite"))
    print_table(f"ledger: {records:,} records, {USERS:,} users (half free, half pro)", rows)


if __name__ == "__main__":
    main()
