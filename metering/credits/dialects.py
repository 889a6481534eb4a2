"""The close-order lock a credit decision reads periods under: shared on PostgreSQL, needless on SQLite."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.invoicing.repository_pg import CLOSE_ORDER_KEY

if TYPE_CHECKING:
    from metering.credits.repository import CreditsSql


class SqliteCreditsSql:
    async def lock_close_order_shared(self, session: AsyncSession) -> None:
        """Nothing to lock: the BEGIN IMMEDIATE transaction already holds SQLite's one write lock."""


class PostgresCreditsSql:
    async def lock_close_order_shared(self, session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_advisory_xact_lock_shared(:key)"), {"key": CLOSE_ORDER_KEY})


SQLITE_CREDITS_SQL: CreditsSql = SqliteCreditsSql()
POSTGRES_CREDITS_SQL: CreditsSql = PostgresCreditsSql()
