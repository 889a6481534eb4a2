"""Accounts SQL on PostgreSQL: the names of a batch travel as one array (``unnest``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import Account

if TYPE_CHECKING:
    from metering.accounts.repository import AccountSql

_INSERT_USERS = text(
    "INSERT INTO accounts (name, kind, plan, seats, status, created_at, updated_at) "
    "SELECT n, 'user', :plan, 1, 'active', :now, :now FROM unnest(CAST(:names AS varchar[])) AS n "
    "ON CONFLICT DO NOTHING"
).bindparams(bindparam("now", type_=Account.__table__.c.created_at.type))


class PostgresAccountSql:
    async def insert_missing_users(self, session: AsyncSession, names: list[str], *, plan: str, now: datetime) -> None:
        await session.execute(_INSERT_USERS, {"names": names, "plan": plan, "now": now})


POSTGRES_ACCOUNT_SQL: AccountSql = PostgresAccountSql()
