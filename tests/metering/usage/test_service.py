"""Usage ingest service and repository on SQLite and PostgreSQL: batches, repeats, big batches."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from metering.db import Database
from metering.holds.estimates import estimates_service
from metering.ledger.verify import verify_session
from metering.models import Account, AccountPeriod, UsageRecord
from metering.usage.repository import NewUsageRow, usage_repository
from metering.usage.service import CONFLICT, usage_service
from metering.usage.validation import Rejection
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider

STARTED = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def record(request_id: str, **overrides: object) -> dict:
    return {
        "request_id": request_id,
        "provider": "together",
        "user": "alice",
        "model": "org/name",
        "started_at": "2026-11-20T08:00:00Z",
        "input_tokens": 10,
        "output_tokens": 20,
    } | overrides


def row(request_id: str, content_hash: str = "0" * 32) -> NewUsageRow:
    return NewUsageRow(
        provider_id="together",
        request_id=request_id,
        user_name="alice",
        bill_to=None,
        billing_account="alice",
        bill_to_flag_reason=None,
        model="org/name",
        task=None,
        custom_key=False,
        started_at=STARTED,
        period="2026-11",
        duration_ms=None,
        hardware=None,
        input_tokens=None,
        output_tokens=None,
        hold_id=None,
        content_hash=content_hash,
    )


async def ingest(db: Database, records: list) -> tuple[int, int, list[Rejection]]:
    async with db.session_scope() as session:
        result = await usage_service.ingest_records(session, records=records)
    return result.accepted, result.duplicates, result.rejected


async def setup(db: Database) -> None:
    async with db.session_scope() as session:
        await create_provider(session, "together")


class TestIngestRecords:
    async def test_repeats_in_a_batch_are_judged_against_the_stored_row(self, db: Database) -> None:
        await setup(db)
        await ingest(db, [record("r1", output_tokens=20)])
        # r1 is already stored with output_tokens=20: the first r1 here conflicts, the second duplicates.
        accepted, duplicates, rejected = await ingest(
            db, [record("r1", output_tokens=21), record("r1", output_tokens=20), record("r2"), record("r2", model="x")]
        )
        assert (accepted, duplicates) == (1, 1)
        assert rejected == [Rejection(0, "r1", CONFLICT), Rejection(3, "r2", CONFLICT)]

    async def test_rejections_come_back_in_index_order(self, db: Database) -> None:
        await setup(db)
        records = [record("r0", provider="nope"), record("r1", user="acme org"), record("r2"), record("r2", model="m2")]
        accepted, duplicates, rejected = await ingest(db, records)
        assert (accepted, duplicates) == (1, 0)
        assert [r.index for r in rejected] == [0, 1, 3]
        assert rejected[0].error == "provider: unknown provider 'nope'"

    async def test_a_full_batch_of_new_users_is_stored(self, db: Database) -> None:
        """5,000 records from 5,000 unseen users: more bound values than one statement may carry."""
        await setup(db)
        # custom_key records: created users and stored rows, without pricing work that would slow the test.
        records = [record(f"req-{i:05d}", user=f"user-{i:05d}", input_tokens=i, custom_key=True) for i in range(5_000)]
        assert await ingest(db, records) == (5_000, 0, [])
        async with db.session_scope() as session:
            users = await session.scalar(select(func.count()).select_from(Account).where(Account.plan == "free"))
            tokens = await session.scalar(select(func.sum(UsageRecord.input_tokens)))
        assert (users, tokens) == (5_000, sum(range(5_000)))
        assert await ingest(db, records) == (0, 5_000, [])


class TestNewUsers:
    async def test_unseen_users_are_created_on_the_free_plan_and_known_accounts_left_as_they_are(
        self, db: Database
    ) -> None:
        await setup(db)
        async with db.session_scope() as session:
            await create_account(session, "bob", plan="pro")
        records = [record("r1", user="bob"), record("r2", user="carol"), record("r3", user="dave")]
        records.append(record("r4", user="carol"))
        assert await ingest(db, records) == (4, 0, [])
        async with db.session_scope() as session:
            accounts = {a.name: a for a in await session.scalars(select(Account))}
        assert {name: (a.kind, a.plan, a.seats, a.status) for name, a in accounts.items()} == {
            "bob": ("user", "pro", 1, "active"),
            "carol": ("user", "free", 1, "active"),
            "dave": ("user", "free", 1, "active"),
        }
        carol = accounts["carol"]
        assert carol.created_at == carol.updated_at
        assert carol.created_at.tzinfo is not None
        assert abs((datetime.now(UTC) - carol.created_at).total_seconds()) < 60


class TestEstimates:
    async def test_each_row_is_stored_with_its_estimate_and_added_once(self, db: Database) -> None:
        await setup(db)  # default estimate 100,000
        records = [record(f"r{i}", user=f"user-{i % 3}") for i in range(9)] + [record("k", custom_key=True)]
        assert await ingest(db, records) == (10, 0, [])
        async with db.session_scope() as session:
            estimates = dict(
                (await session.execute(select(UsageRecord.request_id, UsageRecord.estimate_nano_usd))).all()
            )
            pending = dict(
                (
                    await session.execute(select(AccountPeriod.account_name, AccountPeriod.pending_estimate_nano_usd))
                ).all()
            )
        assert estimates == {**{f"r{i}": 100_000 for i in range(9)}, "k": 0}
        assert pending == {"user-0": 300_000, "user-1": 300_000, "user-2": 300_000}

    async def test_stored_means_provider_defaults_and_compute_time_prices_in_one_batch(self, db: Database) -> None:
        """A (provider, model) with samples gets its mean, one without its provider's default, and a
        compute_time record its price."""
        async with db.session_scope() as session:
            await create_provider(session, "together", default_estimate_nano_usd=100_000)
            await create_provider(session, "spaces", pricing="compute_time")  # cpu-basic: 120,000 a second
            await estimates_service.observe_costs(session, [("together", "org/seen", 7_000)])
        records = [
            record("a", model="org/seen"),
            record("b", model="org/unseen"),
            record("c", provider="spaces", hardware="cpu-basic", duration_ms=2_000),
        ]
        assert await ingest(db, records) == (3, 0, [])
        async with db.session_scope() as session:
            stored = {
                r.request_id: (r.estimate_nano_usd, r.status, r.cost_nano_usd)
                for r in await session.scalars(select(UsageRecord))
            }
            pending = await session.scalar(select(AccountPeriod.pending_estimate_nano_usd))
        assert stored == {
            "a": (7_000, "pending", None),
            "b": (100_000, "pending", None),
            "c": (240_000, "priced", 240_000),
        }
        assert pending == 107_000


class TestConcurrentIngest:
    async def test_batches_naming_the_same_accounts_in_any_order_all_commit(self, db: Database) -> None:
        """Eight concurrent batches over the same 100 users, each in its own order: on PostgreSQL
        every batch locks the period rows in one order, so none deadlocks and none is lost."""
        await setup(db)
        users = [f"user-{i:03d}" for i in range(100)]
        await ingest(db, [record(f"seed-{user}", user=user) for user in users])
        batches = []
        for number in range(8):
            order = users[:]
            random.Random(number).shuffle(order)
            batches.append([record(f"b{number}-{user}", user=user) for user in order])
        results = await asyncio.gather(*(ingest(db, batch) for batch in batches))
        assert results == [(100, 0, [])] * 8
        async with db.session_scope() as session:
            pending = set(await session.scalars(select(AccountPeriod.pending_estimate_nano_usd)))
            assert pending == {9 * 100_000}
            assert (await verify_session(session)).ok


class TestRepository:
    async def test_insert_returns_ids_of_new_rows_only(self, db: Database) -> None:
        await setup(db)
        async with db.session_scope() as session:
            await usage_service.ingest_records(session, records=[record("seed")])  # creates alice
        async with db.session_scope() as session:
            first = await usage_repository.insert_new(session, [row("a", "1" * 32), row("b")], received_at=STARTED)
            second = await usage_repository.insert_new(session, [row("b", "2" * 32), row("c")], received_at=STARTED)
            hashes = await usage_repository.stored_hashes(
                session, [("together", "a"), ("together", "b"), ("together", "zz")]
            )
        assert set(first) == {("together", "a"), ("together", "b")}
        assert set(second) == {("together", "c")}
        assert len(set(first.values()) | set(second.values())) == 3
        assert hashes == {("together", "a"): "1" * 32, ("together", "b"): "0" * 32}

    async def test_an_insert_is_undone_with_its_transaction(self, db: Database) -> None:
        await setup(db)
        async with db.session_scope() as session:
            await usage_service.ingest_records(session, records=[record("seed")])
        with pytest.raises(RuntimeError):
            async with db.session_scope() as session:
                assert set(await usage_repository.insert_new(session, [row("gone")], received_at=STARTED)) == {
                    ("together", "gone")
                }
                raise RuntimeError("the use case fails after the insert")
        async with db.session_scope() as session:
            assert list(await session.scalars(select(UsageRecord.request_id))) == ["seed"]

    async def test_a_whole_second_started_at_matches_the_same_instant_bound_by_the_orm(self, db: Database) -> None:
        """Timestamps are written as the ORM writes them: SQLite compares them as text, so a row
        written any other way would fall outside a range starting at its own instant."""
        await setup(db)
        await ingest(
            db, [record("r1", started_at="2026-11-20T08:00:00Z"), record("r2", started_at="2026-11-20T07:59:59Z")]
        )
        async with db.session_scope() as session:
            found = list(await session.scalars(select(UsageRecord.request_id).where(UsageRecord.started_at >= STARTED)))
            received = await session.scalar(
                select(func.count()).where(UsageRecord.received_at == UsageRecord.next_attempt_at)
            )
        assert (found, received) == (["r1"], 2)

    async def test_inserted_rows_start_pending_and_due_now(self, db: Database) -> None:
        await setup(db)
        async with db.session_scope() as session:
            await usage_service.ingest_records(session, records=[record("seed")])
        async with db.session_scope() as session:
            custom = row("k")
            custom.custom_key = True
            await usage_repository.insert_new(session, [row("p"), custom], received_at=STARTED)
        async with db.session_scope() as session:
            stored = {
                r.request_id: r
                for r in await session.scalars(select(UsageRecord).where(UsageRecord.request_id.in_(["p", "k"])))
            }
        assert [
            (r.status, r.attempts, r.next_attempt_at, r.received_at, r.estimate_nano_usd, r.bill_to_flagged)
            for r in (stored["p"], stored["k"])
        ] == [
            ("pending", 0, STARTED, STARTED, 0, False),
            ("custom_key", 0, STARTED, STARTED, 0, False),
        ]
