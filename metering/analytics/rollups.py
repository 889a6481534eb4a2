"""Folding the hourly usage totals: the triggers' differences of a key become one row.

Every statement that writes usage records appends one row per key it changed (migrations
0005 and 0006), so without folding the totals would grow about as fast as the records themselves.
Folding deletes all rows of the keys that have new differences and inserts their sum, in
one statement: a reader sees the totals before or after it, equal either way. Differences
committed while it runs are not in its snapshot and wait for the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import dialect_name

# Keys folded per statement, so one pass never holds a huge transaction.
KEYS_PER_FOLD = 10_000
# Two folds at once would wait on each other's deletes; the second one skips instead.
FOLD_LOCK_KEY = 0x6D657465_72696E67  # 'metering'

_FOLD = text(
    """
    WITH touched AS (
        SELECT DISTINCT billing_account, span, starts_at, dimension, key FROM usage_rollups WHERE NOT folded LIMIT :limit
    ), moved AS (
        DELETE FROM usage_rollups AS r USING touched AS t
        WHERE r.billing_account = t.billing_account AND r.span = t.span AND r.dimension = t.dimension
          AND r.starts_at = t.starts_at AND r.key = t.key
        RETURNING r.billing_account, r.span, r.starts_at, r.dimension, r.key, r.requests, r.priced_requests,
                  r.cost_nano_usd, r.pending_requests, r.custom_key_requests
    ), sums AS (
        INSERT INTO usage_rollups (billing_account, span, starts_at, dimension, key, requests, priced_requests,
                                   cost_nano_usd, pending_requests, custom_key_requests, folded)
        SELECT billing_account, span, starts_at, dimension, key, sum(requests), sum(priced_requests),
               sum(cost_nano_usd), sum(pending_requests), sum(custom_key_requests), true
        FROM moved
        GROUP BY billing_account, span, starts_at, dimension, key
        HAVING sum(requests) <> 0 OR sum(priced_requests) <> 0 OR sum(cost_nano_usd) <> 0
            OR sum(pending_requests) <> 0 OR sum(custom_key_requests) <> 0
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM touched), (SELECT count(*) FROM moved), (SELECT count(*) FROM sums)
    """
)


@dataclass(frozen=True, slots=True)
class FoldResult:
    keys: int
    rows_before: int
    rows_after: int


async def fold_usage_rollups(session: AsyncSession, *, limit: int = KEYS_PER_FOLD) -> FoldResult | None:
    """Fold up to ``limit`` keys with new differences; None when another fold holds the lock.

    PostgreSQL only: on SQLite the table stays empty and there is nothing to fold.
    """
    if dialect_name(session) != "postgresql":
        return FoldResult(keys=0, rows_before=0, rows_after=0)
    if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": FOLD_LOCK_KEY}):
        return None
    keys, rows_before, rows_after = (await session.execute(_FOLD, {"limit": limit})).one()
    return FoldResult(keys=int(keys), rows_before=int(rows_before), rows_after=int(rows_after))


@dataclass(frozen=True, slots=True)
class RollupMismatch:
    """A key whose totals disagree with its usage records: (requests, priced, cost, pending, custom) each."""

    billing_account: str
    span: str
    starts_at: object
    dimension: str
    key: str
    records: tuple[int, ...]
    totals: tuple[int, ...]


_MEASURES = ("requests", "priced_requests", "cost_nano_usd", "pending_requests", "custom_key_requests")

# The records summed as the triggers sum them (migration 0006), beside the totals' sums.
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
              FROM usage_records) AS u
        GROUP BY GROUPING SETS ((billing_account, hour, member), (billing_account, hour, provider_id),
                                (billing_account, hour, model))
        HAVING GROUPING(member) = 1 OR member IS NOT NULL
    ), totals AS (
        SELECT billing_account, span, starts_at, dimension, key,
               {", ".join(f"sum({m}) AS {m}" for m in _MEASURES)}
        FROM usage_rollups GROUP BY billing_account, span, starts_at, dimension, key
    )
    SELECT billing_account, span, starts_at, dimension, key,
           {", ".join(f"coalesce(r.{m}, 0)" for m in _MEASURES)},
           {", ".join(f"coalesce(t.{m}, 0)" for m in _MEASURES)}
    FROM records AS r FULL JOIN totals AS t USING (billing_account, span, starts_at, dimension, key)
    WHERE ({", ".join(f"coalesce(r.{m}, 0)" for m in _MEASURES)})
          IS DISTINCT FROM ({", ".join(f"coalesce(t.{m}, 0)" for m in _MEASURES)})
    ORDER BY billing_account, span, starts_at, dimension, key
    """
)


async def rollup_mismatches(session: AsyncSession) -> list[RollupMismatch]:
    """Every key whose totals differ from its records (PostgreSQL; SQLite keeps no totals)."""
    if dialect_name(session) != "postgresql":
        return []
    rows = await session.execute(_MISMATCHES)
    count = len(_MEASURES)
    return [
        RollupMismatch(
            billing_account=row[0],
            span=row[1],
            starts_at=row[2],
            dimension=row[3],
            key=row[4],
            records=tuple(int(v) for v in row[5 : 5 + count]),
            totals=tuple(int(v) for v in row[5 + count :]),
        )
        for row in rows
    ]
