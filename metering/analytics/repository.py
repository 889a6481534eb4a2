"""SQL of the user-facing read views: period totals, usage buckets, the request log.

Every query is scoped to one billing account by the caller (the service), and reads
tables owned by other concepts directly: these are reports, not writes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Row, Select, and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import dialect_name
from metering.models import AccountPeriod, UsageRecord

GROUP_COLUMNS = {
    "member": UsageRecord.user_name,
    "provider": UsageRecord.provider_id,
    "model": UsageRecord.model,
}
# SQLite stores UTC timestamps as naive ISO text, so a bucket is a strftime prefix of it.
_SQLITE_BUCKET = {"day": "%Y-%m-%d 00:00:00", "hour": "%Y-%m-%d %H:00:00"}


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


def _measures() -> list[ColumnElement[Any]]:
    routed = UsageRecord.custom_key.is_(False)
    return [
        func.count().filter(routed),
        func.count().filter(UsageRecord.status == "priced"),
        func.sum(UsageRecord.cost_nano_usd),
        func.count().filter(UsageRecord.status == "pending"),
        func.count().filter(UsageRecord.custom_key.is_(True)),
    ]


def _floor_naive(moment: datetime, interval: str) -> datetime:
    """The UTC bucket start of ``moment`` as a naive timestamp (what generate_series walks)."""
    moment = moment.astimezone(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if interval == "day" else moment


# A bucket of the hourly totals: the hour itself, or its UTC day (``date_bin`` from a UTC
# midnight: arithmetic on the instant, without the time zone lookups of ``date_trunc``).
_ROLLUP_BUCKET = {
    "hour": "starts_at",
    "day": "date_bin(interval '1 day', starts_at, timestamptz '2000-01-01 00:00:00+00')",
}
_ROLLUP_MEASURES = ("requests", "priced_requests", "cost_nano_usd", "pending_requests", "custom_key_requests")
_BUCKET_SUMS = ", ".join(f"sum({m}) AS {m}" for m in _ROLLUP_MEASURES)


def _rollup_totals(bucket: str, dimension: str) -> str:
    """Per (bucket, key) sums of one dimension's hourly totals of ``:account`` in ``[:start, :end)``."""
    return f"""
        SELECT {bucket} AS bucket, key, {_BUCKET_SUMS}
        FROM usage_rollups
        WHERE billing_account = :account AND span = 'hour' AND dimension = {dimension}
          AND starts_at >= :start AND starts_at < :end
        GROUP BY 1, 2"""


def _on_the_hour(moment: datetime) -> bool:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0) == moment


def _bucket_start(value: object) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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
        if interval not in _SQLITE_BUCKET:
            raise ValueError(f"unknown interval {interval!r}")
        if dialect_name(session) == "sqlite":
            rows = await self._buckets_sqlite(
                session, account=account, start=start, end=end, interval=interval, group_by=group_by
            )
        elif _on_the_hour(start) and _on_the_hour(end):
            rows = await self._buckets_rollup(
                session, account=account, start=start, end=end, interval=interval, group_by=group_by
            )
        else:
            rows = await self._buckets_postgres(
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

    async def _buckets_sqlite(
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

    async def _buckets_rollup(
        self, session: AsyncSession, *, account: str, start: datetime, end: datetime, interval: str, group_by: str
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """The same buckets summed from the hourly totals the triggers keep (``usage_rollups``, PostgreSQL).

        Only for a range on whole hours: the totals cannot split an hour. A day sums its
        hours. The totals keep no member row for the account itself (a user paying for their
        own requests, migration 0006): that member's usage is the account's total (its
        provider rows) less its other members'. A key whose requests and custom-key requests
        sum to zero has no usage left in the bucket (its differences cancelled out): the
        direct query has no group for it either.
        """
        bucket = _ROLLUP_BUCKET[interval]
        if group_by == "member":
            # The account itself as a member: its total (the provider totals) less its other members'.
            statement = f"""
                WITH members AS ({_rollup_totals(bucket, "'member'")}),
                providers AS ({_rollup_totals(bucket, "'provider'")}),
                account AS (SELECT bucket, {_BUCKET_SUMS} FROM providers GROUP BY 1),
                others AS (SELECT bucket, {_BUCKET_SUMS} FROM members GROUP BY 1),
                itself AS (
                    SELECT a.bucket, CAST(:account AS varchar) AS key,
                           {", ".join(f"a.{m} - coalesce(o.{m}, 0) AS {m}" for m in _ROLLUP_MEASURES)}
                    FROM account AS a LEFT JOIN others AS o ON o.bucket = a.bucket
                )
                SELECT * FROM (SELECT * FROM members UNION ALL SELECT * FROM itself) AS groups
                WHERE requests <> 0 OR custom_key_requests <> 0
                ORDER BY 1, 2"""
        else:
            statement = f"""
                SELECT * FROM ({_rollup_totals(bucket, ":dimension")}) AS groups
                WHERE requests <> 0 OR custom_key_requests <> 0
                ORDER BY 1, 2"""
        parameters = {"account": account, "start": start, "end": end}
        if group_by != "member":
            parameters["dimension"] = group_by
        await session.execute(text("SET LOCAL jit = off"))
        return (await session.execute(text(statement), parameters)).all()

    async def _buckets_postgres(
        self, session: AsyncSession, *, account: str, start: datetime, end: datetime, interval: str, group_by: str
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """For a range that splits an hour: one small aggregate per bucket (LATERAL over the ``(billing_account, started_at)`` index).

        That index INCLUDEs every column read here (migration 0003), so each bucket is an
        index-only scan: no heap page is touched once vacuum has marked the pages visible.

        A single GROUP BY date_trunc(...), member makes PostgreSQL estimate one group per
        row (it borrows started_at's distinct count for the expression) and sort the whole
        month; per bucket, the only key is the group column, whose few values hash in
        memory. JIT is off for this statement: the plan's cost estimate would trigger a
        compile that costs more than the query.
        """
        step = timedelta(days=1) if interval == "day" else timedelta(hours=1)
        first = _floor_naive(start, interval)
        last = _floor_naive(end - timedelta(microseconds=1), interval)
        column = GROUP_COLUMNS[group_by].key
        statement = text(
            f"""
            SELECT b.bucket, a.key, a.requests, a.priced, a.cost, a.pending, a.custom
            FROM generate_series(CAST(:first AS timestamp), CAST(:last AS timestamp), CAST(:step AS interval)) AS b(bucket)
            CROSS JOIN LATERAL (
                SELECT {column} AS key,
                       count(*) FILTER (WHERE NOT custom_key) AS requests,
                       count(*) FILTER (WHERE status = 'priced') AS priced,
                       sum(cost_nano_usd) AS cost,
                       count(*) FILTER (WHERE status = 'pending') AS pending,
                       count(*) FILTER (WHERE custom_key) AS custom
                FROM usage_records
                WHERE billing_account = :account
                  AND started_at >= greatest(b.bucket AT TIME ZONE 'UTC', CAST(:start AS timestamptz))
                  AND started_at < least((b.bucket + CAST(:step AS interval)) AT TIME ZONE 'UTC', CAST(:end AS timestamptz))
                GROUP BY {column}
            ) AS a
            ORDER BY b.bucket, a.key
            """
        )
        await session.execute(text("SET LOCAL jit = off"))
        result = await session.execute(
            statement, {"first": first, "last": last, "step": step, "account": account, "start": start, "end": end}
        )
        return result.all()

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
