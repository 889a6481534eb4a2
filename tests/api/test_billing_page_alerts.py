"""The billing page's banner: the latest alert that still holds, and none once it no longer does."""

from __future__ import annotations

import httpx
from sqlalchemy import update

from metering.db import Database
from metering.ledger.verify import verify
from metering.limits.service import limits_service
from metering.models import Account
from metering.usage.accounting import settle
from metering.usage.types import PricedRequest
from tests.factories.accounts import create_account
from tests.factories.billing_data import as_user
from tests.factories.providers import create_provider
from tests.factories.usage import create_pending_usage
from tests.support.pages import parse

ALICE = as_user("alice")


async def banner(http: httpx.AsyncClient) -> tuple[str, str] | None:
    """(data-alert, text) of the page's banner, or None."""
    response = await http.get("/billing/alice", headers=ALICE)
    assert response.status_code == 200
    shown = [element for element in parse(response.text) if "data-alert" in element.attrs]
    if not shown:
        return None
    [element] = shown
    return element.attrs["data-alert"], str(element.value)


async def set_limit(db: Database, limit: int) -> None:
    async with db.session_scope() as session:
        await limits_service.set_spending_limit(session, account_name="alice", limit_nano_usd=limit, actor="alice")


async def test_the_latest_alert_that_still_holds_is_shown(anonymous_client: httpx.AsyncClient, db: Database) -> None:
    async with db.session_scope() as session:
        await create_account(session, "alice", plan="pro")
        await create_provider(session, "together")
        ids = await create_pending_usage(session, provider_id="together", request_ids=["r1", "r2"], user="alice")
    await set_limit(db, 1_000_000_000)
    assert await banner(anonymous_client) is None

    # 2 USD of credits used up, then 1 USD of pay-as-you-go: exactly the limit.
    async with db.session_scope() as session:
        await settle(session, priced=[PricedRequest(ids["r1"], 2_000_000_000)])
    kind, text = await banner(anonymous_client)
    assert (kind, text) == (
        "credits.exhausted",
        "This period's credits are used up: further usage is charged pay-as-you-go.",
    )
    async with db.session_scope() as session:
        await settle(session, priced=[PricedRequest(ids["r2"], 1_000_000_000)])
    assert (await banner(anonymous_client))[0] == "spending_limit.reached"

    # A higher limit resolves it; the credits are still used up.
    await set_limit(db, 5_000_000_000)
    assert (await banner(anonymous_client))[0] == "credits.exhausted"

    async with db.session_scope() as session:
        await session.execute(update(Account).where(Account.name == "alice").values(status="delinquent"))
    assert await banner(anonymous_client) == (
        "account.delinquent",
        "A payment failed: new requests are refused until the unpaid invoice is paid.",
    )
    assert (await verify(db)).ok
