"""Accounts SQL on SQLite: the names of a batch travel as one JSON document (``json_each``)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.models import Account

if TYPE_CHECKING:
    from metering.accounts.repository import AccountSql

# ``WHERE true`` keeps SQLite from reading ON CONFLICT as a join constraint of the SELECT.
_INSERT_USERS = text(
    "INSERT INTO accounts (name, kind, plan, seats, status, created_at, updated_at) "
    "SELECT value, 'user', :plan, 1, 'active', :now, :now FROM json_each(:names) WHERE true "
    "ON CONFLICT DO NOTHING"
).bindparams(bindparam("now", type_=Account.__table__.c.created_at.type))


class SqliteAccountSql:
    async def insert_missing_users(self, session: AsyncSession, names: list[str], *, plan: str, now: datetime) -> None:
        values = {"names": orjson.dumps(names).decode(), "plan": plan, "now": now}
        await session.execute(_INSERT_USERS, values)


SQLITE_ACCOUNT_SQL: AccountSql = SqliteAccountSql()
