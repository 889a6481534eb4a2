"""SQLite's SQL of the usage series: buckets counted straight from the usage records, which are its only totals."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Row, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.analytics.buckets import GROUP_COLUMNS
from metering.models import UsageRecord

if TYPE_CHECKING:
    from metering.analytics.repository import AnalyticsSql
    from metering.analytics.rollups import RollupsSql

# SQLite stores UTC timestamps as naive ISO text, so a bucket is a strftime prefix of it.
_SQLITE_BUCKET = {"day": "%Y-%m-%d 00:00:00", "hour": "%Y-%m-%d %H:00:00"}


def _measures() -> list[ColumnElement[Any]]:
    routed = UsageRecord.custom_key.is_(False)
    return [
        func.count().filter(routed),
        func.count().filter(UsageRecord.status == "priced"),
        func.sum(UsageRecord.cost_nano_usd),
        func.count().filter(UsageRecord.status == "pending"),
        func.count().filter(UsageRecord.custom_key.is_(True)),
    ]


class SqliteAnalyticsSql:
    async def buckets_from_rollups(
        self, session: AsyncSession, *, account: str, start: datetime, end: datetime, interval: str, group_by: str
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """SQLite keeps no hourly totals (PostgreSQL's triggers write them): the records are read."""
        return await self.buckets_from_records(
            session, account=account, start=start, end=end, interval=interval, group_by=group_by
        )

    async def buckets_from_records(
        self, session: AsyncSession, *, account: str, start: datetime, end: datetime, interval: str, group_by: str
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        bucket = func.strftime(_SQLITE_BUCKET[interval], UsageRecord.started_at)
        key = GROUP_COLUMNS[group_by]
        statement = (
            select(bucket.label("bucket"), key.label("key"), *_measures())
            .where(
                UsageRecord.billing_account == account,
                UsageRecord.started_at >= start,
                UsageRecord.started_at < end,
            )
            .group_by(bucket, key)
            .order_by(bucket, key)
        )
        return (await session.execute(statement)).all()


class SqliteRollupsSql:
    """SQLite keeps no hourly totals (PostgreSQL's triggers write them): nothing to fold, nothing to disagree."""

    async def fold(self, session: AsyncSession, *, limit: int) -> tuple[int, int, int] | None:
        return 0, 0, 0

    async def mismatches(self, session: AsyncSession) -> Sequence[Row[*tuple[Any, ...]]]:
        return []


sqlite_analytics_sql: AnalyticsSql = SqliteAnalyticsSql()
sqlite_rollups_sql: RollupsSql = SqliteRollupsSql()
