"""Folding the hourly usage totals: the triggers' differences of a key become one row, and are added
to the key's daily total (migration 0015).

Every statement that writes usage records appends one row per key it changed (migrations
0005 and 0006), so without folding the totals would grow about as fast as the records themselves.
Folding deletes all rows of the keys that have new differences and inserts their sum, in
one statement: a reader sees the totals before or after it, equal either way. Differences
committed while it runs are not in its snapshot and wait for the next pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from metering.analytics.buckets import MEASURES
from metering.analytics.repository_pg import postgres_rollups_sql
from metering.analytics.repository_sqlite import sqlite_rollups_sql
from metering.db import by_dialect

# Keys folded per statement, so one pass never holds a huge transaction.
KEYS_PER_FOLD = 10_000


@dataclass(frozen=True, slots=True)
class FoldResult:
    keys: int
    rows_before: int
    rows_after: int


class RollupsSql(Protocol):
    """The SQL of the hourly totals, which only PostgreSQL keeps (``metering.analytics.repository_pg``)."""

    async def fold(self, session: AsyncSession, *, limit: int) -> tuple[int, int, int] | None:
        """(keys, rows before, rows after) of folding up to ``limit`` keys; None when another fold holds the lock."""

    async def mismatches(self, session: AsyncSession) -> Sequence[Row[*tuple[Any, ...]]]:
        """Rows of (the key's five columns, the records' measures, the totals' measures) that differ."""


def _rollups_sql(session: AsyncSession) -> RollupsSql:
    return by_dialect(session, sqlite=sqlite_rollups_sql, postgresql=postgres_rollups_sql)


async def fold_usage_rollups(session: AsyncSession, *, limit: int = KEYS_PER_FOLD) -> FoldResult | None:
    """Fold up to ``limit`` keys with new differences; None when another fold holds the lock.

    PostgreSQL only: on SQLite the table stays empty and there is nothing to fold.
    """
    folded = await _rollups_sql(session).fold(session, limit=limit)
    if folded is None:
        return None
    keys, rows_before, rows_after = folded
    return FoldResult(keys=keys, rows_before=rows_before, rows_after=rows_after)


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


async def rollup_mismatches(session: AsyncSession) -> list[RollupMismatch]:
    """Every key whose totals differ from its records (PostgreSQL; SQLite keeps no totals)."""
    rows = await _rollups_sql(session).mismatches(session)
    count = len(MEASURES)
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
