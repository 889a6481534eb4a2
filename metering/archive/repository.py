"""SQL of the archive: which months may go, their rows streamed and summed, the record of a month archived,
and its rows deleted once that record is committed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Table, case, delete, func, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.archive.files import Figures, Sum
from metering.ledger.verify_repository import verify_repository
from metering.models import (
    AccountPeriod,
    ArchivedAccountSum,
    ArchivedLedgerSum,
    ArchivedPeriod,
    Hold,
    LedgerEntry,
    LedgerTransaction,
    Period,
    UsageRecord,
    UsageRequestKey,
)
from metering.partitions.repository import PARTITIONED_TABLES
from metering.partitions.service import partitions_service
from metering.sql import rowcount

ROWS_PER_BATCH = 50_000


@dataclass(frozen=True, slots=True)
class ArchivedTable:
    """A table whose rows of a month go to one Parquet file; ``sums`` are what the file is checked by."""

    table: Table
    sums: tuple[Sum, ...] = ()

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def partitioned(self) -> bool:
        """Partitioned by month on PostgreSQL: dropped as a partition, not deleted row by row."""
        return self.name in PARTITIONED_TABLES


# In the order their rows go: usage and entries as partitions, then what referenced them. Every
# table has a ``period`` column: the record's month, or the month of the posting.
ARCHIVED_TABLES = (
    ArchivedTable(
        UsageRecord.__table__,
        (Sum("cost_nano_usd", "cost_nano_usd"), Sum("estimate_nano_usd", "estimate_nano_usd")),
    ),
    ArchivedTable(
        LedgerEntry.__table__,
        (Sum("amount_nano_usd", "amount_nano_usd"), Sum("debits_nano_usd", "amount_nano_usd", positive_only=True)),
    ),
    ArchivedTable(LedgerTransaction.__table__),
    ArchivedTable(Hold.__table__, (Sum("amount_nano_usd", "amount_nano_usd"),)),
)


class ArchiveRepository:
    async def closed_months(self, session: AsyncSession, *, before: str) -> list[str]:
        """The months before ``before`` that count as closed (closed, or earlier than a closed one: periods
        close in order) and hold something: usage, postings, holds, account totals, or a partition."""
        latest = await session.scalar(select(func.max(Period.period)).where(Period.status == "closed"))
        if latest is None:
            return []
        known = union(
            select(AccountPeriod.period),
            select(Period.period),
            select(LedgerTransaction.period).distinct(),
            select(Hold.period).where(Hold.status == "held"),
        )
        months = set(await session.scalars(select(known.subquery().c[0])))
        for table in PARTITIONED_TABLES:
            months |= await partitions_service.months(session, table=table)
        return sorted(month for month in months if month < before and month <= latest)

    async def archived(self, session: AsyncSession) -> dict[str, ArchivedPeriod]:
        return {row.period: row for row in await session.scalars(select(ArchivedPeriod))}

    async def pending_requests(self, session: AsyncSession, *, period: str) -> int:
        count = await session.scalar(
            select(func.count()).where(UsageRecord.period == period, UsageRecord.status == "pending")
        )
        return int(count or 0)

    async def held_holds(self, session: AsyncSession, *, period: str) -> int:
        count = await session.scalar(select(func.count()).where(Hold.period == period, Hold.status == "held"))
        return int(count or 0)

    async def stream_rows(
        self, session: AsyncSession, table: Table, *, period: str
    ) -> AsyncIterator[Sequence[Sequence[Any]]]:
        """The month's rows of ``table`` in id order, in batches, through one server-side cursor."""
        statement = select(table).where(table.c.period == period).order_by(table.c.id)
        result = await session.stream(statement.execution_options(yield_per=ROWS_PER_BATCH))
        async for partition in result.partitions():
            yield partition

    async def figures(self, session: AsyncSession, archived: ArchivedTable, *, period: str) -> Figures:
        """Rows and sums of the month's rows of a table, as the database has them."""
        table = archived.table
        columns: list[ColumnElement[Any]] = [func.count()]
        for s in archived.sums:
            column = table.c[s.column]
            value = case((column > 0, column), else_=0) if s.positive_only else column
            columns.append(func.coalesce(func.sum(value), 0))
        row = (await session.execute(select(*columns).where(table.c.period == period))).one()
        return Figures(int(row[0]), {s.name: int(value) for s, value in zip(archived.sums, row[1:], strict=True)})

    async def record(
        self,
        session: AsyncSession,
        *,
        period: str,
        location: str,
        manifest_sha256: str,
        tables: dict[str, Any],
        now: datetime,
    ) -> None:
        """The month archived, with what verify checks from now on instead of its rows: per ledger account
        the sum of its entries of the month, per account the ledger sums verify compares with its totals."""
        entries = await session.execute(
            select(LedgerEntry.ledger_account_id, func.count(), func.sum(LedgerEntry.amount_nano_usd))
            .where(LedgerEntry.period == period)
            .group_by(LedgerEntry.ledger_account_id)
        )
        account_sums = await verify_repository.ledger_sums_by_account_period(session, period=period)
        session.add(
            ArchivedPeriod(
                period=period, archived_at=now, location=location, manifest_sha256=manifest_sha256, tables=tables
            )
        )
        session.add_all(
            ArchivedLedgerSum(
                period=period, ledger_account_id=account_id, entries=int(count), amount_nano_usd=int(total)
            )
            for account_id, count, total in entries
        )
        session.add_all(
            ArchivedAccountSum(account_name=account, period=month, sums=sums)
            for (account, month), sums in account_sums.items()
            if month == period
        )
        await session.flush()

    async def drop_partition(self, session: AsyncSession, *, table: str, period: str) -> bool:
        return await partitions_service.drop_month(session, table=table, period=period)

    async def delete_month(self, session: AsyncSession, *, table: Table, period: str) -> int:
        """Delete the month's rows of ``table`` (for a partitioned one, those its DEFAULT partition holds)."""
        return rowcount(await session.execute(delete(table).where(table.c.period == period)))

    async def delete_request_keys(self, session: AsyncSession, *, period: str) -> int:
        """The month's request keys: no record of it can arrive any more (the archive waits until then)."""
        table = UsageRequestKey.__table__
        return rowcount(await session.execute(delete(table).where(table.c.period == period)))

    async def mark_dropped(self, session: AsyncSession, *, period: str, now: datetime) -> None:
        await session.execute(update(ArchivedPeriod).where(ArchivedPeriod.period == period).values(dropped_at=now))


archive_repository = ArchiveRepository()
