"""SQL of accounts and memberships; what differs between the engines is behind ``AccountSql``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.repository_pg import POSTGRES_ACCOUNT_SQL
from metering.accounts.repository_sqlite import SQLITE_ACCOUNT_SQL
from metering.db import by_dialect
from metering.models import Account, Membership
from metering.sql import rowcount


class AccountSql(Protocol):
    """The statements of accounts that differ between SQLite and PostgreSQL."""

    async def insert_missing_users(self, session: AsyncSession, names: list[str], *, plan: str, now: datetime) -> None:
        """Insert users named in ``names`` (sorted, distinct, not empty), leaving existing accounts be."""
        ...


def _sql(session: AsyncSession) -> AccountSql:
    return by_dialect(session, sqlite=SQLITE_ACCOUNT_SQL, postgresql=POSTGRES_ACCOUNT_SQL)


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
        so it is compiled and prepared once, where a multi-row VALUES is built afresh for every
        batch (``bench/ingest.py`` measures the batch).
        """
        ordered = sorted(set(names))
        if not ordered:
            return
        await _sql(session).insert_missing_users(session, ordered, plan=plan, now=now)

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
