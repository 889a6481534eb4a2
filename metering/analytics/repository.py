"""SQL of the user-facing read views: period totals, usage buckets, the request log.

Every query is scoped to one billing account by the caller (the service), and reads
tables owned by other concepts directly: these are reports, not writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import Row, Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.analytics.buckets import INTERVALS
from metering.analytics.repository_pg import postgres_analytics_sql
from metering.analytics.repository_sqlite import sqlite_analytics_sql
from metering.db import by_dialect
from metering.models import AccountPeriod, UsageRecord


@dataclass(frozen=True, slots=True)
class UsageBucketRow:
    start: datetime
    key: str
    requests: int
    priced_requests: int
    cost_nano_usd: int
    pending_requests: int
    custom_key_requests: int


def _as_int(value: int | Decimal | None) -> int:
    """PostgreSQL sums BIGINT into NUMERIC (a Decimal holding an integer); SQLite gives int or None."""
    return int(value or 0)


def _on_the_hour(moment: datetime) -> bool:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0) == moment


def _bucket_start(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class AnalyticsSql(Protocol):
    """The read views' SQL that differs between the engines: rows of (bucket, key, the five measures)."""

    async def buckets_from_rollups(
        self, session: AsyncSession, *, account: str, start: datetime, end: datetime, interval: str, group_by: str
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """The buckets of a range on whole hours, from the hourly totals where the engine keeps them."""

    async def buckets_from_records(
        self, session: AsyncSession, *, account: str, start: datetime, end: datetime, interval: str, group_by: str
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """The buckets of any range, counted from the usage records."""


def _analytics_sql(session: AsyncSession) -> AnalyticsSql:
    return by_dialect(session, sqlite=sqlite_analytics_sql, postgresql=postgres_analytics_sql)


class AnalyticsRepository:
    async def account_period(self, session: AsyncSession, *, account: str, period: str) -> AccountPeriod | None:
        return await session.get(AccountPeriod, (account, period))

    async def count_pending(self, session: AsyncSession, *, account: str, period: str) -> int:
        count = await session.scalar(
            select(func.count()).where(
                UsageRecord.billing_account == account,
                UsageRecord.period == period,
                UsageRecord.status == "pending",
            )
        )
        return int(count or 0)

    async def usage_buckets(
        self, session: AsyncSession, *, account: str, start: datetime, end: datetime, interval: str, group_by: str
    ) -> list[UsageBucketRow]:
        """Per (bucket, group) counts over ``[start, end)``; buckets are UTC days or hours."""
        if interval not in INTERVALS:
            raise ValueError(f"unknown interval {interval!r}")
        sql = _analytics_sql(session)
        if _on_the_hour(start) and _on_the_hour(end):
            rows = await sql.buckets_from_rollups(
                session, account=account, start=start, end=end, interval=interval, group_by=group_by
            )
        else:
            rows = await sql.buckets_from_records(
                session, account=account, start=start, end=end, interval=interval, group_by=group_by
            )
        return [
            UsageBucketRow(
                start=_bucket_start(row[0]),
                key=row[1],
                requests=_as_int(row[2]),
                priced_requests=_as_int(row[3]),
                cost_nano_usd=_as_int(row[4]),
                pending_requests=_as_int(row[5]),
                custom_key_requests=_as_int(row[6]),
            )
            for row in rows
        ]

    async def requests_page(
        self,
        session: AsyncSession,
        *,
        account: str,
        start: datetime | None,
        end: datetime | None,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> list[UsageRecord]:
        """Newest first, keyset on ``(started_at, id)``: rows strictly after ``after`` in that order."""
        statement: Select[UsageRecord] = select(UsageRecord).where(UsageRecord.billing_account == account)
        if start is not None:
            statement = statement.where(UsageRecord.started_at >= start)
        if end is not None:
            statement = statement.where(UsageRecord.started_at < end)
        if after is not None:
            started_at, record_id = after
            statement = statement.where(
                or_(
                    UsageRecord.started_at < started_at,
                    and_(UsageRecord.started_at == started_at, UsageRecord.id < record_id),
                )
            )
        statement = statement.order_by(UsageRecord.started_at.desc(), UsageRecord.id.desc()).limit(limit)
        return list(await session.scalars(statement))


analytics_repository = AnalyticsRepository()
