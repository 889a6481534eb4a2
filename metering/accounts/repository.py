"""SQL of accounts and memberships."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import orjson
from sqlalchemy import bindparam, delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from metering.db import dialect_name
from metering.models import Account, Membership
from metering.sql import rowcount

_USER_COLUMNS = "INSERT INTO accounts (name, kind, plan, seats, status, created_at, updated_at) "
# ``WHERE true`` keeps SQLite from reading ON CONFLICT as a join constraint of the SELECT.
_SQLITE_INSERT_USERS = text(
    _USER_COLUMNS + "SELECT value, 'user', :plan, 1, 'active', :now, :now FROM json_each(:names) WHERE true "
    "ON CONFLICT DO NOTHING"
).bindparams(bindparam("now", type_=Account.__table__.c.created_at.type))
_PG_INSERT_USERS = text(
    _USER_COLUMNS + "SELECT n, 'user', :plan, 1, 'active', :now, :now FROM unnest(CAST(:names AS varchar[])) AS n "
    "ON CONFLICT DO NOTHING"
).bindparams(bindparam("now", type_=Account.__table__.c.created_at.type))


class AccountRepository:
    async def get(self, session: AsyncSession, name: str) -> Account | None:
        return await session.get(Account, name)

    async def lock(self, session: AsyncSession, name: str) -> Account | None:
        """The account row, reloaded and locked until the transaction ends, so work on one account runs
        one at a time (PostgreSQL: ``FOR UPDATE``; SQLite: BEGIN IMMEDIATE already serializes writers)."""
        statement = select(Account).where(Account.name == name).with_for_update()
        return (await session.scalars(statement.execution_options(populate_existing=True))).one_or_none()

    async def get_many(self, session: AsyncSession, names: Iterable[str]) -> dict[str, Account]:
        names = list(set(names))
        if not names:
            return {}
        rows = await session.scalars(select(Account).where(Account.name.in_(names)))
        return {row.name: row for row in rows}

    async def insert_missing_users(
        self, session: AsyncSession, names: Iterable[str], *, plan: str, now: datetime
    ) -> None:
        """Create users never seen before; existing accounts are left untouched.

        One statement of fixed text whatever the number of names (they travel as one array),
        so it is compiled and prepared once: a multi-row VALUES of 7 values a row took
        150-300 ms to build for the thousand users of an ingest batch.
        """
        ordered = sorted(set(names))
        if not ordered:
            return
        if dialect_name(session) == "sqlite":
            values = {"names": orjson.dumps(ordered).decode(), "plan": plan, "now": now}
            await session.execute(_SQLITE_INSERT_USERS, values)
        else:
            await session.execute(_PG_INSERT_USERS, {"names": ordered, "plan": plan, "now": now})

    async def membership(self, session: AsyncSession, *, org: str, user: str) -> Membership | None:
        return await session.get(Membership, (org, user))

    async def memberships_of(self, session: AsyncSession, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which (org, user) pairs are memberships."""
        pairs = set(pairs)
        if not pairs:
            return set()
        orgs = {org for org, _ in pairs}
        rows = await session.execute(
            select(Membership.org_name, Membership.user_name).where(Membership.org_name.in_(orgs))
        )
        return {(org, user) for org, user in rows if (org, user) in pairs}

    async def delete_membership(self, session: AsyncSession, *, org: str, user: str) -> bool:
        result = await session.execute(
            delete(Membership).where(Membership.org_name == org, Membership.user_name == user)
        )
        return rowcount(result) > 0


account_repository = AccountRepository()
