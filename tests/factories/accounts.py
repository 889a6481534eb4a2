"""Small factories for accounts and memberships."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from metering.accounts.service import AccountSync, account_service
from metering.models import Account


async def create_account(session: AsyncSession, name: str, *, plan: str = "free", seats: int = 1) -> Account:
    kind = "org" if plan in ("team", "enterprise") else "user"
    account, _ = await account_service.upsert_account(
        session, name=name, sync=AccountSync(kind=kind, plan=plan, seats=seats)
    )
    return account


async def add_member(session: AsyncSession, *, org: str, user: str, role: str = "write") -> None:
    await account_service.put_member(session, org=org, user=user, role=role)
