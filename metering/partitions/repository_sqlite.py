"""SQLite keeps one table per concept: no partitions to list, create or drop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

if TYPE_CHECKING:
    from metering.partitions.repository import PartitionsSql


class SqlitePartitionsSql:
    async def months(self, session: AsyncSession, table: str) -> set[str]:
        return set()

    async def missing_months(self, session: AsyncSession, table: str, wanted: set[str]) -> set[str]:
        return set()

    async def attach_month(self, session: AsyncSession, table: str, period: str, *, lock_timeout_ms: int) -> int:
        return 0

    async def drop_month(self, session: AsyncSession, table: str, period: str, *, lock_timeout_ms: int) -> bool:
        return False


SQLITE_PARTITIONS_SQL: PartitionsSql = SqlitePartitionsSql()
