"""Invoicing's locks on SQLite: none to take, the embedded default being one process whose transactions serialize."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

if TYPE_CHECKING:
    from metering.invoicing.repository import InvoicingSql


class SqliteInvoicingSql:
    async def lock_close_order(self, session: AsyncSession) -> None:
        """Nothing to lock: the BEGIN IMMEDIATE transaction already holds SQLite's one write lock."""

    async def try_sync_run_lock(self, connection: AsyncConnection) -> bool:
        """Always granted: one writer process is the embedded default; PostgreSQL deployments may run many workers."""
        return True

    async def release_sync_run_lock(self, connection: AsyncConnection) -> None:
        """Nothing was taken."""


SQLITE_INVOICING_SQL: InvoicingSql = SqliteInvoicingSql()
