"""SQL of the finance reports, read in batches of constant size.

PostgreSQL: one server-side cursor (``AsyncSession.stream`` with ``yield_per``) in one
transaction, so a report is one consistent snapshot. SQLite: every transaction here is
BEGIN IMMEDIATE (the writer lock), so a long cursor would stop ingest for the whole
export; the row-level reports are read instead as keyset pages, each its own short
transaction. The ledger is append-only, so pages by ascending id miss nothing older.

A multi-transaction entry point (the streamed export): it opens its own transactions, since
a report is read while it streams, after the request that asked for it has returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import ColumnElement, Select, case, func, select
from sqlalchemy.orm import InstrumentedAttribute, aliased

from metering.analytics.drift import drift_export_row
from metering.analytics.drift_repository import drift_statement
from metering.db import Database
from metering.exports.dialects import postgres_export_reads, sqlite_export_reads
from metering.ledger import codes
from metering.ledger.repository import select_entries
from metering.models import LedgerAccount, LedgerEntry, LedgerTransaction, ReconciliationItem, UsageRecord
from metering.reconciliation.repository import export_statement as reconciliation_statement

if TYPE_CHECKING:
    # A report's SELECT, and the id column that orders and pages it (None: a summary, read in one go).
    ReportQuery = tuple[Select[*tuple[Any, ...]], InstrumentedAttribute[int] | None]

BATCH_ROWS = 10_000
UNPRICED_STATUSES = ("unpriced", "quarantined")


def _sum(expression: ColumnElement[Any] | InstrumentedAttribute[Any]) -> ColumnElement[Any]:
    return func.coalesce(func.sum(expression), 0)


def _ledger(period: str) -> ReportQuery:
    # With the provider's request ID, so an invoice line traces to the requests behind it.
    statement = select_entries(
        LedgerEntry.id,
        LedgerTransaction.id,
        LedgerTransaction.kind,
        LedgerTransaction.idempotency_key,
        LedgerTransaction.account_name,
        LedgerTransaction.provider_id,
        LedgerTransaction.period,
        LedgerTransaction.original_period,
        LedgerTransaction.usage_record_id,
        UsageRecord.request_id,
        LedgerTransaction.memo,
        LedgerTransaction.created_at,
        LedgerAccount.code,
        LedgerAccount.kind,
        LedgerAccount.owner,
        LedgerEntry.amount_nano_usd,
        usage_records=True,
    ).where(LedgerTransaction.period == period, LedgerEntry.period == period)
    # The entries' own period (their transaction's, always) reads one partition of ledger_entries on PostgreSQL.
    return statement, LedgerEntry.id


def _owned_balances(kind: str, period: str, *measures: ColumnElement[Any]) -> Select[*tuple[Any, ...]]:
    return (
        select(LedgerAccount.owner, LedgerAccount.period, *measures)
        .select_from(LedgerEntry)
        .join(LedgerAccount, LedgerAccount.id == LedgerEntry.ledger_account_id)
        .where(LedgerAccount.kind == kind, LedgerAccount.period == period)
        .group_by(LedgerAccount.owner, LedgerAccount.period)
        .order_by(LedgerAccount.owner)
    )


def _provider_payables(period: str) -> ReportQuery:
    # A payable's credit balance (negative) is what is owed; the report shows it positive.
    return _owned_balances(codes.PAYABLE, period, -_sum(LedgerEntry.amount_nano_usd), func.count()), None


def _receivables(period: str) -> ReportQuery:
    return _owned_balances(codes.RECEIVABLE, period, _sum(LedgerEntry.amount_nano_usd), func.count()), None


def _credits(period: str) -> ReportQuery:
    transaction = aliased(LedgerTransaction)
    amount = LedgerEntry.amount_nano_usd
    is_grant = transaction.kind == codes.GRANT
    is_cost = transaction.kind.in_(codes.COST_KINDS)
    statement = _owned_balances(
        codes.CREDITS,
        period,
        -_sum(case((is_grant, amount), else_=0)),
        _sum(case((is_cost, amount), else_=0)),
        _sum(case((is_grant | is_cost, 0), else_=amount)),
        _sum(amount),
    ).join(transaction, transaction.id == LedgerEntry.transaction_id)
    return statement, None


def _unpriced(period: str) -> ReportQuery:
    statement = select(
        UsageRecord.id,
        UsageRecord.provider_id,
        UsageRecord.request_id,
        UsageRecord.user_name,
        UsageRecord.billing_account,
        UsageRecord.model,
        UsageRecord.started_at,
        UsageRecord.status,
        UsageRecord.quarantine_reason,
        UsageRecord.estimate_nano_usd,
        UsageRecord.attempts,
        UsageRecord.received_at,
    ).where(UsageRecord.period == period, UsageRecord.status.in_(UNPRICED_STATUSES))
    return statement, UsageRecord.id


def _drift(period: str) -> ReportQuery:
    return drift_statement(period=period), None


def _reconciliation(period: str) -> ReportQuery:
    return reconciliation_statement(period), ReconciliationItem.id


STATEMENTS: dict[str, Callable[[str], ReportQuery]] = {
    "ledger": _ledger,
    "provider-payables": _provider_payables,
    "receivables": _receivables,
    "credits": _credits,
    "unpriced": _unpriced,
    "drift": _drift,
    "reconciliation": _reconciliation,
}


def _normalize(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """PostgreSQL sums BIGINT into NUMERIC; the summary reports hold integers only."""
    return tuple(int(value) if type(value).__name__ == "Decimal" else value for value in row)


# Summary reports whose SQL rows need integer arithmetic before they are written.
FINISHERS: dict[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]] = {"drift": drift_export_row}


class ExportReads(Protocol):
    """What an engine offers a streamed report (``metering.exports.dialects``)."""

    # The server formats the rows itself (``metering.exports.copy_repository``).
    supports_copy: bool
    # Row-level reports are read as keyset pages, each its own short transaction, not in one cursor.
    pages_row_reports: bool


def export_reads(db: Database) -> ExportReads:
    return db.by_dialect(sqlite=sqlite_export_reads, postgresql=postgres_export_reads)


class ExportRepository:
    async def count_rows(self, db: Database, *, report: str, period: str) -> int:
        statement, _ = STATEMENTS[report](period)
        async with db.session_scope() as session:
            return int(await session.scalar(select(func.count()).select_from(statement.order_by(None).subquery())) or 0)

    async def batches(
        self, db: Database, *, report: str, period: str, batch_rows: int = BATCH_ROWS
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The report's rows in order, ``batch_rows`` at a time; memory stays one batch deep."""
        statement, key = STATEMENTS[report](period)
        if key is not None:
            statement = statement.order_by(key)
        if not export_reads(db).pages_row_reports or key is None:
            # Core, not ORM, results: the rows are plain tuples and the ORM's per-row work is skipped.
            normalize = FINISHERS.get(report, _normalize) if key is None else tuple
            async with db.session_scope() as session:
                connection = await session.connection()
                result = await connection.stream(statement.execution_options(yield_per=batch_rows))
                async for partition in result.partitions(batch_rows):
                    yield [normalize(row) for row in partition]
            return
        last = None
        while True:
            page = statement if last is None else statement.where(key > last)
            async with db.session_scope() as session:
                rows = (await session.execute(page.limit(batch_rows))).all()
            if not rows:
                return
            yield [tuple(row) for row in rows]
            last = rows[-1][0]


export_repository = ExportRepository()
