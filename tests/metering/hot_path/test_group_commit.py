"""SQLite's group commit of ingest batches: shared transactions, per-batch results, failures kept apart."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import Database
from metering.hot_path import group_commit
from metering.hot_path.group_commit import store_in_turn
from metering.models import UsageRecord
from metering.usage.service import CONFLICT, CheckedBatch, IngestResult, usage_service
from metering.usage.validation import Rejection
from tests.factories.providers import create_provider


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


class Writer:
    """``usage_service.store_checked`` that waits at a gate for the batch named ``gated``, fails the
    batch named ``failing`` after storing it, and notes which session stored which batch."""

    def __init__(self, gated: str, failing: str | None = None) -> None:
        self.gate = asyncio.Event()
        self.gated, self.failing = gated, failing
        self.sessions: dict[str, list[AsyncSession]] = {}

    async def __call__(self, session: AsyncSession, batch: CheckedBatch) -> IngestResult:
        name = batch.valid[-1].request_id  # a batch is named by its last record
        self.sessions.setdefault(name, []).append(session)
        if name == self.gated:
            await self.gate.wait()
        result = await usage_service.store_checked(session, batch=batch)
        if name == self.failing:
            raise RuntimeError(f"{name} failed")
        return result

    async def start(self, db: Database, first: list[dict], *queued: list[dict]) -> list[asyncio.Task]:
        """The first batch takes the turn and waits at the gate; the others queue behind it."""
        tasks = [asyncio.create_task(store_in_turn(db, await usage_service.check_batch(first), self))]
        while self.gated not in self.sessions:
            await asyncio.sleep(0.01)
        for records in queued:
            tasks.append(asyncio.create_task(store_in_turn(db, await usage_service.check_batch(records), self)))
        await asyncio.sleep(0.05)
        self.gate.set()
        return tasks


async def stored_ids(db: Database) -> list[str]:
    async with db.session_scope() as session:
        return sorted(await session.scalars(select(UsageRecord.request_id)))


@pytest.fixture
async def provider(db: Database) -> None:
    async with db.session_scope() as session:
        await create_provider(session, "together")


async def test_queued_batches_share_one_transaction_and_are_judged_in_arrival_order(db: Database, provider) -> None:
    writer = Writer(gated="first")
    first, second, third = await writer.start(
        db, [record("first")], [record("dup")], [record("dup", output_tokens=99), record("other")]
    )
    assert (await first).accepted == 1
    assert (await second).accepted == 1
    result = await third
    assert (result.accepted, result.duplicates, result.rejected) == (1, 0, [Rejection(0, "dup", CONFLICT)])
    assert writer.sessions["dup"][0] is writer.sessions["other"][0] is not writer.sessions["first"][0]
    assert await stored_ids(db) == ["dup", "first", "other"]


async def test_a_failing_batch_fails_alone_and_the_others_of_its_transaction_are_stored(db: Database, provider) -> None:
    writer = Writer(gated="first", failing="bad")
    first, bad, good = await writer.start(db, [record("first")], [record("bad")], [record("good")])
    assert (await first).accepted == 1
    with pytest.raises(RuntimeError, match="bad failed"):
        await bad
    assert (await good).accepted == 1
    # "bad" failed their shared transaction before "good" was stored in it; each then had one of its own.
    assert [len(writer.sessions[name]) for name in ("bad", "good")] == [2, 1]
    assert await stored_ids(db) == ["first", "good"]


async def test_a_writer_alone_waits_for_a_batch_still_being_checked(
    db: Database, provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(group_commit, "LINGER_SECONDS", 5.0)  # the wait ends when the check does
    writer = Writer(gated="none")
    checking = asyncio.Event()

    async def late() -> IngestResult:
        with group_commit.arriving(db):
            await checking.wait()
            batch = await usage_service.check_batch([record("late")])
        return await store_in_turn(db, batch, writer)

    late_task = asyncio.create_task(late())
    await asyncio.sleep(0)
    leader = asyncio.create_task(store_in_turn(db, await usage_service.check_batch([record("leader")]), writer))
    await asyncio.sleep(0.05)
    assert writer.sessions == {}  # the leader has the turn, and waits
    checking.set()
    assert ((await leader).accepted, (await late_task).accepted) == (1, 1)
    assert writer.sessions["leader"][0] is writer.sessions["late"][0]
    assert await stored_ids(db) == ["late", "leader"]
