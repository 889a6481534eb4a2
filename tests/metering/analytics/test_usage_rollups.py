"""The hourly usage totals kept by triggers equal the usage records, through every write path (PostgreSQL).

The usage comes from members of an org and from users paying for their own requests, whose
member series is derived (migration 0006 keeps no member rows for the account itself).
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from jobs.fold_usage_rollups import run_once as fold_job
from metering.analytics.repository_pg import postgres_analytics_sql
from metering.analytics.rollups import fold_usage_rollups
from metering.analytics.service import analytics_service
from metering.db import Database
from metering.migrate import upgrade_sync
from metering.models import Account, UsageRollup
from tests.factories.billing_data import insert_usage, mark_unpriced, price, quarantine, seed_world
from tests.support import databases

START = datetime(2026, 10, 1, tzinfo=UTC)
END = START + timedelta(days=3)
USERS = ("alice", "bob", "carol")
ACCOUNTS = ("acme", *USERS)
PROVIDERS = ("together", "fireworks-ai")
MODELS = ("org/a", "org/b", "org/c")


@pytest.fixture(autouse=True)
def postgres_only(backend: str) -> None:
    if backend != "postgres":
        pytest.skip("the totals are kept by PostgreSQL statement triggers; SQLite reads the records")


def random_usage(rng: random.Random, count: int, prefix: str) -> list[dict]:
    rows = []
    for i in range(count):
        custom_key = rng.random() < 0.1
        rows.append(
            {
                "request_id": f"{prefix}{i}",
                "user": (user := rng.choice(USERS)),
                "billing_account": "acme" if rng.random() < 0.6 else user,
                "provider": rng.choice(PROVIDERS),
                "model": rng.choice(MODELS),
                "custom_key": custom_key,
                "started_at": START + timedelta(seconds=rng.randrange(3 * 86_400)),
            }
        )
    return rows


async def both_ways(db: Database) -> list[tuple[str, str, list, list]]:
    """Every (account, range, group_by, interval) series from the totals and straight from the records.

    The second range is on whole hours but not whole days: its first and last days are partial.
    """
    answers = []
    async with db.session_scope() as session:
        for account in ACCOUNTS:
            for start, end in ((START, END), (START + timedelta(hours=5), END - timedelta(hours=3))):
                for group_by in ("member", "provider", "model"):
                    for interval in ("day", "hour"):
                        arguments = dict(account=account, start=start, end=end, interval=interval, group_by=group_by)
                        rolled = await postgres_analytics_sql.buckets_from_rollups(session, **arguments)
                        direct = await postgres_analytics_sql.buckets_from_records(session, **arguments)
                        label = f"{account} {start:%d %H}h"
                        answers.append(
                            (label, group_by, interval, [tuple(r) for r in rolled], [tuple(r) for r in direct])
                        )
    return answers


def normalised(rows: list[tuple]) -> list[tuple]:
    """Buckets as aware datetimes and sums as ints, so the two queries' row types compare."""
    out = []
    for bucket, key, *measures in rows:
        bucket = bucket.replace(tzinfo=UTC) if bucket.tzinfo is None else bucket.astimezone(UTC)
        out.append((bucket, key, *(int(m or 0) for m in measures)))
    return out


async def assert_totals_match_records(db: Database, *, with_usage: tuple[str, ...] = ACCOUNTS) -> None:
    """Every series agrees both ways, and the accounts ``with_usage`` have some usage to compare."""
    answers = await both_ways(db)
    for start, group_by, interval, rolled, direct in answers:
        assert normalised(rolled) == normalised(direct), (start, group_by, interval)
    compared = {label.split()[0] for label, *_, direct in answers if direct}
    assert compared == set(with_usage), "usage of these accounts must be compared"


async def rollup_rows(db: Database) -> int:
    async with db.session_scope() as session:
        return int(await session.scalar(select(func.count()).select_from(UsageRollup)))


async def test_every_write_path_keeps_the_totals_equal_to_the_records(db: Database) -> None:
    rng = random.Random(20261126)
    await seed_world(db)
    rows = random_usage(rng, 600, "r")
    await insert_usage(db, rows)
    await assert_totals_match_records(db)

    by_provider: dict[str, list[str]] = {p: [] for p in PROVIDERS}
    for row in rows:
        if not row["custom_key"]:
            by_provider[row["provider"]].append(row["request_id"])
    for provider, request_ids in by_provider.items():
        rng.shuffle(request_ids)
        await price(db, {r: rng.randrange(0, 5_000_000) for r in request_ids[:200]}, provider=provider)
        await quarantine(db, request_ids[200:230], reason="cost is a float", provider=provider)
        await mark_unpriced(db, request_ids[230:250], provider=provider)
    await assert_totals_match_records(db)

    before = await rollup_rows(db)
    async with db.session_scope() as session:  # a lease changes no counted column: nothing appended
        leased = await session.execute(
            text("UPDATE usage_records SET lease_owner = 'worker-1', attempts = attempts + 1 WHERE status = 'pending'")
        )
    assert leased.rowcount > 0
    assert await rollup_rows(db) == before

    async with db.session_scope() as session:
        await session.execute(text("DELETE FROM usage_records WHERE request_id LIKE 'r1%' AND status <> 'priced'"))
    await assert_totals_match_records(db)


async def test_folding_leaves_one_row_per_key_and_the_same_series(db: Database) -> None:
    rng = random.Random(7)
    await seed_world(db)
    batches = [random_usage(rng, 150, f"b{batch}-") for batch in range(4)]
    for rows in batches:  # four statements: up to four differences per busy key
        await insert_usage(db, rows)
    together = [r["request_id"] for r in batches[0] if r["provider"] == "together" and not r["custom_key"]]
    await price(db, {request_id: 1_000 + i for i, request_id in enumerate(together)})
    expected = await both_ways(db)
    unfolded = await rollup_rows(db)

    summary = await fold_job(db)

    async with db.session_scope() as session:
        keys = await session.scalar(
            text(
                "SELECT count(*) FROM (SELECT DISTINCT billing_account, span, starts_at, dimension, key FROM usage_rollups) AS k"
            )
        )
        hour_keys = await session.scalar(
            text(
                "SELECT count(*) FROM (SELECT DISTINCT billing_account, starts_at, dimension, key FROM usage_rollups "
                "WHERE span = 'hour') AS k"
            )
        )
        not_folded = await session.scalar(select(func.count()).where(UsageRollup.folded.is_(False)))
    # One row per key: each hour's, and each day's (the sum of its hours).
    assert await rollup_rows(db) == keys < unfolded
    assert not_folded == 0
    assert summary == f"folded {unfolded} rows of {hour_keys} keys into {hour_keys}"
    assert await both_ways(db) == expected
    await assert_totals_match_records(db)


async def test_a_key_whose_usage_was_deleted_folds_away_and_leaves_the_series(db: Database) -> None:
    await seed_world(db)
    await insert_usage(db, [{"request_id": "gone", "user": "bob", "billing_account": "acme", "started_at": START}])
    async with db.session_scope() as session:
        await session.execute(text("DELETE FROM usage_records WHERE request_id = 'gone'"))
        account = await session.get(Account, "acme")
        series = await analytics_service.get_usage_series(
            session, account=account, start=START, end=END, interval="day", group_by="member"
        )
    assert series.buckets == []
    assert await rollup_rows(db) > 0
    await fold_job(db)
    assert await rollup_rows(db) == 0


async def test_differences_committed_during_a_fold_wait_for_the_next_one(db: Database) -> None:
    await seed_world(db)
    await insert_usage(db, [{"request_id": "first", "user": "bob", "billing_account": "acme", "started_at": START}])
    async with db.session_scope() as folding:
        result = await fold_usage_rollups(folding)
        assert result is not None and result.keys == 3  # member, provider and model of one hour
        # Committed while the fold's transaction is open: not in its snapshot, not lost.
        await insert_usage(
            db, [{"request_id": "second", "user": "bob", "billing_account": "acme", "started_at": START}]
        )
        async with db.session_scope() as other:
            assert await fold_usage_rollups(other) is None  # the lock: one fold at a time
    await assert_totals_match_records(db, with_usage=("acme",))
    await fold_job(db)
    async with db.session_scope() as session:
        account = await session.get(Account, "acme")
        series = await analytics_service.get_usage_series(
            session, account=account, start=START, end=END, interval="day", group_by="member"
        )
    assert [(b.key, b.requests, b.pending_requests) for b in series.buckets] == [("bob", 2, 2)]


async def test_a_user_paying_for_themselves_appends_no_member_row(db: Database) -> None:
    """Two rows for a user's own request (provider, model), three for an org member's (and member)."""
    await seed_world(db)
    await insert_usage(db, [{"request_id": "own", "user": "bob", "started_at": START}])
    assert await rollup_dimensions(db) == ["model", "provider"]
    await insert_usage(db, [{"request_id": "org", "user": "bob", "billing_account": "acme", "started_at": START}])
    assert await rollup_dimensions(db) == ["member", "model", "model", "provider", "provider"]
    async with db.session_scope() as session:
        series = await analytics_service.get_usage_series(
            session, account=await session.get(Account, "bob"), start=START, end=END, interval="day", group_by="member"
        )
    assert [(b.key, b.requests, b.pending_requests) for b in series.buckets] == [("bob", 1, 1)]


async def rollup_dimensions(db: Database) -> list[str]:
    async with db.session_scope() as session:
        return sorted((await session.scalars(select(UsageRollup.dimension))).all())


async def test_truncating_the_records_empties_the_totals(db: Database) -> None:
    await seed_world(db)
    await insert_usage(db, [{"request_id": "x", "user": "bob", "billing_account": "acme", "started_at": START}])
    async with db.session_scope() as session:
        await session.execute(text("TRUNCATE usage_records CASCADE"))
    assert await rollup_rows(db) == 0


def test_the_migration_sums_in_the_records_that_existed_before_it(postgres_session_url: str | None) -> None:
    if postgres_session_url is None:
        pytest.skip("PostgreSQL not reachable")
    name = databases.create_pg_database("metering_rollup_backfill")
    url = databases.pg_url(databases.PG_ADMIN_DSN, name)

    async def scenario() -> None:
        db = Database(url)
        try:
            await seed_world(db)
            await insert_usage(db, random_usage(random.Random(3), 300, "old"))
            await asyncio.to_thread(upgrade_sync, url)
            assert await rollup_rows(db) > 0
            await assert_totals_match_records(db)
        finally:
            await db.dispose()

    try:
        upgrade_sync(url, "0004_hot_update_fillfactor")
        asyncio.run(scenario())
    finally:
        databases.drop_pg_database(name)


async def day_rows(db: Database) -> dict[tuple, tuple[int, ...]]:
    async with db.session_scope() as session:
        rows = await session.execute(
            text(
                "SELECT billing_account, starts_at, dimension, key, requests, priced_requests, cost_nano_usd, "
                "pending_requests, custom_key_requests FROM usage_rollups WHERE span = 'day'"
            )
        )
        return {tuple(row[:4]): tuple(int(v) for v in row[4:]) for row in rows}


async def folded_hours_by_day(db: Database) -> dict[tuple, tuple[int, ...]]:
    async with db.session_scope() as session:
        rows = await session.execute(
            text(
                "SELECT billing_account, date_bin(interval '1 day', starts_at, timestamptz '2000-01-01 00:00:00+00'), "
                "dimension, key, sum(requests), sum(priced_requests), sum(cost_nano_usd), sum(pending_requests), "
                "sum(custom_key_requests) FROM usage_rollups WHERE span = 'hour' AND folded GROUP BY 1, 2, 3, 4"
            )
        )
        return {tuple(row[:4]): tuple(int(v) for v in row[4:]) for row in rows if any(row[4:])}


async def test_a_day_is_its_daily_total_and_what_is_not_folded_into_it_yet(db: Database) -> None:
    from metering.ledger.verify import verify

    rng = random.Random(15)
    await seed_world(db)
    await insert_usage(db, random_usage(rng, 300, "early-"))
    await fold_job(db)
    assert await day_rows(db) == await folded_hours_by_day(db) != {}
    # Late records and prices, not folded yet: the days read them beside their daily totals.
    late = random_usage(rng, 200, "late-")
    await insert_usage(db, late)
    await price(db, {r["request_id"]: 77 for r in late[:50] if not r["custom_key"] and r["provider"] == "together"})
    await assert_totals_match_records(db)
    assert (await verify(db)).check("usage_rollups").ok
    await fold_job(db)
    assert await day_rows(db) == await folded_hours_by_day(db)
    await assert_totals_match_records(db)
    # A daily total that drifted from its hours is a breach.
    async with db.session_scope() as session:
        await session.execute(
            text(
                "UPDATE usage_rollups SET requests = requests + 1 WHERE id = (SELECT min(id) FROM usage_rollups WHERE span = 'day')"
            )
        )
    check = (await verify(db)).check("usage_rollups")
    assert check.breach_count == 1 and " day " in check.breaches[0]


def test_the_migration_sums_the_folded_hours_into_days(postgres_session_url: str | None) -> None:
    if postgres_session_url is None:
        pytest.skip("PostgreSQL not reachable")
    name = databases.create_pg_database("metering_rollup_days")
    url = databases.pg_url(databases.PG_ADMIN_DSN, name)

    async def scenario() -> None:
        db = Database(url)
        try:
            await seed_world(db)
            await insert_usage(db, random_usage(random.Random(5), 300, "old"))
            await fold_job(db)
            async with db.session_scope() as session:  # as the fold of the revision before left them: hours only
                await session.execute(text("DELETE FROM usage_rollups WHERE span = 'day'"))
            await insert_usage(db, random_usage(random.Random(6), 100, "new"))  # not folded yet
            await asyncio.to_thread(upgrade_sync, url, "0015_usage_rollups_daily")
            assert await day_rows(db) == await folded_hours_by_day(db) != {}
            await assert_totals_match_records(db)
        finally:
            await db.dispose()

    try:
        upgrade_sync(url, "0014_monthly_partitions")
        asyncio.run(scenario())
    finally:
        databases.drop_pg_database(name)
