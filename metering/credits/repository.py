"""SQL of period lifecycle lookups credits depend on: which periods count as closed, and the accounts to grant."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import is_sqlite
from metering.invoicing.repository import CLOSE_ORDER_KEY
from metering.models import Account, Period


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
        if not is_sqlite(session):
            await session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": CLOSE_ORDER_KEY})
        latest = await session.scalar(select(func.max(Period.period)).where(Period.status == "closed"))
        return {period for period in periods if latest is not None and period <= latest}

    async def account_names_after(self, session: AsyncSession, *, after: str | None, limit: int) -> list[str]:
        """Account names in name order, one page at a time (the grant job walks every account)."""
        statement = select(Account.name).order_by(Account.name).limit(limit)
        if after is not None:
            statement = statement.where(Account.name > after)
        return list(await session.scalars(statement))


credits_repository = CreditsRepository()
