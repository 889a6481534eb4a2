"""Folding the hourly usage totals: the triggers' differences of a key become one row.

Every statement that writes usage records appends one row per key it changed (migration
0005), so without folding the totals would grow about as fast as the records themselves.
Folding deletes all rows of the keys that have new differences and inserts their sum, in
one statement: a reader sees the totals before or after it, equal either way. Differences
committed while it runs are not in its snapshot and wait for the next pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

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
    if session.bind.dialect.name != "postgresql":
        return FoldResult(keys=0, rows_before=0, rows_after=0)
    if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": FOLD_LOCK_KEY}):
        return None
    keys, rows_before, rows_after = (await session.execute(_FOLD, {"limit": limit})).one()
    return FoldResult(keys=int(keys), rows_before=int(rows_before), rows_after=int(rows_after))
