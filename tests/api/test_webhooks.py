"""``POST /webhooks/stripe``: signature over the raw body, events applied once and in order."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from api.app import create_app
from metering.config import Settings
from metering.db import Database
from metering.invoicing.service import invoicing_service
from metering.models import Account, Invoice, StripeEvent
from tests.metering.invoicing.conftest import localstripe_url  # noqa: F401 - the fixture
from tests.metering.invoicing.helpers import charge, seed
from tests.support import localstripe
from tests.support.servers import metering_server

SECRET = "whsec_test_metering"


@pytest.fixture
async def hook_client(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"stripe_webhook_secret": SECRET}), database=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metering.test") as http:
        yield http


@pytest.fixture
async def invoice_id(db: Database) -> int:
    """alice owes 12 cents for 2026-09, sent to Stripe as customer ``cus_alice``."""
    await seed(db)
    await charge(db, account="alice", started_at=datetime(2026, 9, 3, tzinfo=UTC), costs={"a1": 120_000_000})
    async with db.session_scope() as session:
        await invoicing_service.close_period(
            session, period="2026-09", force=True, now=datetime(2026, 11, 1, tzinfo=UTC)
        )
        await session.execute(update(Account).where(Account.name == "alice").values(stripe_customer_id="cus_alice"))
        return await session.scalar(select(Invoice.id))


def event(
    event_id: str, kind: str, *, created: int, invoice_id: int | None = None, stripe_invoice: str = "in_1"
) -> bytes:
    obj = {
        "id": stripe_invoice,
        "object": "invoice",
        "customer": "cus_alice",
        "metadata": {"invoice_id": str(invoice_id)} if invoice_id else {},
    }
    return json.dumps(
        {"id": event_id, "object": "event", "type": kind, "created": created, "data": {"object": obj}}
    ).encode()


def signed(payload: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    at = int(time.time()) if at is None else at
    signature = hmac.new(secret.encode(), f"{at}.".encode() + payload, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={at},v1={signature}", "Content-Type": "application/json"}


async def post(client: httpx.AsyncClient, payload: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    return await client.post(
        "/webhooks/stripe", content=payload, headers=signed(payload) if headers is None else headers
    )


async def state(db: Database) -> tuple[str, str, int]:
    async with db.session_scope() as session:
        account = await session.get(Account, "alice")
        invoice = await session.scalar(select(Invoice))
        events = await session.scalar(select(func.count()).select_from(StripeEvent))
        return account.status, invoice.status, events


class TestStripeWebhook:
    async def test_payment_failed_makes_delinquent_and_paid_clears_it(
        self, hook_client: httpx.AsyncClient, db: Database, invoice_id: int
    ) -> None:
        failed = await post(hook_client, event("evt_1", "invoice.payment_failed", created=1000, invoice_id=invoice_id))
        assert (failed.status_code, failed.json()["outcome"]) == (200, "applied")
        assert await state(db) == ("delinquent", "payment_failed", 1)

        paid = await post(hook_client, event("evt_2", "invoice.paid", created=2000, invoice_id=invoice_id))
        assert (paid.status_code, paid.json()["outcome"]) == (200, "applied")
        assert await state(db) == ("active", "paid", 2)
        async with db.session_scope() as session:
            invoice = await session.get(Invoice, invoice_id)
            assert (invoice.stripe_invoice_id, invoice.stripe_event_created) == ("in_1", 2000)

    @pytest.mark.parametrize(
        "headers",
        [
            {},
            {"Stripe-Signature": "garbage"},
            signed(b"another body"),
            "wrong secret",
            "too old",
        ],
        ids=["missing", "malformed", "other-body", "wrong-secret", "outside-tolerance"],
    )
    async def test_bad_signature_is_400_and_changes_nothing(
        self, hook_client: httpx.AsyncClient, db: Database, invoice_id: int, headers: object
    ) -> None:
        payload = event("evt_1", "invoice.payment_failed", created=1000, invoice_id=invoice_id)
        if headers == "wrong secret":
            headers = signed(payload, secret="whsec_other")
        elif headers == "too old":
            headers = signed(payload, at=int(time.time()) - 301)

        response = await post(hook_client, payload, headers)

        assert response.status_code == 400
        assert response.json()["error"] == "InvalidWebhookSignature"
        assert await state(db) == ("active", "pending", 0)

    async def test_duplicate_event_is_applied_once(
        self, hook_client: httpx.AsyncClient, db: Database, invoice_id: int
    ) -> None:
        failed = event("evt_1", "invoice.payment_failed", created=1000, invoice_id=invoice_id)
        await post(hook_client, failed)
        await post(hook_client, event("evt_2", "invoice.paid", created=2000, invoice_id=invoice_id))

        again = await post(hook_client, failed)

        assert (again.status_code, again.json()["outcome"]) == (200, "duplicate")
        assert await state(db) == ("active", "paid", 2)

    async def test_older_event_after_a_newer_one_is_ignored(
        self, hook_client: httpx.AsyncClient, db: Database, invoice_id: int
    ) -> None:
        await post(hook_client, event("evt_paid", "invoice.paid", created=2000, invoice_id=invoice_id))

        late = await post(
            hook_client, event("evt_failed", "invoice.payment_failed", created=1000, invoice_id=invoice_id)
        )

        assert late.json()["outcome"] == "stale"
        assert await state(db) == ("active", "paid", 2)

    async def test_event_found_by_stripe_customer_without_local_invoice(
        self, hook_client: httpx.AsyncClient, db: Database, invoice_id: int
    ) -> None:
        response = await post(
            hook_client, event("evt_1", "invoice.payment_failed", created=1000, stripe_invoice="in_other")
        )
        assert response.json()["outcome"] == "applied"
        assert await state(db) == ("delinquent", "pending", 1)

    async def test_other_event_types_are_recorded_and_ignored(
        self, hook_client: httpx.AsyncClient, db: Database, invoice_id: int
    ) -> None:
        response = await post(hook_client, event("evt_1", "customer.created", created=1000))
        assert (response.status_code, response.json()["outcome"]) == (200, "ignored")
        assert await state(db) == ("active", "pending", 1)

    async def test_signed_body_that_is_not_an_event_is_422(
        self, hook_client: httpx.AsyncClient, db: Database, invoice_id: int
    ) -> None:
        response = await post(hook_client, b'{"object": "event"}')
        assert (response.status_code, response.json()["error"]) == (422, "InvalidWebhookPayload")
        assert await state(db) == ("active", "pending", 0)

    async def test_without_a_secret_nothing_is_trusted(
        self, client: httpx.AsyncClient, db: Database, invoice_id: int
    ) -> None:
        payload = event("evt_1", "invoice.payment_failed", created=1000, invoice_id=invoice_id)
        response = await client.post("/webhooks/stripe", content=payload, headers=signed(payload))
        assert (response.status_code, response.json()["error"]) == (503, "WebhookNotConfigured")
        assert await state(db) == ("active", "pending", 0)


class TestSignedByLocalstripe:
    async def test_event_signed_and_delivered_by_localstripe_is_accepted(
        self,
        settings: Settings,
        db: Database,
        localstripe_url: str,  # noqa: F811 - the fixture imported above
        tmp_path: Path,
        backend: str,
    ) -> None:
        """Signature interop with a real signer: localstripe posts ``customer.created`` to a real server."""
        if backend != "sqlite":
            pytest.skip("one backend is enough to check the signature scheme end to end")
        localstripe.reset(localstripe_url)
        env = {
            "METERING_DATABASE_URL": settings.database_url,
            "METERING_DATA_DIR": str(tmp_path),
            "METERING_SERVICE_TOKENS": settings.service_tokens,
            "METERING_SECRET_KEY": settings.secret_key,
            "METERING_JWT_SECRET": settings.jwt_secret,
            "STRIPE_WEBHOOK_SECRET": SECRET,
        }
        with metering_server(env) as base_url:
            httpx.post(
                f"{localstripe_url}/_config/webhooks/metering",
                data={"url": f"{base_url}/webhooks/stripe", "secret": SECRET, "events[]": "customer.created"},
            ).raise_for_status()
            httpx.post(
                f"{localstripe_url}/v1/customers", data={"name": "alice"}, auth=(localstripe.API_KEY, "")
            ).raise_for_status()
            deadline = time.monotonic() + 15
            stored = None
            while stored is None and time.monotonic() < deadline:
                async with db.session_scope() as session:
                    stored = await session.scalar(select(StripeEvent))
                await asyncio.sleep(0.2)
        assert stored is not None, "localstripe's event never arrived"
        assert (stored.type, stored.outcome, stored.id.startswith("evt_")) == ("customer.created", "ignored", True)
