"""The read-only SQL of ``metering verify``: sums the caches and postings are checked against.

Each query aggregates in the database and returns only what disagrees (or small per-group
sums), so a verify of a large ledger streams little to Python.

A month ``metering archive`` moved to Parquet is checked through the sums it recorded then
(``archived_ledger_sums``, ``archived_account_sums``), never through its rows: from the moment
it is recorded its rows are left out (``_live``), whether or not they are gone yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from metering.ledger import codes
from metering.ledger.repository import select_entries
from metering.limits.service import SPENDING_LIMIT_ACTION
from metering.models import (
    Account,
    AccountPeriod,
    ArchivedAccountSum,
    ArchivedLedgerSum,
    ArchivedPeriod,
    AuditEvent,
    Hold,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Provider,
    UsageRecord,
)

LIMIT = 50  # breaches listed per check; the count is always exact


def _live(period: ColumnElement[str] | InstrumentedAttribute[str]) -> ColumnElement[bool]:
    """Rows of a month not archived (an archived month is checked against its recorded sums)."""
    return period.not_in(select(ArchivedPeriod.period))


class VerifyRepository:
    async def unbalanced_transactions(self, session: AsyncSession) -> list[tuple[str, int]]:
        total = func.sum(LedgerEntry.amount_nano_usd)
        rows = await session.execute(
            select(LedgerTransaction.idempotency_key, total)
            .join(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
            .where(_live(LedgerTransaction.period))
            .group_by(LedgerTransaction.id, LedgerTransaction.idempotency_key)
            .having(total != 0)
            .order_by(LedgerTransaction.id)
        )
        return [(key, int(amount)) for key, amount in rows]

    async def balance_mismatches(self, session: AsyncSession) -> list[tuple[str, int, int]]:
        """(code, cached balance, sum of entries) where they differ; an archived month's entries count
        as the sums recorded when it was archived."""
        live = (
            select(LedgerEntry.ledger_account_id.label("id"), func.sum(LedgerEntry.amount_nano_usd).label("total"))
            .where(_live(LedgerEntry.period))
            .group_by(LedgerEntry.ledger_account_id)
            .subquery()
        )
        archived = (
            select(
                ArchivedLedgerSum.ledger_account_id.label("id"),
                func.sum(ArchivedLedgerSum.amount_nano_usd).label("total"),
            )
            .group_by(ArchivedLedgerSum.ledger_account_id)
            .subquery()
        )
        total = func.coalesce(live.c.total, 0) + func.coalesce(archived.c.total, 0)
        rows = await session.execute(
            select(LedgerAccount.code, LedgerAccount.balance_nano_usd, total)
            .outerjoin(live, live.c.id == LedgerAccount.id)
            .outerjoin(archived, archived.c.id == LedgerAccount.id)
            .where(LedgerAccount.balance_nano_usd != total)
            .order_by(LedgerAccount.code)
        )
        return [(code, int(cached), int(summed)) for code, cached, summed in rows]

    async def extra_credit_balances(self, session: AsyncSession) -> dict[tuple[str, str], int]:
        """Per (account, source "grant" | "prepaid"): what its grant ledger accounts hold (minus their balance)."""
        kinds = {codes.GRANTED_CREDITS: "grant", codes.PREPAID_CREDITS: "prepaid"}
        rows = await session.execute(
            select(LedgerAccount.owner, LedgerAccount.kind, func.sum(LedgerAccount.balance_nano_usd))
            .where(LedgerAccount.kind.in_(sorted(kinds)))
            .group_by(LedgerAccount.owner, LedgerAccount.kind)
        )
        return {(str(owner), kinds[kind]): -int(total or 0) for owner, kind, total in rows}

    async def priced_without_cost_transaction(self, session: AsyncSession) -> list[int]:
        rows = await session.scalars(
            select(UsageRecord.id)
            .outerjoin(LedgerTransaction, LedgerTransaction.usage_record_id == UsageRecord.id)
            .where(UsageRecord.status == "priced", LedgerTransaction.id.is_(None), _live(UsageRecord.period))
            .order_by(UsageRecord.id)
        )
        return list(rows)

    async def cost_transactions_of_unpriced(self, session: AsyncSession) -> list[tuple[int, str]]:
        """Cost transactions whose record is not ``priced``: money moved for a request that has no price."""
        rows = await session.execute(
            select(UsageRecord.id, UsageRecord.status)
            .join(LedgerTransaction, LedgerTransaction.usage_record_id == UsageRecord.id)
            .where(UsageRecord.status != "priced", _live(UsageRecord.period))
            .order_by(UsageRecord.id)
        )
        return [(id_, status) for id_, status in rows]

    async def cost_mismatches(self, session: AsyncSession) -> list[tuple[int, int, int]]:
        """(record, its cost, what its transaction owes the provider) where they differ."""
        owed = -func.coalesce(
            func.sum(case((LedgerAccount.kind == codes.PAYABLE, LedgerEntry.amount_nano_usd), else_=0)), 0
        )
        rows = await session.execute(
            select(UsageRecord.id, UsageRecord.cost_nano_usd, owed)
            .join(LedgerTransaction, LedgerTransaction.usage_record_id == UsageRecord.id)
            .outerjoin(LedgerEntry, LedgerEntry.transaction_id == LedgerTransaction.id)
            .outerjoin(LedgerAccount, LedgerAccount.id == LedgerEntry.ledger_account_id)
            .where(UsageRecord.status == "priced", _live(UsageRecord.period))
            .group_by(UsageRecord.id, UsageRecord.cost_nano_usd)
            .having(UsageRecord.cost_nano_usd != owed)
            .order_by(UsageRecord.id)
        )
        return [(id_, int(cost), int(paid)) for id_, cost, paid in rows]

    async def duplicate_requests(self, session: AsyncSession) -> list[tuple[str, str, int]]:
        """(provider, request_id, records) stored more than once: a request that could be priced twice.

        SQLite's unique constraint and PostgreSQL's ``usage_request_keys`` forbid it; this reads the
        records themselves, whatever wrote them.
        """
        count = func.count()
        rows = await session.execute(
            select(UsageRecord.provider_id, UsageRecord.request_id, count)
            .group_by(UsageRecord.provider_id, UsageRecord.request_id)
            .having(count > 1)
            .order_by(UsageRecord.provider_id, UsageRecord.request_id)
        )
        return [(provider, request_id, int(n)) for provider, request_id, n in rows]

    async def ledger_sums_by_account_period(
        self, session: AsyncSession, *, period: str | None = None
    ) -> dict[tuple[str, str], dict[str, int]]:
        """Per (account, period): credits granted/used, payg and written-off as the ledger has them; of one
        ``period`` (the archive records them so), or of all."""
        is_grant = LedgerTransaction.kind == codes.GRANT
        is_cost = LedgerTransaction.kind.in_(codes.COST_KINDS)
        amount = LedgerEntry.amount_nano_usd

        def summed(condition: ColumnElement[bool]) -> ColumnElement[Any]:
            return func.coalesce(func.sum(case((condition, amount), else_=0)), 0)

        rows = await session.execute(
            select_entries(
                LedgerTransaction.account_name,
                LedgerTransaction.period,
                -summed(and_(is_grant, LedgerAccount.kind == codes.CREDITS)),
                summed(and_(is_cost, LedgerAccount.kind == codes.CREDITS)),
                summed(and_(is_cost, LedgerAccount.kind == codes.RECEIVABLE)),
                summed(and_(is_cost, LedgerAccount.kind == codes.WRITE_OFF)),
            )
            .where(
                LedgerTransaction.account_name.is_not(None),
                LedgerTransaction.kind.in_((codes.GRANT, *codes.COST_KINDS)),
                _live(LedgerTransaction.period),
                LedgerTransaction.period == period if period is not None else true(),
            )
            .group_by(LedgerTransaction.account_name, LedgerTransaction.period)
        )
        sums = {
            (account, period): {
                "credits_granted_nano_usd": int(granted),
                "credits_used_nano_usd": int(used),
                "payg_nano_usd": int(payg),
                "written_off_nano_usd": int(written_off),
            }
            for account, period, granted, used, payg, written_off in rows
        }
        # An archived month's sums, as they were computed from its entries when it was archived.
        archived_sums = select(ArchivedAccountSum)
        if period is not None:
            archived_sums = archived_sums.where(ArchivedAccountSum.period == period)
        for archived in await session.scalars(archived_sums):
            sums.setdefault((archived.account_name, archived.period), {}).update(
                {name: int(amount) for name, amount in archived.sums.items()}
            )
        return sums

    async def pending_estimates(self, session: AsyncSession) -> dict[tuple[str, str], tuple[int, int]]:
        """(account, period) → (pending estimates, the part of them for providers not credit-eligible)."""
        rows = await session.execute(
            select(
                UsageRecord.billing_account,
                UsageRecord.period,
                func.sum(UsageRecord.estimate_nano_usd),
                func.sum(case((Provider.credit_eligible.is_(False), UsageRecord.estimate_nano_usd), else_=0)),
            )
            .join(Provider, Provider.id == UsageRecord.provider_id)
            .where(UsageRecord.status == "pending")
            .group_by(UsageRecord.billing_account, UsageRecord.period)
        )
        return {(account, period): (int(total), int(payg_only)) for account, period, total, payg_only in rows}

    async def held_amounts(self, session: AsyncSession) -> dict[tuple[str, str], tuple[int, int]]:
        """(account, period) → (held, the part of it for providers not credit-eligible)."""
        rows = await session.execute(
            select(
                Hold.account_name,
                Hold.period,
                func.sum(Hold.amount_nano_usd),
                func.sum(case((Provider.credit_eligible.is_(False), Hold.amount_nano_usd), else_=0)),
            )
            .join(Provider, Provider.id == Hold.provider_id)
            .where(Hold.status == "held")
            .group_by(Hold.account_name, Hold.period)
        )
        return {(account, period): (int(total), int(payg_only)) for account, period, total, payg_only in rows}

    async def account_periods(self, session: AsyncSession) -> list[AccountPeriod]:
        return list(
            await session.scalars(select(AccountPeriod).order_by(AccountPeriod.period, AccountPeriod.account_name))
        )

    async def over_limit(self, session: AsyncSession) -> list[tuple[str, str, int, int]]:
        """(account, period, payg, limit) of periods whose pay-as-you-go exceeds the account's cap."""
        rows = await session.execute(
            select(
                AccountPeriod.account_name,
                AccountPeriod.period,
                AccountPeriod.payg_nano_usd,
                Account.spending_limit_nano_usd,
            )
            .join(Account, Account.name == AccountPeriod.account_name)
            .where(
                Account.spending_limit_nano_usd.is_not(None),
                AccountPeriod.payg_nano_usd > Account.spending_limit_nano_usd,
                # Judged before it was archived (the archive runs verify first); its postings are gone.
                _live(AccountPeriod.period),
            )
            .order_by(AccountPeriod.period, AccountPeriod.account_name)
        )
        # The limit is never None: the WHERE above keeps only accounts that have one.
        return [(a, p, int(payg), int(limit)) for a, p, payg, limit in rows if limit is not None]

    async def limit_set_at(self, session: AsyncSession, account: str) -> datetime | None:
        """When the account's spending limit was last set (from the audit trail), if ever."""
        return await session.scalar(
            select(func.max(AuditEvent.created_at)).where(
                AuditEvent.account_name == account, AuditEvent.action == SPENDING_LIMIT_ACTION
            )
        )

    async def payg_postings(self, session: AsyncSession, *, account: str, period: str) -> list[PaygPosting]:
        """Cost postings charging ``account``'s receivable of ``period``, in posting order."""
        rows = await session.execute(
            select_entries(
                LedgerTransaction.kind,
                LedgerTransaction.created_at,
                LedgerEntry.amount_nano_usd,
                UsageRecord.started_at,
                LedgerTransaction.original_period,
                UsageRecord.cost_nano_usd,
                UsageRecord.estimate_nano_usd,
                Hold.created_at,
                usage_records=True,
            )
            .outerjoin(
                Hold,
                (Hold.id == UsageRecord.hold_id)
                & (Hold.usage_record_id == UsageRecord.id)
                & (Hold.status == "attached"),
            )
            .where(
                LedgerAccount.code == codes.receivable(account, period),
                LedgerTransaction.kind.in_(codes.COST_KINDS),
            )
            .order_by(LedgerTransaction.id)
        )
        return [
            PaygPosting(kind, created, int(amount), started, original, cost, estimate or 0, held_at)
            for kind, created, amount, started, original, cost, estimate, held_at in rows
        ]


@dataclass(frozen=True, slots=True)
class PaygPosting:
    """A cost posting's pay-as-you-go amount and what verify needs to judge it against a limit."""

    kind: str
    posted_at: datetime
    amount_nano_usd: int
    started_at: datetime | None
    original_period: str | None
    cost_nano_usd: int | None
    estimate_nano_usd: int
    # When the request's authorize hold was taken, if one was attached to it: its estimate was
    # counted against the limit from then on.
    held_at: datetime | None

    @property
    def authorized(self) -> bool:
        return self.held_at is not None

    @property
    def estimate_error(self) -> int:
        """How much of this charge the limit check could not have known of when it admitted the request."""
        if not self.authorized or self.cost_nano_usd is None:
            return self.amount_nano_usd
        return min(self.amount_nano_usd, max(0, self.cost_nano_usd - self.estimate_nano_usd))


verify_repository = VerifyRepository()
