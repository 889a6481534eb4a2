"""Setup shared by the authorize, holds and limits tests: accounts, providers and the locked period row."""

from __future__ import annotations

from sqlalchemy import select

from metering.db import Database
from metering.limits.service import limits_service
from metering.models import Account, AccountPeriod, Hold
from metering.periods import current_period
from tests.factories.accounts import add_member, create_account
from tests.factories.providers import create_provider

ESTIMATE = 100_000  # default estimate of the "together" provider below
FREE_CREDITS = 100_000_000
PRO_CREDITS = 2_000_000_000


async def seed(db: Database) -> None:
    """alice (pro), bob (free); acme (team, 2 seats: alice admin, bob member); solo-org (team, no seats, so
    no credits: alice admin); providers together and fireworks-ai (credit-eligible) and paid-only (not)."""
    async with db.session_scope() as session:
        await create_provider(session, "together", default_estimate_nano_usd=ESTIMATE)
        await create_provider(session, "fireworks-ai", default_estimate_nano_usd=250_000)
        await create_provider(session, "paid-only", default_estimate_nano_usd=300_000, credit_eligible=False)
        await create_account(session, "alice", plan="pro")
        await create_account(session, "bob", plan="free")
        await create_account(session, "acme", plan="team", seats=2)
        await create_account(session, "solo-org", plan="team", seats=0)
        await add_member(session, org="acme", user="alice", role="admin")
        await add_member(session, org="acme", user="bob", role="write")
        await add_member(session, org="solo-org", user="alice", role="admin")


async def set_limit(db: Database, account: str, limit: int | None) -> None:
    async with db.session_scope() as session:
        await limits_service.set_spending_limit(session, account_name=account, limit_nano_usd=limit, actor="test-admin")


async def disable(db: Database, account: str, providers: list[str]) -> None:
    async with db.session_scope() as session:
        await limits_service.set_disabled_providers(
            session, account_name=account, providers=providers, actor="test-admin"
        )


async def set_status(db: Database, account: str, status: str) -> None:
    async with db.session_scope() as session:
        (await session.get(Account, account)).status = status


async def period_row(db: Database, account: str) -> AccountPeriod | None:
    async with db.session_scope() as session:
        return await session.get(AccountPeriod, (account, current_period()))


async def set_period(db: Database, account: str, **values: int) -> None:
    """Overwrite money columns of the current period row (creating it), as the ledger would have left them."""
    from metering.credits.service import credits_service

    async with db.session_scope() as session:
        account_row = await session.get(Account, account)
        row = await credits_service.lock_period(session, account=account_row, period=current_period())
        for name, value in values.items():
            setattr(row, name, value)


async def holds(db: Database) -> list[Hold]:
    async with db.session_scope() as session:
        return list(await session.scalars(select(Hold).order_by(Hold.created_at, Hold.id)))
