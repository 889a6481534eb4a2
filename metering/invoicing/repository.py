"""SQL of period close, invoices, Stripe sync state and Stripe webhook events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import and_, distinct, func, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from metering.db import Database, by_dialect, upsert_insert
from metering.errors import NotFound
from metering.invoicing.repository_pg import POSTGRES_INVOICING_SQL
from metering.invoicing.repository_sqlite import SQLITE_INVOICING_SQL
from metering.ledger import codes
from metering.ledger.repository import select_entries
from metering.models import (
    Account,
    AccountPeriod,
    Invoice,
    InvoiceLine,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Period,
    StripeEvent,
    UsageRecord,
)
from metering.sql import chunks

# Rows per multi-row statement: well under the bind-parameter limits of asyncpg and SQLite.
CHUNK = 1_000


@dataclass(frozen=True, slots=True)
class ReceivableLine:
    """The sum of one account's receivable entries of a period posted for one provider."""

    account_name: str
    provider_id: str | None
    amount_nano_usd: int
    requests_count: int


class InvoicingSql(Protocol):
    """Invoicing's locks, which PostgreSQL takes and SQLite's single writer makes unnecessary."""

    async def lock_close_order(self, session: AsyncSession) -> None:
        """Hold the close-order lock exclusively until the transaction ends (see ``lock_period``)."""
        ...

    async def try_sync_run_lock(self, connection: AsyncConnection) -> bool:
        """See ``InvoicingRepository.try_sync_run_lock``."""
        ...

    async def release_sync_run_lock(self, connection: AsyncConnection) -> None: ...


def _sql(session: AsyncSession) -> InvoicingSql:
    return by_dialect(session, sqlite=SQLITE_INVOICING_SQL, postgresql=POSTGRES_INVOICING_SQL)


class InvoicingRepository:
    # --- periods -------------------------------------------------------------------------

    async def lock_period(self, session: AsyncSession, period: str) -> Period:
        """The period's row, created ``open`` when missing, locked until the transaction ends.

        On PostgreSQL the close also holds the advisory lock ``CLOSE_ORDER_KEY`` exclusively:
        a posting that takes it shared before reading which periods are closed can never land
        in a period while it, or a later one, is being closed. SQLite needs neither: the
        transaction already holds the database's one write lock.
        """
        await _sql(session).lock_close_order(session)
        await session.execute(
            upsert_insert(session, Period).values(period=period, status="open").on_conflict_do_nothing()
        )
        return (
            await session.scalars(
                select(Period)
                .where(Period.period == period)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).one()

    async def open_periods_before(self, session: AsyncSession, period: str) -> list[str]:
        """Months before ``period`` with activity (an account period or a posting) not closed yet, oldest first."""
        closed = select(Period.period).where(Period.status == "closed")
        active = union(
            select(AccountPeriod.period).where(AccountPeriod.period < period),
            select(LedgerTransaction.period).where(LedgerTransaction.period < period),
            select(Period.period).where(Period.period < period),
        ).subquery()
        rows = await session.scalars(
            select(active.c.period).where(active.c.period.not_in(closed)).distinct().order_by(active.c.period)
        )
        return list(rows)

    async def latest_closed_after(self, session: AsyncSession, period: str) -> str | None:
        return await session.scalar(
            select(func.max(Period.period)).where(Period.status == "closed", Period.period > period)
        )

    # --- close ---------------------------------------------------------------------------

    async def receivable_lines(self, session: AsyncSession, period: str) -> list[ReceivableLine]:
        """Every account's receivable entries of ``period``, summed per provider of their transactions.

        ``requests_count`` counts the distinct usage records behind them, so each line is
        traceable to its request ids (see ``line_request_ids``).
        """
        rows = await session.execute(
            select_entries(
                LedgerAccount.owner,
                LedgerTransaction.provider_id,
                func.sum(LedgerEntry.amount_nano_usd),
                func.count(distinct(LedgerTransaction.usage_record_id)),
            )
            .where(LedgerAccount.kind == codes.RECEIVABLE, LedgerAccount.period == period)
            .group_by(LedgerAccount.owner, LedgerTransaction.provider_id)
        )
        return [
            ReceivableLine(
                account_name=owner, provider_id=provider, amount_nano_usd=int(amount), requests_count=int(count)
            )
            for owner, provider, amount, count in rows
        ]

    async def receivable_balances(self, session: AsyncSession, period: str) -> dict[str, int]:
        """The cached receivable balance of every account with one in ``period``."""
        rows = await session.execute(
            select(LedgerAccount.owner, LedgerAccount.balance_nano_usd).where(
                LedgerAccount.kind == codes.RECEIVABLE, LedgerAccount.period == period
            )
        )
        # Receivable accounts always have an owner.
        return {owner: int(balance) for owner, balance in rows if owner is not None}

    async def plans_of(self, session: AsyncSession, names: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for part in chunks(list(names), CHUNK):
            rows = await session.execute(select(Account.name, Account.plan).where(Account.name.in_(part)))
            found.update({name: plan for name, plan in rows})
        return found

    async def carried_in(self, session: AsyncSession, names: Sequence[str], period: str) -> dict[str, int]:
        """The remainder each account carries into ``period``: that of its latest earlier invoice."""
        earlier = aliased(Invoice)
        latest = (
            select(func.max(earlier.period))
            .where(earlier.account_name == Invoice.account_name, earlier.period < period)
            .scalar_subquery()
        )
        found: dict[str, int] = {}
        for part in chunks(list(names), CHUNK):
            rows = await session.execute(
                select(Invoice.account_name, Invoice.carried_out_nano_usd).where(
                    Invoice.account_name.in_(part), Invoice.period == latest
                )
            )
            found.update({name: int(carried) for name, carried in rows})
        return found

    async def insert_invoices(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
        """Insert invoice rows; returns ``{account_name: invoice id}``."""
        ids: dict[str, int] = {}
        for part in chunks(rows, CHUNK):
            result = await session.execute(
                upsert_insert(session, Invoice).values(list(part)).returning(Invoice.account_name, Invoice.id)
            )
            ids.update({name: id_ for name, id_ in result})
        return ids

    async def insert_lines(self, session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
        for part in chunks(rows, CHUNK):
            await session.execute(upsert_insert(session, InvoiceLine).values(list(part)))

    # --- reading invoices ----------------------------------------------------------------

    async def invoices_of(self, session: AsyncSession, account: str) -> list[Invoice]:
        return list(
            await session.scalars(
                select(Invoice).where(Invoice.account_name == account).order_by(Invoice.period.desc())
            )
        )

    async def lines_of(self, session: AsyncSession, invoice_ids: Sequence[int]) -> dict[int, list[InvoiceLine]]:
        found: dict[int, list[InvoiceLine]] = {id_: [] for id_ in invoice_ids}
        for part in chunks(list(invoice_ids), CHUNK):
            rows = await session.scalars(
                select(InvoiceLine).where(InvoiceLine.invoice_id.in_(part)).order_by(InvoiceLine.id)
            )
            for line in rows:
                found[line.invoice_id].append(line)
        return found

    async def line_with_invoice(self, session: AsyncSession, line_id: int) -> tuple[InvoiceLine, Invoice]:
        line = await session.get(InvoiceLine, line_id)
        if line is None:
            raise NotFound(f"no invoice line {line_id}")
        invoice = await session.get(Invoice, line.invoice_id)
        if invoice is None:  # the line's foreign key
            raise RuntimeError(f"invoice {line.invoice_id} of line {line_id} is missing")
        return line, invoice

    async def line_request_ids(self, session: AsyncSession, line_id: int) -> list[str]:
        """Request ids behind a line: its provider's cost postings to the invoice's receivable."""
        line, invoice = await self.line_with_invoice(session, line_id)
        provider_matches = (
            LedgerTransaction.provider_id.is_(None)
            if line.provider_id is None
            else LedgerTransaction.provider_id == line.provider_id
        )
        rows = await session.scalars(
            select_entries(UsageRecord.request_id)
            .join(UsageRecord, UsageRecord.id == LedgerTransaction.usage_record_id)
            .distinct()
            .where(LedgerAccount.code == codes.receivable(invoice.account_name, invoice.period), provider_matches)
            .order_by(UsageRecord.request_id)
        )
        return list(rows)

    # --- Stripe sync ---------------------------------------------------------------------

    async def try_sync_run_lock(self, database: Database, connection: AsyncConnection) -> bool:
        """Take the lock a Stripe sync run holds for its whole duration, without waiting; False when
        another run holds it.

        PostgreSQL: a session-level advisory lock on ``connection``, a connection of the run's own
        that no transaction keeps open meanwhile; a killed run releases it with its connection.
        SQLite: always granted, one writer process being the embedded default.
        """
        return await self._database_sql(database).try_sync_run_lock(connection)

    async def release_sync_run_lock(self, database: Database, connection: AsyncConnection) -> None:
        await self._database_sql(database).release_sync_run_lock(connection)

    @staticmethod
    def _database_sql(database: Database) -> InvoicingSql:
        return database.by_dialect(sqlite=SQLITE_INVOICING_SQL, postgresql=POSTGRES_INVOICING_SQL)

    async def invoices_to_sync(
        self, session: AsyncSession, *, after_id: int, limit: int
    ) -> list[tuple[Invoice, str | None]]:
        """Invoices not yet finalized in Stripe, by id from ``after_id``, with their account's Stripe customer."""
        rows = await session.execute(
            select(Invoice, Account.stripe_customer_id)
            .join(Account, Account.name == Invoice.account_name)
            .where(Invoice.status.in_(("pending", "sent")), Invoice.id > after_id)
            .order_by(Invoice.id)
            .limit(limit)
        )
        return [(invoice, customer) for invoice, customer in rows]

    async def set_stripe_customer(
        self, session: AsyncSession, *, account: str, customer_id: str, now: datetime
    ) -> None:
        await session.execute(
            update(Account)
            .where(Account.name == account, Account.stripe_customer_id.is_(None))
            .values(stripe_customer_id=customer_id, updated_at=now)
        )

    async def mark_line_sent(self, session: AsyncSession, *, line_id: int, item_id: str, now: datetime) -> None:
        await session.execute(
            update(InvoiceLine)
            .where(InvoiceLine.id == line_id, InvoiceLine.stripe_status == "pending")
            .values(stripe_status="sent", stripe_invoice_item_id=item_id, sent_at=now)
        )

    async def update_invoice(
        self, session: AsyncSession, invoice_id: int, *, now: datetime, from_status: str | None = None, **values: object
    ) -> None:
        """Update an invoice; with ``from_status``, only while it is still in that status (a webhook may be first)."""
        query = update(Invoice).where(Invoice.id == invoice_id)
        if from_status is not None:
            query = query.where(Invoice.status == from_status)
        await session.execute(query.values(updated_at=now, **values))

    # --- webhooks ------------------------------------------------------------------------

    async def account_by_customer(self, session: AsyncSession, customer_id: str) -> str | None:
        return await session.scalar(select(Account.name).where(Account.stripe_customer_id == customer_id))

    async def invoice_for_stripe(
        self, session: AsyncSession, *, stripe_invoice_id: str | None, local_id: int | None
    ) -> Invoice | None:
        """The local invoice a Stripe invoice stands for: by stored Stripe id, else by its metadata."""
        if stripe_invoice_id:
            found = await session.scalar(select(Invoice).where(Invoice.stripe_invoice_id == stripe_invoice_id))
            if found is not None:
                return found
        return await session.get(Invoice, local_id) if local_id is not None else None

    async def insert_event(self, session: AsyncSession, row: dict[str, Any]) -> bool:
        """Store an event by id; False when that id was already stored."""
        result = await session.execute(
            upsert_insert(session, StripeEvent).values(row).on_conflict_do_nothing().returning(StripeEvent.id)
        )
        return result.first() is not None

    async def latest_applied_created(self, session: AsyncSession, *, account: str, excluding: str) -> int | None:
        return await session.scalar(
            select(func.max(StripeEvent.event_created)).where(
                and_(StripeEvent.account_name == account, StripeEvent.outcome == "applied", StripeEvent.id != excluding)
            )
        )

    async def set_event_outcome(self, session: AsyncSession, event_id: str, outcome: str) -> None:
        await session.execute(update(StripeEvent).where(StripeEvent.id == event_id).values(outcome=outcome))

    async def has_failed_invoice(self, session: AsyncSession, *, account: str, excluding: int | None) -> bool:
        query = select(Invoice.id).where(Invoice.account_name == account, Invoice.status == "payment_failed")
        if excluding is not None:
            query = query.where(Invoice.id != excluding)
        return (await session.scalar(query.limit(1))) is not None


invoicing_repository = InvoicingRepository()
