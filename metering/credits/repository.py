"""SQL of period lifecycle lookups credits depend on: which periods count as closed, and the accounts to grant."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.credits.dialects import POSTGRES_CREDITS_SQL, SQLITE_CREDITS_SQL
from metering.db import by_dialect
from metering.models import Account, Period


class CreditsSql(Protocol):
    """The lock credits read closed periods under, which SQLite's single writer makes unnecessary."""

    async def lock_close_order_shared(self, session: AsyncSession) -> None:
        """Hold the close-order lock shared until the transaction ends: no close can run meanwhile."""
        ...


def _sql(session: AsyncSession) -> CreditsSql:
    return by_dialect(session, sqlite=SQLITE_CREDITS_SQL, postgresql=POSTGRES_CREDITS_SQL)


class CreditsRepository:
    async def closed_periods(self, session: AsyncSession, periods: Iterable[str]) -> set[str]:
        """Which of ``periods`` count as closed: closed, or earlier than a closed period (periods close
        in order, so a month before a closed one takes no more credits or costs).

        PostgreSQL: read under the close lock taken shared (``CLOSE_ORDER_KEY``); a close holds it
        exclusively, so a posting that decides where to land cannot interleave with any close (it
        waits, then sees the period closed). SQLite: the transaction already holds the one write lock.
        """
        periods = set(periods)
        if not periods:
            return set()
        await _sql(session).lock_close_order_shared(session)
        latest = await session.scalar(select(func.max(Period.period)).where(Period.status == "closed"))
        return {period for period in periods if latest is not None and period <= latest}

    async def account_names_after(self, session: AsyncSession, *, after: str | None, limit: int) -> list[str]:
        """Account names in name order, one page at a time (the grant job walks every account)."""
        statement = select(Account.name).order_by(Account.name).limit(limit)
        if after is not None:
            statement = statement.where(Account.name > after)
        return list(await session.scalars(statement))


credits_repository = CreditsRepository()
