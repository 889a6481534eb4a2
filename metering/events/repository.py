"""SQL of the outbox: events inserted once per cause, and read back for the billing page."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import upsert_insert
from metering.models import Event, UsageRecord
from metering.sql import chunks, rowcount

# Nine columns a row: well under the bind-parameter limits of both engines.
_ROWS_PER_INSERT = 500


class EventRepository:
    async def insert_new(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> int:
        """INSERT … ON CONFLICT (dedupe_key) DO NOTHING; returns how many were new.

        In key order, so two transactions writing overlapping causes wait on each other in the
        same order (PostgreSQL's unique index) rather than deadlocking.
        """
        inserted = 0
        for part in chunks(sorted(rows, key=lambda row: row["dedupe_key"]), _ROWS_PER_INSERT):
            statement = upsert_insert(session, Event).values(part).on_conflict_do_nothing(index_elements=["dedupe_key"])
            inserted += rowcount(await session.execute(statement))
        return inserted

    async def latest_of_types(
        self, session: AsyncSession, *, account: str, types: Iterable[str], period: str | None = None
    ) -> Event | None:
        statement = select(Event).where(Event.account_name == account, Event.type.in_(sorted(types)))
        if period is not None:
            statement = statement.where(Event.period == period)
        return await session.scalar(statement.order_by(Event.id.desc()).limit(1))

    async def request_ids(self, session: AsyncSession, usage_record_ids: Iterable[int]) -> dict[int, str]:
        """The providers' request ids of usage records (quarantines name them for finance)."""
        ids = sorted(set(usage_record_ids))
        found: dict[int, str] = {}
        for part in chunks(ids):
            rows = await session.execute(select(UsageRecord.id, UsageRecord.request_id).where(UsageRecord.id.in_(part)))
            found.update({row_id: request_id for row_id, request_id in rows})
        return found


event_repository = EventRepository()
