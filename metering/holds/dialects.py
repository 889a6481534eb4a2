"""The holds' row locks: taken on PostgreSQL, unnecessary on SQLite, whose one writer already excludes the others."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import Result, Select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import Hold

if TYPE_CHECKING:
    from metering.holds.repository import HoldsSql


class SqliteHoldsSql:
    async def lock_held(self, session: AsyncSession, statement: Select[*tuple[Any, ...]]) -> Result[*tuple[Any, ...]]:
        """No row lock: the BEGIN IMMEDIATE transaction already holds SQLite's one write lock."""
        return await session.execute(statement)

    async def lock_expired(
        self, session: AsyncSession, statement: Select[*tuple[Any, ...]]
    ) -> Result[*tuple[Any, ...]]:
        """No row lock: the BEGIN IMMEDIATE transaction already holds SQLite's one write lock."""
        return await session.execute(statement)


class PostgresHoldsSql:
    async def lock_held(self, session: AsyncSession, statement: Select[*tuple[Any, ...]]) -> Result[*tuple[Any, ...]]:
        return await session.execute(statement.order_by(Hold.id).with_for_update(of=Hold))

    async def lock_expired(
        self, session: AsyncSession, statement: Select[*tuple[Any, ...]]
    ) -> Result[*tuple[Any, ...]]:
        return await session.execute(statement.with_for_update(of=Hold))


SQLITE_HOLDS_SQL: HoldsSql = SqliteHoldsSql()
POSTGRES_HOLDS_SQL: HoldsSql = PostgresHoldsSql()
