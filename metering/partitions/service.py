"""Which monthly partitions should exist, and creating them: for the ``create-partitions`` job and the archive."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from metering.partitions.repository import partitions_sql
from metering.periods import next_period, period_of

# The current month and this many after it always have their partitions.
MONTHS_AHEAD = 3
# How long partition DDL waits for a lock before giving way (and trying again on the next run):
# while it waits, every statement queued behind it waits too.
LOCK_TIMEOUT_MS = 2_000


def months_ahead(now: datetime, ahead: int = MONTHS_AHEAD) -> list[str]:
    """The month of ``now`` and the ``ahead`` months after it."""
    months = [period_of(now)]
    for _ in range(ahead):
        months.append(next_period(months[-1]))
    return months


class PartitionService:
    async def missing_months(self, session: AsyncSession, *, table: str, now: datetime) -> list[str]:
        """The months to create a partition of: the coming ones, and any whose rows wait in DEFAULT."""
        return sorted(await partitions_sql(session).missing_months(session, table, set(months_ahead(now))))

    async def create_month(self, session: AsyncSession, *, table: str, period: str) -> int:
        """Create and attach ``period``'s partition of ``table`` in the caller's transaction; returns the rows
        it took over from DEFAULT."""
        return await partitions_sql(session).attach_month(session, table, period, lock_timeout_ms=LOCK_TIMEOUT_MS)

    async def drop_month(self, session: AsyncSession, *, table: str, period: str) -> bool:
        """Detach and drop ``period``'s partition of ``table`` (the archive, once its rows are safe elsewhere)."""
        return await partitions_sql(session).drop_month(session, table, period, lock_timeout_ms=LOCK_TIMEOUT_MS)

    async def months(self, session: AsyncSession, *, table: str) -> set[str]:
        return await partitions_sql(session).months(session, table)


partitions_service = PartitionService()
