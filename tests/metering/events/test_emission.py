"""Events written where their causes happen: invoices at period close, account status by Stripe's webhook."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select, update

from api.app import create_app
from metering.config import Settings
from metering.db import Database
from metering.invoicing.service import invoicing_service
from metering.ledger.verify import verify
from metering.models import Account, Invoice
from tests.api.test_webhooks import SECRET, event, post
from tests.metering.alerts.conftest import stored_events
from tests.metering.invoicing.helpers import charge, seed

CLOSED_AT = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture
async def stripe_client(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"stripe_webhook_secret": SECRET}), database=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metering.test") as http:
        yield http


async def close_september(db: Database) -> int:
    """alice owes 12 cents and erin a fraction of one for 2026-09; the period is closed. alice's invoice id."""
    await seed(db)
    await charge(db, account="alice", started_at=datetime(2026, 9, 3, tzinfo=UTC), costs={"a1": 120_000_000})
    await charge(db, account="erin", started_at=datetime(2026, 9, 4, tzinfo=UTC), costs={"e1": 4_000_000})
    async with db.session_scope() as session:
        await invoicing_service.close_period(session, period="2026-09", force=True, now=CLOSED_AT)
        await session.execute(update(Account).where(Account.name == "alice").values(stripe_customer_id="cus_alice"))
        return await session.scalar(select(Invoice.id).where(Invoice.account_name == "alice"))


class TestInvoiceCreated:
    async def test_each_invoice_of_a_closing_period_has_one_event(self, db: Database) -> None:
        alice_invoice = await close_september(db)
        async with db.session_scope() as session:
            again = await invoicing_service.close_period(session, period="2026-09", force=True, now=CLOSED_AT)
        assert again.outcome == "already_closed"

        events = await stored_events(db, "invoice.created")
        assert [(kind, account, period) for kind, account, period, _ in events] == [
            ("invoice.created", "alice", "2026-09"),
            ("invoice.created", "erin", "2026-09"),
        ]
        assert events[0][3] == {
            "account": "alice",
            "period": "2026-09",
            "invoice_id": alice_invoice,
            "status": "pending",
            "amount_cents": 12,
            "payg_nano_usd": 120_000_000,
            "carried_in_nano_usd": 0,
            "carried_out_nano_usd": 0,
            "adjustments_nano_usd": 0,
        }
        assert (events[1][3]["status"], events[1][3]["amount_cents"]) == ("nothing_due", 0)
        assert (await verify(db)).ok


class TestAccountStatus:
    async def test_payment_failed_then_paid_emit_delinquent_then_reinstated_once(
        self, stripe_client: httpx.AsyncClient, db: Database
    ) -> None:
        invoice_id = await close_september(db)
        failed = event("evt_1", "invoice.payment_failed", created=1000, invoice_id=invoice_id)
        assert (await post(stripe_client, failed)).json()["outcome"] == "applied"
        assert (await post(stripe_client, failed)).json()["outcome"] == "duplicate"
        # A second failure of an account already delinquent changes nothing, so it says nothing.
        await post(stripe_client, event("evt_2", "invoice.payment_failed", created=1500, invoice_id=invoice_id))
        await post(stripe_client, event("evt_3", "invoice.paid", created=2000, invoice_id=invoice_id))

        events = await stored_events(db, "account.delinquent", "account.reinstated")
        assert events == [
            (
                "account.delinquent",
                "alice",
                "2026-09",
                {
                    "account": "alice",
                    "period": "2026-09",
                    "invoice_id": invoice_id,
                    "stripe_invoice_id": "in_1",
                    "stripe_event_id": "evt_1",
                },
            ),
            (
                "account.reinstated",
                "alice",
                "2026-09",
                {
                    "account": "alice",
                    "period": "2026-09",
                    "invoice_id": invoice_id,
                    "stripe_invoice_id": "in_1",
                    "stripe_event_id": "evt_3",
                },
            ),
        ]
        assert (await verify(db)).ok
