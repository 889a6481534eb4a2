"""PostgreSQL's partition DDL. Every lock it takes is bounded by ``lock_timeout``: maintenance gives way
to the hot path and tries again on its next run, rather than queue ingest behind it.

Table names come from ``PARTITIONED_TABLES`` and months are checked ``YYYY-MM``, so both are
written into the statements (DDL takes no parameters).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.periods import parse_period

if TYPE_CHECKING:
    from metering.partitions.repository import PartitionsSql

_BOUND_MONTH = re.compile(r"'(\d{4}-\d{2})'")


def _names(table: str, period: str | None = None) -> tuple[str, str]:
    # Imported here: repository.py imports this module.
    from metering.partitions.repository import PARTITIONED_TABLES, default_partition, partition_name

    if table not in PARTITIONED_TABLES:
        raise ValueError(f"{table!r} is not partitioned by month")
    return default_partition(table), partition_name(table, parse_period(period)) if period else ""


async def _lock_timeout(session: AsyncSession, milliseconds: int) -> None:
    await session.execute(text(f"SET LOCAL lock_timeout = {int(milliseconds)}"))


class PostgresPartitionsSql:
    async def months(self, session: AsyncSession, table: str) -> set[str]:
        _names(table)
        bounds = await session.scalars(
            text(
                "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:table AS regclass)"
            ),
            {"table": table},
        )
        return {month for bound in bounds for month in _BOUND_MONTH.findall(bound or "")}

    async def missing_months(self, session: AsyncSession, table: str, wanted: set[str]) -> set[str]:
        default, _ = _names(table)
        landed: set[str] = set()
        if await self._exists(session, default):
            landed = set(await session.scalars(text(f"SELECT DISTINCT period FROM {default}")))
        return {parse_period(month) for month in wanted | landed} - await self.months(session, table)

    async def attach_month(self, session: AsyncSession, table: str, period: str, *, lock_timeout_ms: int) -> int:
        """Created beside the table, filled, then attached: ATTACH takes only a SHARE UPDATE EXCLUSIVE
        lock of the parent, so ingest and collection go on meanwhile (CREATE TABLE … PARTITION OF
        would lock them out). DEFAULT is locked exclusively for the move (ATTACH must prove it holds
        no row of the month). The new partition takes DEFAULT's storage settings (fillfactor)."""
        default, partition = _names(table, period)
        await _lock_timeout(session, lock_timeout_ms)
        has_default = await self._exists(session, default)
        await session.execute(text(f"LOCK TABLE {table} IN SHARE UPDATE EXCLUSIVE MODE"))
        options = ""
        if has_default:
            await session.execute(text(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE"))
            reloptions = await session.scalar(
                text("SELECT reloptions FROM pg_class WHERE oid = CAST(:name AS regclass)"), {"name": default}
            )
            options = f" WITH ({', '.join(reloptions)})" if reloptions else ""
        await session.execute(
            text(f"CREATE TABLE {partition} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS){options}")
        )
        moved = 0
        if has_default:
            moved = int(
                await session.scalar(
                    text(
                        f"WITH moved AS (DELETE FROM {default} WHERE period = :period RETURNING *), "
                        f"copied AS (INSERT INTO {partition} SELECT * FROM moved RETURNING 1) "
                        "SELECT count(*) FROM copied"
                    ),
                    {"period": period},
                )
                or 0
            )
        # A constraint that proves the rows are the month's spares ATTACH its scan of them.
        await session.execute(
            text(f"ALTER TABLE {partition} ADD CONSTRAINT {partition}_month CHECK (period = '{period}')")
        )
        await session.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {partition} FOR VALUES IN ('{period}')"))
        await session.execute(text(f"ALTER TABLE {partition} DROP CONSTRAINT {partition}_month"))
        return moved

    async def drop_month(self, session: AsyncSession, table: str, period: str, *, lock_timeout_ms: int) -> bool:
        """DETACH then DROP: both lock the parent exclusively for a moment (a partitioned table with a
        DEFAULT partition cannot be detached CONCURRENTLY), hence the lock timeout."""
        _, partition = _names(table, period)
        if period not in await self.months(session, table):
            return False
        await _lock_timeout(session, lock_timeout_ms)
        await session.execute(text(f"ALTER TABLE {table} DETACH PARTITION {partition}"))
        await session.execute(text(f"DROP TABLE {partition}"))
        return True

    @staticmethod
    async def _exists(session: AsyncSession, name: str) -> bool:
        return bool(await session.scalar(text("SELECT to_regclass(:name) IS NOT NULL"), {"name": name}))


POSTGRES_PARTITIONS_SQL: PartitionsSql = PostgresPartitionsSql()
