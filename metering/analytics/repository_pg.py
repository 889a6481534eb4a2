"""PostgreSQL's SQL of the usage series, and of the hourly totals its triggers keep (``usage_rollups``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.analytics.buckets import GROUP_COLUMNS, MEASURES

if TYPE_CHECKING:
    from metering.analytics.repository import AnalyticsSql
    from metering.analytics.rollups import RollupsSql


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
# Each sum cast back to bigint (a sum of bigint is numeric): the driver then hands out ints, not
# Decimals, which for a large org's month of member-days was most of the time spent reading them.
_BUCKET_SUMS = ", ".join(f"CAST(sum({m}) AS bigint) AS {m}" for m in MEASURES)


_MEASURE_LIST = ", ".join(MEASURES)


def _rollup_totals(bucket: str, dimension: str) -> str:
    """Per (bucket, key) sums of one dimension's totals of ``:account`` in ``[:start, :end)``.

    Hourly buckets sum the hourly rows. Daily ones take, for each whole day of
    ``[:days_from, :days_to)``, its ``day`` row and the hourly differences not folded into it
    yet; the hours of a partial first or last day are summed from the hourly rows.
    """
    if bucket == _ROLLUP_BUCKET["hour"]:
        return f"""
        SELECT {bucket} AS bucket, key, {_BUCKET_SUMS}
        FROM usage_rollups
        WHERE billing_account = :account AND span = 'hour' AND dimension = {dimension}
          AND starts_at >= :start AND starts_at < :end
        GROUP BY 1, 2"""
    return f"""
        SELECT {bucket} AS bucket, key, {_BUCKET_SUMS} FROM (
            SELECT starts_at, key, {_MEASURE_LIST} FROM usage_rollups
            WHERE billing_account = :account AND span = 'day' AND dimension = {dimension}
              AND starts_at >= :days_from AND starts_at < :days_to
            UNION ALL
            SELECT starts_at, key, {_MEASURE_LIST} FROM usage_rollups
            WHERE billing_account = :account AND NOT folded AND span = 'hour' AND dimension = {dimension}
              AND starts_at >= :days_from AND starts_at < :days_to
            UNION ALL
            SELECT starts_at, key, {_MEASURE_LIST} FROM usage_rollups
            WHERE billing_account = :account AND span = 'hour' AND dimension = {dimension}
              AND starts_at >= :start AND starts_at < :end
              AND (starts_at < :days_from OR starts_at >= :days_to)
        ) AS totals
        GROUP BY 1, 2"""


def _whole_days(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """``[from, to)``: the whole UTC days of ``[start, end)`` (empty, at ``start``'s next midnight, when none)."""
    first = start.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if first < start:
        first += timedelta(days=1)
    last = end.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return first, max(first, last)


class PostgresAnalyticsSql:
    async def buckets_from_rollups(
        self, session: AsyncSession, *, account: str, start: datetime, end: datetime, interval: str, group_by: str
    ) -> Sequence[Row[*tuple[Any, ...]]]:
        """The buckets summed from the hourly totals the triggers keep (``usage_rollups``).

        Only for a range on whole hours: the totals cannot split an hour. A whole day is its
        daily total and what has not been folded into it yet; a partial one sums its hours
        (``_rollup_totals``). The totals keep no member row for the account itself (a user paying for their
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
                           {", ".join(f"a.{m} - coalesce(o.{m}, 0) AS {m}" for m in MEASURES)}
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
        days_from, days_to = _whole_days(start, end)
        parameters = {"account": account, "start": start, "end": end}
        if interval == "day":
            parameters |= {"days_from": days_from, "days_to": days_to}
        if group_by != "member":
            parameters["dimension"] = group_by
        await session.execute(text("SET LOCAL jit = off"))
        return (await session.execute(text(statement), parameters)).all()

    async def buckets_from_records(
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


# Two folds at once would wait on each other's deletes; the second one skips instead.
FOLD_LOCK_KEY = 0x6D657465_72696E67  # 'metering'

_DAY = "date_bin(interval '1 day', starts_at, timestamptz '2000-01-01 00:00:00+00')"
_SUMS = ", ".join(f"sum({m}) AS {m}" for m in MEASURES)
_NONZERO = " OR ".join(f"sum({m}) <> 0" for m in MEASURES)

# One statement, so a reader sees the totals before or after it, equal either way: the keys with
# new differences become one folded row each, and the differences folded now are added to their
# keys' ``day`` rows (old day row deleted, the sum inserted), which stay the sum of the folded hours.
_FOLD = text(
    f"""
    WITH touched AS (
        SELECT DISTINCT billing_account, span, starts_at, dimension, key FROM usage_rollups WHERE NOT folded LIMIT :limit
    ), moved AS (
        DELETE FROM usage_rollups AS r USING touched AS t
        WHERE r.billing_account = t.billing_account AND r.span = t.span AND r.dimension = t.dimension
          AND r.starts_at = t.starts_at AND r.key = t.key
        RETURNING r.billing_account, r.span, r.starts_at, r.dimension, r.key, r.requests, r.priced_requests,
                  r.cost_nano_usd, r.pending_requests, r.custom_key_requests, r.folded
    ), sums AS (
        INSERT INTO usage_rollups (billing_account, span, starts_at, dimension, key, {_MEASURE_LIST}, folded)
        SELECT billing_account, span, starts_at, dimension, key, {_SUMS}, true
        FROM moved
        GROUP BY billing_account, span, starts_at, dimension, key
        HAVING {_NONZERO}
        RETURNING 1
    ), new_in_days AS (
        SELECT billing_account, {_DAY} AS day, dimension, key, {_SUMS}
        FROM moved WHERE span = 'hour' AND NOT folded
        GROUP BY billing_account, {_DAY}, dimension, key
    ), old_days AS (
        DELETE FROM usage_rollups AS r USING new_in_days AS d
        WHERE r.billing_account = d.billing_account AND r.span = 'day' AND r.dimension = d.dimension
          AND r.starts_at = d.day AND r.key = d.key
        RETURNING r.billing_account, r.starts_at AS day, r.dimension, r.key, {", ".join(f"r.{m}" for m in MEASURES)}
    ), days AS (
        INSERT INTO usage_rollups (billing_account, span, starts_at, dimension, key, {_MEASURE_LIST}, folded)
        SELECT billing_account, 'day', day, dimension, key, {_SUMS}, true
        FROM (SELECT * FROM new_in_days UNION ALL SELECT * FROM old_days) AS changes
        GROUP BY billing_account, day, dimension, key
        HAVING {_NONZERO}
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM touched), (SELECT count(*) FROM moved), (SELECT count(*) FROM sums)
    """
)


# The records summed as the triggers sum them (migration 0006), beside the totals' sums: per hour,
# the hourly rows; per day, the day rows and the hourly differences not folded into them yet. A
# month ``metering archive`` moved out is left out on both sides: its records are gone, its totals
# stay for the usage series.
_NOT_ARCHIVED = "to_char(starts_at AT TIME ZONE 'UTC', 'YYYY-MM') NOT IN (SELECT period FROM archived_periods)"
_DIFFERS = (
    f"({', '.join(f'coalesce(r.{m}, 0)' for m in MEASURES)}) "
    f"IS DISTINCT FROM ({', '.join(f'coalesce(t.{m}, 0)' for m in MEASURES)})"
)
_SIDES = f"{', '.join(f'coalesce(r.{m}, 0)' for m in MEASURES)}, {', '.join(f'coalesce(t.{m}, 0)' for m in MEASURES)}"
_MISMATCHES = text(
    f"""
    WITH records AS (
        SELECT billing_account, 'hour' AS span, hour AS starts_at,
               CASE WHEN GROUPING(member) = 0 THEN 'member'
                    WHEN GROUPING(provider_id) = 0 THEN 'provider' ELSE 'model' END AS dimension,
               CASE WHEN GROUPING(member) = 0 THEN member
                    WHEN GROUPING(provider_id) = 0 THEN provider_id ELSE model END AS key,
               count(*) FILTER (WHERE NOT custom_key) AS requests,
               count(*) FILTER (WHERE status = 'priced') AS priced_requests,
               coalesce(sum(cost_nano_usd), 0) AS cost_nano_usd,
               count(*) FILTER (WHERE status = 'pending') AS pending_requests,
               count(*) FILTER (WHERE custom_key) AS custom_key_requests
        FROM (SELECT *, date_trunc('hour', started_at, 'UTC') AS hour,
                     CASE WHEN user_name <> billing_account THEN user_name END AS member
              FROM usage_records WHERE period NOT IN (SELECT period FROM archived_periods)) AS u
        GROUP BY GROUPING SETS ((billing_account, hour, member), (billing_account, hour, provider_id),
                                (billing_account, hour, model))
        HAVING GROUPING(member) = 1 OR member IS NOT NULL
    ), totals AS (
        SELECT billing_account, span, starts_at, dimension, key, {_SUMS}
        FROM usage_rollups WHERE span = 'hour' AND {_NOT_ARCHIVED}
        GROUP BY billing_account, span, starts_at, dimension, key
    ), day_records AS (
        SELECT billing_account, 'day' AS span, {_DAY} AS starts_at, dimension, key, {_SUMS}
        FROM records GROUP BY billing_account, {_DAY}, dimension, key
    ), day_totals AS (
        SELECT billing_account, 'day' AS span, {_DAY} AS starts_at, dimension, key, {_SUMS}
        FROM usage_rollups WHERE (span = 'day' OR NOT folded) AND {_NOT_ARCHIVED}
        GROUP BY billing_account, {_DAY}, dimension, key
    )
    SELECT billing_account, span, starts_at, dimension, key, {_SIDES}
    FROM records AS r FULL JOIN totals AS t USING (billing_account, span, starts_at, dimension, key)
    WHERE {_DIFFERS}
    UNION ALL
    SELECT billing_account, span, starts_at, dimension, key, {_SIDES}
    FROM day_records AS r FULL JOIN day_totals AS t USING (billing_account, span, starts_at, dimension, key)
    WHERE {_DIFFERS}
    ORDER BY 1, 2, 3, 4, 5
    """
)


class PostgresRollupsSql:
    async def fold(self, session: AsyncSession, *, limit: int) -> tuple[int, int, int] | None:
        """(keys, rows before, rows after) of one fold; None when another fold holds the lock."""
        if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": FOLD_LOCK_KEY}):
            return None
        keys, rows_before, rows_after = (await session.execute(_FOLD, {"limit": limit})).one()
        return int(keys), int(rows_before), int(rows_after)

    async def mismatches(self, session: AsyncSession) -> Sequence[Row[*tuple[Any, ...]]]:
        return (await session.execute(_MISMATCHES)).all()


postgres_analytics_sql: AnalyticsSql = PostgresAnalyticsSql()
postgres_rollups_sql: RollupsSql = PostgresRollupsSql()
