"""SQL of adjustments and of the ledger accounts they are posted to (``adjustment:<account>:<period>``)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import upsert_insert
from metering.ledger import codes
from metering.ledger.repository import select_entries
from metering.models import Account, Adjustment, LedgerAccount, LedgerEntry, LedgerTransaction, Period


@dataclass(frozen=True, slots=True)
class OwedUnderPlan:
    """An adjustment owed by an account (> 0) posted while its plan had no pay-as-you-go."""

    account_name: str
    period: str
    plan: str | None
    amount_nano_usd: int
    idempotency_key: str


class AdjustmentRepository:
    async def by_key(self, session: AsyncSession, *, account: str, idempotency_key: str) -> Adjustment | None:
        return await session.scalar(
            select(Adjustment).where(Adjustment.account_name == account, Adjustment.idempotency_key == idempotency_key)
        )

    async def insert(self, session: AsyncSession, values: dict[str, Any]) -> Adjustment | None:
        """Insert one adjustment; None when its account already has one with its idempotency key.

        ON CONFLICT DO NOTHING rather than a plain insert: two requests with one key at once both
        get to look up the winner (PostgreSQL makes the second wait for the first to commit).
        """
        adjustment_id = await session.scalar(
            upsert_insert(session, Adjustment)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["account_name", "idempotency_key"])
            .returning(Adjustment.id)
        )
        return None if adjustment_id is None else await session.get(Adjustment, adjustment_id)

    async def latest_closed_period(self, session: AsyncSession) -> str | None:
        """The latest closed period; read under the close-order lock (``credits_repository.closed_periods``)."""
        return await session.scalar(select(func.max(Period.period)).where(Period.status == "closed"))

    async def posted_to(self, session: AsyncSession, *, account: str, period: str) -> int:
        """The sum of the account's adjustments posted to ``period``, carries into it included."""
        total = await session.scalar(
            select(func.coalesce(func.sum(Adjustment.amount_nano_usd), 0)).where(
                Adjustment.account_name == account, Adjustment.period == period
            )
        )
        return int(total or 0)

    async def ledger_balances(self, session: AsyncSession, period: str) -> dict[str, int]:
        """Per account, the sum of the entries of its ``adjustment:<account>:<period>`` (what the period's
        invoice is adjusted by); accounts whose entries sum to zero are left out."""
        total = func.sum(LedgerEntry.amount_nano_usd)
        rows = await session.execute(
            select_entries(LedgerAccount.owner, total)
            .where(LedgerAccount.kind == codes.ADJUSTMENT, LedgerAccount.period == period)
            .group_by(LedgerAccount.owner)
            .having(total != 0)
        )
        return {str(owner): int(amount) for owner, amount in rows}

    async def request_ids(self, session: AsyncSession, *, account: str, period: str) -> list[str]:
        """The request ids the account's adjustments posted to ``period`` name, distinct, sorted."""
        rows = await session.scalars(
            select(Adjustment.request_ids).where(
                Adjustment.account_name == account, Adjustment.period == period, Adjustment.request_ids.is_not(None)
            )
        )
        return sorted({str(request_id) for ids in rows if ids for request_id in ids})

    async def request_counts(self, session: AsyncSession, period: str) -> dict[str, int]:
        """Per account, how many distinct request ids its adjustments posted to ``period`` name."""
        rows = await session.execute(
            select(Adjustment.account_name, Adjustment.request_ids).where(
                Adjustment.period == period, Adjustment.request_ids.is_not(None)
            )
        )
        named: dict[str, set[str]] = {}
        for account, ids in rows:
            named.setdefault(account, set()).update(str(request_id) for request_id in ids or [])
        return {account: len(ids) for account, ids in named.items()}

    async def sums_by_account_period(self, session: AsyncSession) -> dict[tuple[str, str], int]:
        """``metering verify``: per (account, period), what its ledger account must hold: the adjustments posted
        to the period, less the credit carried out of it (a carry's ``corrects_period``)."""
        found: dict[tuple[str, str], int] = {}
        posted = await session.execute(
            select(Adjustment.account_name, Adjustment.period, func.sum(Adjustment.amount_nano_usd)).group_by(
                Adjustment.account_name, Adjustment.period
            )
        )
        for account, period, amount in posted:
            found[(account, period)] = int(amount)
        carried_out = await session.execute(
            select(Adjustment.account_name, Adjustment.corrects_period, func.sum(Adjustment.amount_nano_usd))
            .where(Adjustment.kind == "carry")
            .group_by(Adjustment.account_name, Adjustment.corrects_period)
        )
        for account, period, amount in carried_out:
            found[(account, period)] = found.get((account, period), 0) - int(amount)
        return {key: amount for key, amount in found.items() if amount}

    async def all_ledger_balances(self, session: AsyncSession) -> dict[tuple[str, str], int]:
        """``metering verify``: every non-zero ``adjustment:<account>:<period>`` balance."""
        rows = await session.execute(
            select(LedgerAccount.owner, LedgerAccount.period, LedgerAccount.balance_nano_usd).where(
                LedgerAccount.kind == codes.ADJUSTMENT, LedgerAccount.balance_nano_usd != 0
            )
        )
        return {(str(owner), period): int(balance) for owner, period, balance in rows}

    async def owed_under_plans_without_payg(
        self, session: AsyncSession, payg_plans: Collection[str], *, period: str | None = None
    ) -> list[OwedUnderPlan]:
        """Adjustments owed by the account (> 0), posted while its plan (as the posting names it, else the
        account's plan of today) had no pay-as-you-go; of one period, or of all. Carries move credit and
        are left out."""
        plan = func.coalesce(LedgerTransaction.plan, Account.plan)
        statement = (
            select_entries(
                LedgerAccount.owner,
                LedgerAccount.period,
                plan,
                LedgerEntry.amount_nano_usd,
                LedgerTransaction.idempotency_key,
            )
            .outerjoin(Account, Account.name == LedgerAccount.owner)
            .where(
                LedgerTransaction.kind == codes.ACCOUNT_ADJUSTMENT,
                LedgerAccount.kind == codes.ADJUSTMENT,
                LedgerEntry.amount_nano_usd > 0,
                or_(plan.is_(None), plan.not_in(list(payg_plans))),
            )
            .order_by(LedgerAccount.owner, LedgerTransaction.id)
        )
        if period is not None:
            statement = statement.where(LedgerAccount.period == period)
        rows = await session.execute(statement)
        return [OwedUnderPlan(str(owner), p, name, int(amount), key) for owner, p, name, amount, key in rows]


adjustment_repository = AdjustmentRepository()
