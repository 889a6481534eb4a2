"""Migration 0014 converts a database with data in it: every row kept, in its month's partition, every key kept.

Each test upgrades a fresh database to the revision before 0014 (read from the migration's
script), writes rows with plain SQL as the earlier schema had them, upgrades, and compares.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from alembic import command

from metering.migrate import MIGRATIONS_DIR, alembic_config, upgrade_sync
from tests.support import databases

SCRIPT = MIGRATIONS_DIR / "versions" / "2026-12-07-0700_monthly_partitions.py"
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
# Months of rows that exist before the migration; 1999-01 is long past, yet gets its partition too.
MONTHS = ("1999-01", "2026-10", "2026-11", "2026-12")


def _script() -> object:
    spec = importlib.util.spec_from_file_location("monthly_partitions_0014", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MIGRATION = _script()
PREVIOUS: str = MIGRATION.down_revision  # type: ignore[attr-defined]
REVISION: str = MIGRATION.revision  # type: ignore[attr-defined]

ACCOUNTS = "INSERT INTO accounts VALUES ($1, 'user', 'pro', 1, 'active', NULL, NULL, $2, $2)"
PROVIDER = (
    "INSERT INTO providers (id, url, request_id_header, pricing, credit_eligible, default_estimate_nano_usd, "
    "hardware_prices_nano_usd_per_second, models, created_at, updated_at) "
    "VALUES ('together', 'https://t.example', 'Inference-Id', 'cost_endpoint', true, 100, '{}', '{}', $1, $1)"
)
USAGE = (
    "INSERT INTO usage_records (provider_id, request_id, user_name, billing_account, bill_to_flagged, model, "
    "custom_key, started_at, period, content_hash, status, estimate_nano_usd, cost_nano_usd, received_at, attempts) "
    "VALUES ('together', $1, $2, $2, false, 'org/model', false, $3, $4, $5, $6, 7, $7, $3, 0) RETURNING id"
)


@pytest.fixture
def pg_url(postgres_session_url: str | None) -> Iterator[str]:
    if postgres_session_url is None:
        pytest.skip("PostgreSQL not reachable")
    name = databases.create_pg_database("metering_partitions_migration")
    try:
        yield databases.pg_url(databases.PG_ADMIN_DSN, name)
    finally:
        databases.drop_pg_database(name)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _seed(dsn: str) -> None:
    """Users, a provider, 3 records a month (one priced, with its cost posting of 2 entries), in each of MONTHS."""
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            for user in ("alice", "bob"):
                await connection.execute(ACCOUNTS, user, NOW)
            await connection.execute(PROVIDER, NOW)
            for month in MONTHS:
                started = datetime.fromisoformat(f"{month}-15T10:00:00+00:00")
                ids = [
                    await connection.fetchval(
                        USAGE,
                        f"{month}-{i}",
                        ("alice", "bob")[i % 2],
                        started,
                        month,
                        f"{i:032x}",
                        "priced" if i == 0 else "pending",
                        1_000 if i == 0 else None,
                    )
                    for i in range(3)
                ]
                accounts = [
                    await connection.fetchval(
                        "INSERT INTO ledger_accounts (code, kind, owner, period, balance_nano_usd) "
                        "VALUES ($1, $2, $3, $4, $5) RETURNING id",
                        code,
                        kind,
                        owner,
                        month,
                        balance,
                    )
                    for code, kind, owner, balance in (
                        (f"receivable:alice:{month}", "receivable", "alice", 1_000),
                        (f"payable:together:{month}", "payable", "together", -1_000),
                    )
                ]
                transaction = await connection.fetchval(
                    "INSERT INTO ledger_transactions (kind, idempotency_key, account_name, provider_id, period, "
                    "usage_record_id, plan, created_at) VALUES ('request_cost', $1, 'alice', 'together', $2, $3, 'pro', $4) "
                    "RETURNING id",
                    f"cost:{ids[0]}",
                    month,
                    ids[0],
                    NOW,
                )
                for account, amount in zip(accounts, (1_000, -1_000), strict=True):
                    await connection.execute(
                        "INSERT INTO ledger_entries (transaction_id, ledger_account_id, amount_nano_usd) VALUES ($1, $2, $3)",
                        transaction,
                        account,
                        amount,
                    )
    finally:
        await connection.close()


async def _rows(dsn: str, query: str) -> list[tuple[object, ...]]:
    connection = await asyncpg.connect(dsn)
    try:
        return [tuple(row) for row in await connection.fetch(query)]
    finally:
        await connection.close()


USAGE_COLUMNS = (
    "id, provider_id, request_id, user_name, billing_account, model, started_at, period, content_hash, status, "
    "estimate_nano_usd, cost_nano_usd, received_at"
)


def test_postgres_rows_move_into_their_months_partitions(pg_url: str) -> None:
    dsn = _dsn(pg_url)
    upgrade_sync(pg_url, PREVIOUS)
    asyncio.run(_seed(dsn))
    usage_before = asyncio.run(_rows(dsn, f"SELECT {USAGE_COLUMNS} FROM usage_records ORDER BY id"))
    entries_before = asyncio.run(
        _rows(
            dsn,
            "SELECT e.id, e.transaction_id, e.ledger_account_id, e.amount_nano_usd, t.period "
            "FROM ledger_entries AS e JOIN ledger_transactions AS t ON t.id = e.transaction_id ORDER BY e.id",
        )
    )
    rollups_before = asyncio.run(_rows(dsn, "SELECT sum(requests), sum(pending_requests) FROM usage_rollups"))

    upgrade_sync(pg_url, REVISION)

    assert asyncio.run(_rows(dsn, f"SELECT {USAGE_COLUMNS} FROM usage_records ORDER BY id")) == usage_before
    assert len(usage_before) == 3 * len(MONTHS)
    entries = asyncio.run(
        _rows(
            dsn, "SELECT id, transaction_id, ledger_account_id, amount_nano_usd, period FROM ledger_entries ORDER BY id"
        )
    )
    assert entries == entries_before
    # Every row in its month's partition, none in DEFAULT.
    for table in ("usage_records", "ledger_entries"):
        placed = asyncio.run(_rows(dsn, f"SELECT DISTINCT tableoid::regclass::text, period FROM {table} ORDER BY 2"))
        assert placed == [(f"{table}_p{month.replace('-', '_')}", month) for month in MONTHS]
    # The current month and three ahead exist (from the migration's clock), and a DEFAULT partition.
    partitions = {
        name
        for (name,) in asyncio.run(
            _rows(dsn, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid")
        )
    }
    now = datetime.now(UTC)
    assert f"usage_records_p{now.year:04d}_{now.month:02d}" in partitions
    assert {"usage_records_default", "ledger_entries_default"} <= partitions
    # Each record's key, naming it.
    keys = asyncio.run(
        _rows(dsn, "SELECT provider_id, request_id, period, usage_record_id FROM usage_request_keys ORDER BY 4")
    )
    assert keys == [(row[1], row[2], row[7], row[0]) for row in usage_before]
    # The rollup totals were not counted again by the copy, and their triggers are back on the new table.
    assert asyncio.run(_rows(dsn, "SELECT sum(requests), sum(pending_requests) FROM usage_rollups")) == rollups_before
    asyncio.run(_check_constraints(dsn, max(row[0] for row in usage_before)))


async def _check_constraints(dsn: str, last_id: int) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        started = datetime(2026, 11, 20, tzinfo=UTC)
        new_id = await connection.fetchval(USAGE, "new", "alice", started, "2026-11", "f" * 32, "pending", None)
        assert new_id > last_id  # the sequence moved over with the ids
        assert await connection.fetchval("SELECT usage_record_id FROM usage_request_keys WHERE request_id = 'new'") == (
            new_id
        )
        # The same (provider, request_id) again, even in another month: a unique violation, as before.
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(USAGE, "new", "bob", NOW, "2026-12", "e" * 32, "pending", None)
        # A month without a partition lands in DEFAULT, not lost.
        await connection.execute(
            USAGE, "far", "bob", datetime(2040, 1, 2, tzinfo=UTC), "2040-01", "d" * 32, "pending", None
        )
        assert await connection.fetchval(
            "SELECT tableoid::regclass::text FROM usage_records WHERE request_id = 'far'"
        ) == ("usage_records_default")
        with pytest.raises(asyncpg.CheckViolationError):
            await connection.execute(USAGE, "bad", "bob", NOW, "2026-12", "c" * 32, "priced", None)
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await connection.execute(USAGE, "ghost", "nobody", NOW, "2026-12", "b" * 32, "pending", None)
        # The foreign key to usage_records.id is gone; one cost transaction per record still.
        with pytest.raises(asyncpg.UniqueViolationError):
            await connection.execute(
                "INSERT INTO ledger_transactions (kind, idempotency_key, period, usage_record_id, created_at) "
                "SELECT 'request_cost', 'again', period, usage_record_id, created_at FROM ledger_transactions LIMIT 1"
            )
        with pytest.raises(asyncpg.ForeignKeyViolationError):
            await connection.execute(
                "INSERT INTO ledger_entries (transaction_id, ledger_account_id, amount_nano_usd, period) "
                "VALUES (-1, -1, 0, '2026-12')"
            )
        # The rollup triggers fire on the partitioned table.
        assert await connection.fetchval("SELECT count(*) FROM usage_rollups WHERE NOT folded") > 0
    finally:
        await connection.close()


def test_postgres_downgrade_gives_back_one_table_each(pg_url: str) -> None:
    dsn = _dsn(pg_url)
    upgrade_sync(pg_url, PREVIOUS)
    asyncio.run(_seed(dsn))
    before = asyncio.run(_rows(dsn, f"SELECT {USAGE_COLUMNS} FROM usage_records ORDER BY id"))
    upgrade_sync(pg_url, REVISION)
    command.downgrade(alembic_config(pg_url), PREVIOUS)
    assert asyncio.run(_rows(dsn, f"SELECT {USAGE_COLUMNS} FROM usage_records ORDER BY id")) == before
    assert asyncio.run(_rows(dsn, "SELECT relname FROM pg_class WHERE relkind = 'p' OR relispartition")) == []
    constraints = asyncio.run(
        _rows(
            dsn,
            "SELECT conname FROM pg_constraint WHERE conname LIKE 'uq_usage_records%' OR conname LIKE 'fk_ledger_t%'",
        )
    )
    assert sorted(constraints) == [
        ("fk_ledger_transactions_usage_record_id_usage_records",),
        ("uq_usage_records_provider_id_request_id",),
    ]
    upgrade_sync(pg_url, REVISION)


def test_sqlite_entries_take_their_transactions_period(tmp_path: Path) -> None:
    path = tmp_path / "metering.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_sync(url, PREVIOUS)
    connection = sqlite3.connect(path)
    with connection:
        connection.execute(
            "INSERT INTO ledger_accounts VALUES (1, 'write_off:2026-11', 'write_off', NULL, '2026-11', 0)"
        )
        for id_, period in ((1, "2026-10"), (2, "2026-11")):
            connection.execute(
                "INSERT INTO ledger_transactions (id, kind, idempotency_key, period, created_at) "
                "VALUES (?, 'credit_grant', ?, ?, '2026-12-01 00:00:00')",
                (id_, f"k{id_}", period),
            )
            connection.execute("INSERT INTO ledger_entries VALUES (?, ?, 1, 0)", (id_, id_))
    connection.close()
    upgrade_sync(url, REVISION)
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("SELECT id, period FROM ledger_entries ORDER BY id").fetchall() == [
            (1, "2026-10"),
            (2, "2026-11"),
        ]
        with pytest.raises(sqlite3.IntegrityError):
            connection.execute(
                "INSERT INTO ledger_entries (transaction_id, ledger_account_id, amount_nano_usd) VALUES (1, 1, 0)"
            )
    finally:
        connection.close()
