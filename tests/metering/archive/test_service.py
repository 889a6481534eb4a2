"""``metering archive``: closed months go to Parquet, checked, then out of the database; verify stays clean."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select, text

from metering.archive.errors import ArchiveRefused
from metering.archive.files import sha256_of
from metering.archive.service import archive_service
from metering.config import Settings, set_settings
from metering.db import Database
from metering.ledger.verify import verify
from metering.models import AccountPeriod, ArchivedPeriod, Invoice, UsageRecord, UsageRequestKey, UsageRollup
from metering.periods import period_of, utcnow
from tests.conftest import make_settings
from tests.metering.archive.world import World, build_world, month_rows, scratch_database

TABLES = ("usage_records", "ledger_entries", "ledger_transactions", "holds")


@pytest.fixture
def pg_url(postgres_session_url: str | None, tmp_path: Path) -> Iterator[str]:
    if postgres_session_url is None:
        pytest.skip("PostgreSQL not reachable")
    with scratch_database() as url:
        set_settings(make_settings(url, tmp_path))
        try:
            yield url
        finally:
            set_settings(None)


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


async def _world(url: str) -> World:
    db = Database(url)
    try:
        world = await build_world(db)
        assert (await verify(db)).ok
        return world
    finally:
        await db.dispose()


async def _archive(url: str, before: str, out: Path):  # type: ignore[no-untyped-def]
    db = Database(url)
    try:
        return await archive_service.archive(db, before=before, out=out)
    finally:
        await db.dispose()


def test_closed_months_go_to_parquet_and_verify_stays_clean(pg_url: str, tmp_path: Path) -> None:
    world = run(_world(pg_url))
    out = tmp_path / "archive"
    before = run(_snapshot(pg_url, world))

    result = run(_archive(pg_url, world.current, out))

    assert result.archived == list(world.months) and result.stopped_at is None
    for month in world.months:
        directory = out / month
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["period"] == month
        for table in TABLES:
            path = directory / f"{table}.parquet"
            figures = manifest["tables"][table]
            assert figures["rows"] == world.rows[month][table] > 0
            assert figures["sha256"] == sha256_of(path)
            # The file holds exactly the rows the database held, value for value.
            assert sorted(map(str, pq.read_table(path).column("id").to_pylist())) == sorted(before[month][table])
        assert manifest["tables"]["ledger_entries"]["sums"]["amount_nano_usd"] == 0
        late = 900_000 if month == world.months[1] else 0  # the late record keeps its month
        assert manifest["tables"]["usage_records"]["sums"]["cost_nano_usd"] == late + sum(
            1_500_000_000 + 7 * i for i in range(6)
        )
    run(_check_after(pg_url, world))
    # A rerun finds them done.
    again = run(_archive(pg_url, world.current, out))
    assert again.archived == [] and again.already == list(world.months)


async def _snapshot(url: str, world: World) -> dict[str, dict[str, list[str]]]:
    db = Database(url)
    try:
        async with db.session_scope() as session:
            return {
                month: {
                    table: [
                        str(i)
                        for i in await session.scalars(text(f"SELECT id FROM {table} WHERE period = :p"), {"p": month})
                    ]
                    for table in TABLES
                }
                for month in world.months
            }
    finally:
        await db.dispose()


async def _check_after(url: str, world: World) -> None:
    db = Database(url)
    try:
        report = await verify(db)
        assert report.ok, [line for check in report.checks for line in check.breaches]
        async with db.session_scope() as session:
            for month in world.months:
                assert await month_rows(db, month) == dict.fromkeys(TABLES, 0)
                archived = await session.get(ArchivedPeriod, month)
                assert archived is not None and archived.dropped_at is not None
                assert archived.tables["usage_records"]["rows"] == world.rows[month]["usage_records"]
                # Summaries, invoices and the usage totals stay.
                assert await session.scalar(select(func.count()).where(AccountPeriod.period == month)) > 0
                assert await session.scalar(select(func.count()).where(UsageRequestKey.period == month)) == 0
            partitions = set(
                await session.scalars(
                    text(
                        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                        "WHERE i.inhparent = CAST('usage_records' AS regclass)"
                    )
                )
            )
            assert not {f"usage_records_p{m.replace('-', '_')}" for m in world.months} & partitions
            assert await session.scalar(select(func.count()).select_from(Invoice)) > 0
            assert await session.scalar(select(func.count()).select_from(UsageRollup)) > 0
            # The open month and the late cost it holds, naming an archived record, are untouched.
            current = await session.scalar(select(func.count()).where(UsageRecord.period == world.current))
            assert current == 6
            late = await session.scalar(
                text("SELECT count(*) FROM ledger_transactions WHERE kind = 'late_request_cost' AND period = :p"),
                {"p": period_of(utcnow())},
            )
            assert late == 1
    finally:
        await db.dispose()


def test_a_month_with_pending_requests_waits(pg_url: str, tmp_path: Path) -> None:
    world = run(_world(pg_url))

    async def unprice() -> None:
        db = Database(pg_url)
        try:
            async with db.session_scope() as session:
                # A request of the second month still waiting for its cost (as if its answer never came).
                await session.execute(
                    text(
                        "INSERT INTO usage_records (provider_id, request_id, user_name, billing_account, bill_to_flagged, "
                        "model, custom_key, started_at, period, content_hash, status, estimate_nano_usd, received_at, "
                        "attempts) SELECT provider_id, 'waiting', user_name, billing_account, false, model, false, "
                        "started_at, period, content_hash, 'pending', 0, received_at, 0 FROM usage_records "
                        "WHERE period = :p LIMIT 1"
                    ),
                    {"p": world.months[1]},
                )
        finally:
            await db.dispose()

    run(unprice())
    result = run(_archive(pg_url, world.current, tmp_path / "out"))
    assert result.archived == [world.months[0]]
    assert result.stopped_at == (world.months[1], f"1 request(s) of {world.months[1]} still wait for their cost")
    assert run(_rows_of(pg_url, world.months[1])) == world.rows[world.months[1]]["usage_records"] + 1


async def _rows_of(url: str, month: str) -> int:
    db = Database(url)
    try:
        return (await month_rows(db, month))["usage_records"]
    finally:
        await db.dispose()


def test_a_ledger_that_does_not_add_up_archives_nothing(pg_url: str, tmp_path: Path) -> None:
    world = run(_world(pg_url))

    async def tamper() -> None:
        db = Database(pg_url)
        try:
            async with db.session_scope() as session:
                await session.execute(
                    text(
                        "UPDATE ledger_entries SET amount_nano_usd = amount_nano_usd + 1 WHERE id = (SELECT min(id) FROM ledger_entries)"
                    )
                )
        finally:
            await db.dispose()

    run(tamper())
    with pytest.raises(ArchiveRefused, match="breach"):
        run(_archive(pg_url, world.current, tmp_path / "out"))
    assert run(_rows_of(pg_url, world.months[0])) == world.rows[world.months[0]]["usage_records"]


def test_months_that_may_still_get_records_wait(pg_url: str, tmp_path: Path) -> None:
    world = run(_world(pg_url))
    set_settings(make_settings(pg_url, tmp_path, max_record_age_days=400))
    result = run(_archive(pg_url, world.current, tmp_path / "out"))
    assert result.archived == []
    assert result.stopped_at is not None and result.stopped_at[0] == world.months[0]
    assert "are accepted until" in result.stopped_at[1]


async def test_sqlite_is_refused_in_one_line(settings: Settings, db: Database, tmp_path: Path) -> None:
    if db.by_dialect(sqlite=False, postgresql=True):
        pytest.skip("the refusal is SQLite's")
    with pytest.raises(ArchiveRefused, match="archive needs PostgreSQL"):
        await archive_service.archive(db, before="2026-01", out=tmp_path)
