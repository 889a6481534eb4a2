"""Invoicing's locks on PostgreSQL, where closes, postings and Stripe sync runs may come from many processes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

if TYPE_CHECKING:
    from metering.invoicing.repository import InvoicingSql

# PostgreSQL advisory-lock key held by a Stripe sync run for its whole duration.
STRIPE_SYNC_LOCK_KEY = 7_100_000_001


# The PostgreSQL advisory lock every close holds exclusively and every posting shared, while it
# decides which period a cost lands in: a period closes, with every earlier one, between postings.
CLOSE_ORDER_KEY = 7_000_000_000


async def try_sync_lock(connection: AsyncConnection) -> bool:
    """Take the sync run's session-level advisory lock on ``connection``, without waiting.

    Tied to the connection, so a killed run releases it with its connection.
    """
    return bool(await connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": STRIPE_SYNC_LOCK_KEY}))


async def release_sync_lock(connection: AsyncConnection) -> None:
    await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": STRIPE_SYNC_LOCK_KEY})


class PostgresInvoicingSql:
    async def lock_close_order(self, session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CLOSE_ORDER_KEY})

    async def try_sync_run_lock(self, connection: AsyncConnection) -> bool:
        return await try_sync_lock(connection)

    async def release_sync_run_lock(self, connection: AsyncConnection) -> None:
        await release_sync_lock(connection)


POSTGRES_INVOICING_SQL: InvoicingSql = PostgresInvoicingSql()
