"""Pay-as-you-go for invoicing tests, through the real paths: usage records priced by ``settle``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from metering.db import Database
from metering.models import Invoice, InvoiceLine
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest
from tests.factories.accounts import create_account
from tests.factories.providers import create_provider
from tests.factories.usage import create_pending_usage


async def seed(db: Database) -> None:
    """Providers that take no credits (every cost is pay-as-you-go or written off), and accounts."""
    async with db.session_scope() as session:
        await create_provider(session, "together", credit_eligible=False)
        await create_provider(session, "fireworks-ai", url="http://127.0.0.1:10", credit_eligible=False)
        await create_account(session, "alice", plan="pro")
        await create_account(session, "erin", plan="pro")
        await create_account(session, "bob", plan="free")
        await create_account(session, "acme", plan="team", seats=2)


async def charge(
    db: Database, *, account: str, started_at: datetime, costs: dict[str, int], provider: str = "together"
) -> None:
    """Record requests of ``account`` started at ``started_at`` and price them at ``costs``."""
    async with db.session_scope() as session:
        ids = await create_pending_usage(
            session, provider_id=provider, request_ids=list(costs), user=account, started_at=started_at
        )
    async with db.session_scope() as session:
        await settle(session, priced=[PricedRequest(ids[request_id], cost) for request_id, cost in costs.items()])


async def invoices(db: Database) -> dict[tuple[str, str], Invoice]:
    async with db.session_scope() as session:
        return {(i.account_name, i.period): i for i in await session.scalars(select(Invoice))}


async def lines(db: Database, invoice_id: int) -> dict[str | None, InvoiceLine]:
    async with db.session_scope() as session:
        rows = await session.scalars(select(InvoiceLine).where(InvoiceLine.invoice_id == invoice_id))
        return {line.provider_id: line for line in rows}
