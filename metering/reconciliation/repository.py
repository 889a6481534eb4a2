"""SQL of provider reconciliations: staging a statement, comparing it with the ledger, storing what differs.

The ledger side of a provider and period is every usage record of that provider whose period
(of ``started_at``) is the period and whose cost was posted: the record has a ``request_cost``
or ``late_request_cost`` transaction (``usage_record_id`` set; a late one names the record's
period as ``original_period`` and is posted to a later one). Its amount is what that
transaction credited to the provider's payable, negated: what the platform owes the provider
for the request. That posting is the authority, not ``usage_records.cost_nano_usd``: the two
are written in one transaction and ``metering verify`` holds them equal, but the payable is
what the ``provider-payables`` report sums and what the provider is paid, so the totals here
tie out to it. A cost of 0 is posted as a transaction without entries (zero entries are
dropped), hence the outer join and the 0. Custom-key, pending, unpriced and quarantined
requests have no cost transaction and are not on the ledger side.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Select, and_, delete, exists, func, insert, literal, null, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from metering.db import by_dialect
from metering.ledger import codes
from metering.models import (
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Reconciliation,
    ReconciliationItem,
    ReconciliationLine,
    UsageRecord,
)
from metering.reconciliation.repository_pg import POSTGRES_RECONCILIATION_SQL
from metering.reconciliation.repository_sqlite import SQLITE_RECONCILIATION_SQL
from metering.reconciliation.statement import StatementLine
from metering.sql import chunks

AMOUNT_MISMATCH = "amount_mismatch"
ONLY_PROVIDER = "only_provider"
ONLY_LEDGER = "only_ledger"


class ReconciliationSql(Protocol):
    """The reconciliation SQL that differs between SQLite and PostgreSQL."""

    async def stage_lines(self, session: AsyncSession, reconciliation_id: int, lines: Sequence[StatementLine]) -> None:
        """Add ``lines`` to the staging table; ``StagedTwice`` (transaction unusable) when a request id repeats."""
        ...

    async def analyze_staged(self, session: AsyncSession) -> None:
        """Let the planner know how many lines were just staged, before they are compared."""
        ...


def _sql(session: AsyncSession) -> ReconciliationSql:
    return by_dialect(session, sqlite=SQLITE_RECONCILIATION_SQL, postgresql=POSTGRES_RECONCILIATION_SQL)


def _posted_cost() -> ColumnElement[int]:
    """A request's cost as posted: minus its transaction's payable entry; 0 for a cost of 0 (no entry)."""
    return func.coalesce(-LedgerEntry.amount_nano_usd, 0)


def _ledger_side(statement: Select[*tuple[Any, ...]], *, provider_id: str, period: str) -> Select[*tuple[Any, ...]]:
    """``statement`` over the requests of the ledger side (see the module), each joined to its posted payable entry."""
    payables = select(LedgerAccount.id).where(LedgerAccount.kind == codes.PAYABLE, LedgerAccount.owner == provider_id)
    return (
        statement.join(
            LedgerTransaction,
            and_(LedgerTransaction.usage_record_id == UsageRecord.id, LedgerTransaction.kind.in_(codes.COST_KINDS)),
        )
        .outerjoin(
            LedgerEntry,
            and_(LedgerEntry.transaction_id == LedgerTransaction.id, LedgerEntry.ledger_account_id.in_(payables)),
        )
        .where(UsageRecord.provider_id == provider_id, UsageRecord.period == period)
    )


def _is_posted(request_id: InstrumentedAttribute[str], *, provider_id: str, period: str) -> ColumnElement[bool]:
    """Whether the request ``request_id`` of the provider is on the ledger side of ``period``."""
    return exists(
        select(literal(1))
        .select_from(UsageRecord)
        .join(
            LedgerTransaction,
            and_(LedgerTransaction.usage_record_id == UsageRecord.id, LedgerTransaction.kind.in_(codes.COST_KINDS)),
        )
        .where(
            UsageRecord.provider_id == provider_id, UsageRecord.request_id == request_id, UsageRecord.period == period
        )
    )


def discrepancy_statements(reconciliation_id: int, *, provider_id: str, period: str) -> list[Select[*tuple[Any, ...]]]:
    """The SELECTs of the items of each kind, in the order of ``_ITEM_COLUMNS``: a join per side.

    No ORDER BY: the items are listed through their unique index, and a sort of millions of rows
    would be held in memory on SQLite (``temp_store=MEMORY``).
    """
    staged = ReconciliationLine
    rid = literal(reconciliation_id)
    mismatched = _ledger_side(
        select(rid, staged.request_id, literal(AMOUNT_MISMATCH), _posted_cost(), staged.cost_nano_usd)
        .select_from(staged)
        .join(UsageRecord, and_(UsageRecord.provider_id == provider_id, UsageRecord.request_id == staged.request_id)),
        provider_id=provider_id,
        period=period,
    ).where(staged.reconciliation_id == reconciliation_id, _posted_cost() != staged.cost_nano_usd)
    only_provider = select(rid, staged.request_id, literal(ONLY_PROVIDER), null(), staged.cost_nano_usd).where(
        staged.reconciliation_id == reconciliation_id,
        ~_is_posted(staged.request_id, provider_id=provider_id, period=period),
    )
    not_stated = ~exists(
        select(literal(1)).where(
            staged.reconciliation_id == reconciliation_id, staged.request_id == UsageRecord.request_id
        )
    )
    only_ledger = _ledger_side(
        select(rid, UsageRecord.request_id, literal(ONLY_LEDGER), _posted_cost(), null()).select_from(UsageRecord),
        provider_id=provider_id,
        period=period,
    ).where(not_stated)
    return [mismatched, only_provider, only_ledger]


_ITEM_COLUMNS = ["reconciliation_id", "request_id", "kind", "ledger_nano_usd", "provider_nano_usd"]


class ReconciliationRepository:
    async def start(
        self, session: AsyncSession, *, provider_id: str, period: str, actor: str, reason: str | None, now: datetime
    ) -> Reconciliation:
        reconciliation = Reconciliation(
            provider_id=provider_id,
            period=period,
            status="loading",
            lines=0,
            matched=0,
            amount_mismatch_count=0,
            only_provider_count=0,
            only_ledger_count=0,
            provider_total_nano_usd=0,
            ledger_total_nano_usd=0,
            created_by=actor,
            reason=reason,
            created_at=now,
        )
        session.add(reconciliation)
        await session.flush()
        return reconciliation

    async def stage_lines(self, session: AsyncSession, reconciliation_id: int, lines: Sequence[StatementLine]) -> None:
        await _sql(session).stage_lines(session, reconciliation_id, lines)

    async def analyze_staged(self, session: AsyncSession) -> None:
        await _sql(session).analyze_staged(session)

    async def staged_lines_of(
        self, session: AsyncSession, reconciliation_id: int, request_ids: Sequence[str]
    ) -> dict[str, int]:
        """Request id → statement line of those of ``request_ids`` already staged."""
        found: dict[str, int] = {}
        for part in chunks(request_ids, 1_000):
            rows = await session.execute(
                select(ReconciliationLine.request_id, ReconciliationLine.line).where(
                    ReconciliationLine.reconciliation_id == reconciliation_id,
                    ReconciliationLine.request_id.in_(part),
                )
            )
            found.update({request_id: int(line) for request_id, line in rows})
        return found

    async def store_discrepancies(
        self, session: AsyncSession, *, reconciliation_id: int, provider_id: str, period: str
    ) -> None:
        """Every discrepancy of the staged statement against the ledger side, as items: one INSERT … SELECT a kind."""
        for statement in discrepancy_statements(reconciliation_id, provider_id=provider_id, period=period):
            await session.execute(insert(ReconciliationItem).from_select(_ITEM_COLUMNS, statement))

    async def ledger_side_totals(self, session: AsyncSession, *, provider_id: str, period: str) -> tuple[int, int]:
        """(requests, sum of posted costs) of the ledger side."""
        statement = _ledger_side(
            select(func.count(), func.coalesce(func.sum(_posted_cost()), 0)).select_from(UsageRecord),
            provider_id=provider_id,
            period=period,
        )
        count, total = (await session.execute(statement)).one()
        return int(count), int(total)

    async def discrepancy_counts(self, session: AsyncSession, reconciliation_id: int) -> dict[str, int]:
        rows = await session.execute(
            select(ReconciliationItem.kind, func.count())
            .where(ReconciliationItem.reconciliation_id == reconciliation_id)
            .group_by(ReconciliationItem.kind)
        )
        return {kind: int(count) for kind, count in rows}

    async def discrepancies(
        self, session: AsyncSession, *, reconciliation_id: int, kind: str, limit: int
    ) -> list[tuple[str, int | None, int | None]]:
        """The first ``limit`` items of ``kind`` by request id: (request id, ledger amount, provider amount)."""
        rows = await session.execute(
            select(
                ReconciliationItem.request_id, ReconciliationItem.ledger_nano_usd, ReconciliationItem.provider_nano_usd
            )
            .where(ReconciliationItem.reconciliation_id == reconciliation_id, ReconciliationItem.kind == kind)
            .order_by(ReconciliationItem.request_id)
            .limit(limit)
        )
        return [(request_id, ledger, provider) for request_id, ledger, provider in rows]

    async def latest_complete_id(self, session: AsyncSession, *, provider_id: str, period: str) -> int | None:
        return await session.scalar(
            select(func.max(Reconciliation.id)).where(
                Reconciliation.period == period,
                Reconciliation.provider_id == provider_id,
                Reconciliation.status == "complete",
            )
        )

    async def get(self, session: AsyncSession, reconciliation_id: int) -> Reconciliation | None:
        return await session.get(Reconciliation, reconciliation_id)

    async def drop_staged_lines(self, session: AsyncSession, reconciliation_id: int) -> None:
        await session.execute(
            delete(ReconciliationLine).where(ReconciliationLine.reconciliation_id == reconciliation_id)
        )

    async def discard(self, session: AsyncSession, reconciliation_ids: Sequence[int]) -> None:
        """Delete loading reconciliations with their staged lines and any items."""
        if not reconciliation_ids:
            return
        ids = list(reconciliation_ids)
        await session.execute(delete(ReconciliationLine).where(ReconciliationLine.reconciliation_id.in_(ids)))
        await session.execute(delete(ReconciliationItem).where(ReconciliationItem.reconciliation_id.in_(ids)))
        await session.execute(
            delete(Reconciliation).where(Reconciliation.id.in_(ids), Reconciliation.status == "loading")
        )

    async def stale_loading(self, session: AsyncSession, *, started_before: datetime) -> list[int]:
        """Loading reconciliations started before ``started_before``: uploads that died without cleaning up."""
        rows = await session.scalars(
            select(Reconciliation.id).where(
                Reconciliation.status == "loading", Reconciliation.created_at < started_before
            )
        )
        return list(rows)

    async def list_complete(
        self, session: AsyncSession, *, period: str, provider_id: str | None, limit: int
    ) -> list[Reconciliation]:
        """A period's complete reconciliations, by provider, newest first within each."""
        statement = select(Reconciliation).where(Reconciliation.period == period, Reconciliation.status == "complete")
        if provider_id is not None:
            statement = statement.where(Reconciliation.provider_id == provider_id)
        statement = statement.order_by(Reconciliation.provider_id, Reconciliation.id.desc()).limit(limit)
        return list(await session.scalars(statement))


def export_statement(period: str) -> Select[*tuple[Any, ...]]:
    """The ``reconciliation`` finance report: the items of the latest complete reconciliation of each provider.

    Its first column is the item id, which orders and pages it (``metering.exports.repository``).
    """
    latest = (
        select(func.max(Reconciliation.id))
        .where(Reconciliation.period == period, Reconciliation.status == "complete")
        .group_by(Reconciliation.provider_id)
    )
    return (
        select(
            ReconciliationItem.id,
            Reconciliation.id,
            Reconciliation.provider_id,
            Reconciliation.period,
            ReconciliationItem.kind,
            ReconciliationItem.request_id,
            ReconciliationItem.ledger_nano_usd,
            ReconciliationItem.provider_nano_usd,
            Reconciliation.created_at,
        )
        .join(Reconciliation, Reconciliation.id == ReconciliationItem.reconciliation_id)
        .where(ReconciliationItem.reconciliation_id.in_(latest))
    )


reconciliation_repository = ReconciliationRepository()
