"""SQL of credit grants and the spendable balance each account has of them.

Lock order, shared by every writer: an account's ``credit_balances`` row before its grants,
and both after any ``account_periods`` row the transaction locks (settling locks those first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import func, nulls_last, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import upsert_insert
from metering.models import CreditBalance, CreditGrant
from metering.sql import chunks


def _spending_order() -> tuple[Any, ...]:
    """Soonest expiry first (never-expiring last), then the oldest: the order grants pay in."""
    return (CreditGrant.account_name, nulls_last(CreditGrant.expires_period.asc()), CreditGrant.id)


class CreditGrantRepository:
    def add(self, session: AsyncSession, grant: CreditGrant) -> None:
        session.add(grant)

    async def get(self, session: AsyncSession, grant_id: int) -> CreditGrant | None:
        return await session.get(CreditGrant, grant_id)

    async def by_payment_intent(self, session: AsyncSession, payment_intent_id: str) -> CreditGrant | None:
        """The grant of a PaymentIntent, read without a lock (``lock_grants`` locks it, after its balance)."""
        return await session.scalar(select(CreditGrant).where(CreditGrant.payment_intent_id == payment_intent_id))

    async def of_account(self, session: AsyncSession, account: str, *, limit: int) -> list[CreditGrant]:
        statement = select(CreditGrant).where(CreditGrant.account_name == account).order_by(CreditGrant.id.desc())
        return list(await session.scalars(statement.limit(limit)))

    async def lock_balances(self, session: AsyncSession, names: Iterable[str]) -> dict[str, CreditBalance]:
        """The ``credit_balances`` rows of ``names`` that exist, locked, in name order."""
        found: dict[str, CreditBalance] = {}
        for part in chunks(sorted(set(names))):
            statement = (
                select(CreditBalance)
                .where(CreditBalance.account_name.in_(part))
                .order_by(CreditBalance.account_name)
                .with_for_update()
            )
            found.update({row.account_name: row for row in await session.scalars(statement)})
        return found

    async def lock_balance(self, session: AsyncSession, account: str) -> CreditBalance:
        """The account's row, created at 0 when missing, locked."""
        await session.execute(
            upsert_insert(session, CreditBalance)
            .values(account_name=account, available_nano_usd=0)
            .on_conflict_do_nothing(index_elements=["account_name"])
        )
        row = await session.scalar(select(CreditBalance).where(CreditBalance.account_name == account).with_for_update())
        if row is None:
            raise RuntimeError(f"credit balance of {account!r} missing right after it was created")
        await session.refresh(row)
        return row

    async def available(self, session: AsyncSession, names: Iterable[str]) -> dict[str, int]:
        """Spendable grants and prepaid credits per account (accounts with none are left out)."""
        found: dict[str, int] = {}
        for part in chunks(sorted(set(names))):
            rows = await session.execute(
                select(CreditBalance.account_name, CreditBalance.available_nano_usd).where(
                    CreditBalance.account_name.in_(part), CreditBalance.available_nano_usd > 0
                )
            )
            found.update({name: int(amount) for name, amount in rows})
        return found

    async def lock_spendable(self, session: AsyncSession, names: Iterable[str]) -> list[CreditGrant]:
        """The active grants with something left of ``names``' accounts, locked, in spending order."""
        grants: list[CreditGrant] = []
        for part in chunks(sorted(set(names))):
            statement = (
                select(CreditGrant)
                .where(
                    CreditGrant.account_name.in_(part),
                    CreditGrant.status == "active",
                    CreditGrant.remaining_nano_usd > 0,
                )
                .order_by(*_spending_order())
                .with_for_update()
            )
            grants.extend(await session.scalars(statement))
        return grants

    async def expired_ids(self, session: AsyncSession, *, before_period: str, limit: int) -> dict[int, str]:
        """Active grants whose last period is before ``before_period`` (id → account), at most ``limit``."""
        rows = await session.execute(
            select(CreditGrant.id, CreditGrant.account_name)
            .where(CreditGrant.status == "active", CreditGrant.expires_period < before_period)
            .order_by(CreditGrant.id)
            .limit(limit)
        )
        return {grant_id: account for grant_id, account in rows}

    async def lock_grants(self, session: AsyncSession, ids: Iterable[int]) -> list[CreditGrant]:
        """Grants by id, locked in id order (after their accounts' balances: the lock order)."""
        grants: list[CreditGrant] = []
        for part in chunks(sorted(set(ids))):
            statement = select(CreditGrant).where(CreditGrant.id.in_(part)).order_by(CreditGrant.id).with_for_update()
            grants.extend(await session.scalars(statement))
        for grant in grants:
            await session.refresh(grant)
        return grants

    async def add_to_balances(self, session: AsyncSession, deltas: Mapping[str, int]) -> None:
        for name, delta in sorted(deltas.items()):
            if delta:
                await session.execute(
                    update(CreditBalance)
                    .where(CreditBalance.account_name == name)
                    .values(available_nano_usd=CreditBalance.available_nano_usd + delta)
                )

    async def remaining_by_account(self, session: AsyncSession) -> dict[tuple[str, str], int]:
        """``metering verify``: per (account, source), the remaining amount of its active grants."""
        rows = await session.execute(
            select(CreditGrant.account_name, CreditGrant.source, func.sum(CreditGrant.remaining_nano_usd))
            .where(CreditGrant.status == "active")
            .group_by(CreditGrant.account_name, CreditGrant.source)
        )
        return {(name, source): int(total or 0) for name, source, total in rows}

    async def balances(self, session: AsyncSession) -> dict[str, int]:
        """``metering verify``: every cached balance."""
        rows = await session.execute(select(CreditBalance.account_name, CreditBalance.available_nano_usd))
        return {name: int(amount) for name, amount in rows}

    async def spendable_in(self, session: AsyncSession, account: str, period: str) -> dict[str, int]:
        """Per source, what is left of the account's active grants that pay in ``period`` (not expired by then)."""
        rows = await session.execute(
            select(CreditGrant.source, func.sum(CreditGrant.remaining_nano_usd))
            .where(
                CreditGrant.account_name == account,
                CreditGrant.status == "active",
                or_(CreditGrant.expires_period.is_(None), CreditGrant.expires_period >= period),
            )
            .group_by(CreditGrant.source)
        )
        return {source: int(total or 0) for source, total in rows}


credit_grant_repository = CreditGrantRepository()
