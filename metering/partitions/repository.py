"""The partitions' SQL: PostgreSQL's DDL (``repository_pg``), nothing on SQLite (``repository_sqlite``)."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import by_dialect
from metering.partitions.repository_pg import POSTGRES_PARTITIONS_SQL
from metering.partitions.repository_sqlite import SQLITE_PARTITIONS_SQL

# The tables partitioned by month, each by its ``period`` column (see migration 0014).
PARTITIONED_TABLES = ("usage_records", "ledger_entries")


def partition_name(table: str, period: str) -> str:
    """The partition of ``table`` holding ``period`` (``usage_records_p2026_12``)."""
    return f"{table}_p{period.replace('-', '_')}"


def default_partition(table: str) -> str:
    return f"{table}_default"


class PartitionsSql(Protocol):
    """What differs: PostgreSQL has partitions, SQLite has none (every answer empty, every change a no-op)."""

    async def months(self, session: AsyncSession, table: str) -> set[str]:
        """The months ``table`` has a partition of (not DEFAULT's)."""
        ...

    async def missing_months(self, session: AsyncSession, table: str, wanted: set[str]) -> set[str]:
        """The months of ``wanted``, and of the rows in DEFAULT, that ``table`` has no partition of."""
        ...

    async def attach_month(self, session: AsyncSession, table: str, period: str, *, lock_timeout_ms: int) -> int:
        """Create ``period``'s partition of ``table``, with the rows of that month DEFAULT holds moved into it,
        and attach it; returns the rows moved. The caller's transaction does all of it or none."""
        ...

    async def drop_month(self, session: AsyncSession, table: str, period: str, *, lock_timeout_ms: int) -> bool:
        """Detach and drop ``period``'s partition of ``table``; False when there was none."""
        ...


def partitions_sql(session: AsyncSession) -> PartitionsSql:
    return by_dialect(session, sqlite=SQLITE_PARTITIONS_SQL, postgresql=POSTGRES_PARTITIONS_SQL)
