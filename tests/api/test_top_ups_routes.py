"""Prepaid top-ups (SPEC §3, §8): ``POST /v1/accounts/{name}/billing/top-ups`` against localstripe, and the signed
``payment_intent.succeeded`` / ``charge.refunded`` webhooks that credit them and take refunds back.

localstripe creates, confirms (with a test card) and refunds the PaymentIntents. The tests build each event around
the object localstripe returns and sign it, as Stripe would (localstripe sends no ``charge.refunded``, and delivers
only to a real server: ``TestDeliveredByLocalstripe`` lets it deliver ``payment_intent.succeeded`` to one). What
localstripe lacks is stood in for: Stripe's idempotent replay (``StripeIdempotency``) and the current API's
PaymentIntent shape, with ``amount_received`` and ``latest_charge`` by id (``intent``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import select, update

from api.app import create_app
from metering.config import Settings
from metering.credit_grants.service import credit_grant_service
from metering.db import Database
from metering.ledger.verify import verify
from metering.models import Account, CreditGrant, StripeEvent
from metering.periods import current_period, period_bounds, utcnow
from metering.top_ups import service as top_up_module
from tests.api.test_webhooks import SECRET, signed
from tests.conftest import SERVICE_TOKEN
from tests.factories.billing_data import as_user, ingest, price, seed_world, usage
from tests.metering.invoicing.conftest import localstripe_url, stripe_settings  # noqa: F401 - the fixtures
from tests.support import localstripe
from tests.support.servers import free_port, metering_server

ALICE, BOB, CAROL, FRANK = as_user("alice"), as_user("bob"), as_user("carol"), as_user("frank")
FINANCE, PLATFORM_ADMIN = as_user("fiona", "finance"), as_user("root", "platform_admin")
NANO_PER_CENT = 10_000_000
DOLLAR = 100 * NANO_PER_CENT
FREE_CREDITS = 100_000_000
STRIPE = (localstripe.API_KEY, "")
_event_ids = count(1)


@pytest.fixture
async def world(db: Database) -> None:
    await seed_world(db)


def _app_client(settings: Settings, db: Database) -> httpx.AsyncClient:
    app = create_app(settings.model_copy(update={"stripe_webhook_secret": SECRET}), database=db)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://metering.test",
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )


@pytest.fixture
async def api(stripe_settings: Settings, db: Database, world: None) -> AsyncIterator[httpx.AsyncClient]:  # noqa: F811
    """The app with Stripe at localstripe and the webhook secret; the service token unless a JWT is given."""
    async with _app_client(stripe_settings, db) as http:
        yield http


async def top_up(
    api: httpx.AsyncClient, account: str, amount: int, caller: dict[str, str], key: str | None = None
) -> httpx.Response:
    headers = {**caller, **({"Idempotency-Key": key} if key else {})}
    return await api.post(f"/v1/accounts/{account}/billing/top-ups", json={"amount_nano_usd": amount}, headers=headers)


async def bought(api: httpx.AsyncClient, account: str, amount: int, caller: dict[str, str]) -> str:
    response = await top_up(api, account, amount, caller)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def pay(base_url: str, intent_id: str) -> dict[str, Any]:
    """Confirm the PaymentIntent at localstripe with a test card, as Stripe.js would; the paid PaymentIntent."""
    card = {"card[number]": "4242424242424242", "card[exp_month]": "12", "card[exp_year]": "2030", "card[cvc]": "123"}
    method = httpx.post(f"{base_url}/v1/payment_methods", data={"type": "card", **card}, auth=STRIPE).json()
    httpx.post(f"{base_url}/v1/payment_intents/{intent_id}", data={"payment_method": method["id"]}, auth=STRIPE)
    paid = httpx.post(f"{base_url}/v1/payment_intents/{intent_id}/confirm", auth=STRIPE).json()
    assert paid["status"] == "succeeded", paid
    return paid


def pay_again(base_url: str, intent_id: str) -> dict[str, Any]:
    """The paid PaymentIntent as localstripe shows it now."""
    return httpx.get(f"{base_url}/v1/payment_intents/{intent_id}", auth=STRIPE).json()


def refund(base_url: str, intent_id: str, cents: int) -> dict[str, Any]:
    """Refund ``cents`` of the payment at localstripe; the refunded charge (its ``amount_refunded`` cumulative)."""
    made = httpx.post(f"{base_url}/v1/refunds", data={"payment_intent": intent_id, "amount": cents}, auth=STRIPE)
    assert made.status_code == 200, made.text
    return httpx.get(f"{base_url}/v1/charges/{made.json()['charge']}", auth=STRIPE).json()


def intent(intent_id: str, account: str | None, cents: int, **fields: Any) -> dict[str, Any]:
    """A succeeded PaymentIntent as the current Stripe API shows it (``latest_charge`` by id only)."""
    metadata = {"account": account, "amount_nano_usd": str(cents * NANO_PER_CENT)} if account else {}
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": cents,
        "amount_received": cents,
        "currency": "usd",
        "customer": None,
        "invoice": None,
        "latest_charge": f"ch_{intent_id}",
        "metadata": metadata,
        "status": "succeeded",
        **fields,
    }


def event(kind: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None) -> bytes:
    return json.dumps(
        {
            "id": event_id or f"evt_top_up_{next(_event_ids)}",
            "object": "event",
            "type": kind,
            "created": int(time.time()) if created is None else created,
            "data": {"object": obj},
        }
    ).encode()


async def deliver(api: httpx.AsyncClient, payload: bytes) -> str:
    response = await api.post("/webhooks/stripe", content=payload, headers=signed(payload))
    assert response.status_code == 200, response.text
    return str(response.json()["outcome"])


async def grants(db: Database, account: str) -> list[tuple[str, str, int, int]]:
    """(payment intent, status, amount, remaining) of the account's prepaid top-ups, oldest first."""
    async with db.session_scope() as session:
        rows = await session.scalars(
            select(CreditGrant).where(CreditGrant.account_name == account).order_by(CreditGrant.id)
        )
        return [(g.payment_intent_id or "", g.status, g.amount_nano_usd, g.remaining_nano_usd) for g in rows]


async def prepaid_balance(api: httpx.AsyncClient, account: str, caller: dict[str, str]) -> int:
    response = await api.get(f"/v1/accounts/{account}/billing", headers=caller)
    assert response.status_code == 200, response.text
    return int(response.json()["prepaid_balance_nano_usd"])


async def assert_ledger_ok(db: Database) -> None:
    report = await verify(db)
    assert report.ok, [(check.name, check.breaches) for check in report.checks if not check.ok]


def _recent(minutes: int) -> datetime:
    start, _ = period_bounds(current_period())
    return max(utcnow() - timedelta(minutes=minutes), start)


class TestCreate:
    async def test_a_free_user_buys_prepaid_credits(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
    ) -> None:
        response = await top_up(api, "bob", 2 * DOLLAR, BOB)

        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["amount_nano_usd"], body["status"], body["id"].startswith("pi_")) == (2 * DOLLAR, "pending", True)
        made = httpx.get(f"{localstripe_url}/v1/payment_intents/{body['id']}", auth=STRIPE).json()
        assert body["client_secret"] == made["client_secret"]
        async with db.session_scope() as session:
            customer = (await session.get(Account, "bob")).stripe_customer_id
        assert (made["amount"], made["currency"], made["customer"], made["metadata"]) == (
            200,
            "usd",
            customer,
            {"account": "bob", "amount_nano_usd": str(2 * DOLLAR)},
        )
        assert await grants(db, "bob") == [(body["id"], "pending", 2 * DOLLAR, 0)]
        listed = (await api.get("/v1/accounts/bob/credit-grants", headers=BOB)).json()["items"]
        assert [(g["source"], g["status"], g["created_by"]) for g in listed] == [("prepaid", "pending", "bob")]
        assert await prepaid_balance(api, "bob", BOB) == 0
        await assert_ledger_ok(db)

    async def test_an_org_admin_buys_for_the_org_on_one_stripe_customer(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
    ) -> None:
        first = await bought(api, "acme", DOLLAR, ALICE)
        second = await bought(api, "acme", 3 * DOLLAR, ALICE)

        customers = [c["id"] for c in localstripe.list_all(localstripe_url, "customers")]
        assert len(customers) == 1
        intents = [httpx.get(f"{localstripe_url}/v1/payment_intents/{i}", auth=STRIPE).json() for i in (first, second)]
        assert [(i["customer"], i["amount"]) for i in intents] == [(customers[0], 100), (customers[0], 300)]
        assert await grants(db, "acme") == [(first, "pending", DOLLAR, 0), (second, "pending", 3 * DOLLAR, 0)]

    @pytest.mark.parametrize(
        ("caller", "account", "status"),
        [
            (BOB, "acme", 403),
            (CAROL, "acme", 403),
            (PLATFORM_ADMIN, "bob", 403),
            (FINANCE, "bob", 403),
            (FRANK, "acme", 404),
            (ALICE, "bob", 404),
            (BOB, "nobody", 404),
        ],
        ids=["write-member", "read-member", "platform-admin", "finance", "stranger", "another-user", "unknown"],
    )
    async def test_only_the_user_or_an_org_admin_may_buy(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
        caller: dict[str, str],
        account: str,
        status: int,
    ) -> None:
        response = await top_up(api, account, DOLLAR, caller)

        assert response.status_code == status, response.text
        assert localstripe.list_all(localstripe_url, "payment_intents") == []
        assert await grants(db, account) == []

    @pytest.mark.parametrize(
        "body",
        [
            {"amount_nano_usd": 0},
            {"amount_nano_usd": 49 * NANO_PER_CENT},
            {"amount_nano_usd": DOLLAR + 1},
            {"amount_nano_usd": 10_000_000 * 100 * NANO_PER_CENT + NANO_PER_CENT},
            {"amount_nano_usd": -DOLLAR},
            {"amount_nano_usd": 1.5},
            {"amount_nano_usd": str(DOLLAR)},
            {"amount_nano_usd": True},
            {},
            {"amount_nano_usd": DOLLAR, "currency": "eur"},
        ],
        ids=[
            "zero",
            "under-50-cents",
            "sub-cent",
            "over-100k",
            "negative",
            "float",
            "string",
            "bool",
            "missing",
            "extra",
        ],
    )
    async def test_an_amount_that_is_not_whole_cents_in_bounds_is_422(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
        body: dict,
    ) -> None:
        response = await api.post("/v1/accounts/bob/billing/top-ups", json=body, headers=BOB)

        assert response.status_code == 422, response.text
        assert localstripe.list_all(localstripe_url, "payment_intents") == []
        assert await grants(db, "bob") == []

    async def test_the_bounds_are_inclusive(self, api: httpx.AsyncClient) -> None:
        assert (await top_up(api, "bob", 50 * NANO_PER_CENT, BOB)).status_code == 201
        assert (await top_up(api, "bob", 100_000 * DOLLAR, BOB)).status_code == 201

    @pytest.mark.parametrize("key", ["k" * 129, "two words"], ids=["too-long", "space"])
    async def test_a_malformed_idempotency_key_is_422(self, api: httpx.AsyncClient, key: str) -> None:
        assert (await top_up(api, "bob", DOLLAR, BOB, key=key)).status_code == 422

    async def test_without_stripe_it_is_503(self, settings: Settings, db: Database, world: None) -> None:
        async with _app_client(settings, db) as api:
            response = await top_up(api, "bob", DOLLAR, BOB)

        assert (response.status_code, response.json()["error"]) == (503, "TopUpsNotConfigured")
        assert "\n" not in response.json()["detail"]
        assert await grants(db, "bob") == []

    async def test_stripe_out_of_reach_is_503(
        self,
        stripe_settings: Settings,  # noqa: F811
        db: Database,
        world: None,
    ) -> None:
        unreachable = stripe_settings.model_copy(update={"stripe_api_base": f"http://127.0.0.1:{free_port()}"})
        async with _app_client(unreachable, db) as api:
            response = await top_up(api, "bob", DOLLAR, BOB)

        assert (response.status_code, response.json()["error"]) == (503, "StripeUnavailable")
        assert "\n" not in response.json()["detail"]
        assert await grants(db, "bob") == []

    async def test_a_stripe_refusal_is_502(self, api: httpx.AsyncClient, db: Database) -> None:
        async with db.session_scope() as session:
            await session.execute(update(Account).where(Account.name == "bob").values(stripe_customer_id="cus_gone"))

        response = await top_up(api, "bob", DOLLAR, BOB)

        assert (response.status_code, response.json()["error"]) == (502, "StripeRefused")
        detail = response.json()["detail"]
        assert detail.startswith("Stripe refused the payment request (InvalidRequestError): ")
        assert "\n" not in detail
        assert await grants(db, "bob") == []


class StripeIdempotency(httpx.AsyncBaseTransport):
    """Stripe's idempotent requests in front of localstripe, which ignores the header: a POST with a key seen
    before gets the first answer again, or Stripe's ``idempotency_error`` when its parameters differ."""

    def __init__(self, seen: dict[str, tuple[bytes, int, bytes]], keys: list[str]) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen, self.keys = seen, keys

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        if key is None:
            return await self.inner.handle_async_request(request)
        self.keys.append(key)
        sent = await request.aread()
        if key in self.seen:
            first, status, answer = self.seen[key]
            if first != sent:
                error = {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used "}
                return httpx.Response(400, json={"error": error})
            return httpx.Response(status, content=answer, headers={"Content-Type": "application/json"})
        response = await self.inner.handle_async_request(request)
        answer = await response.aread()
        self.seen[key] = (sent, response.status_code, answer)
        return httpx.Response(response.status_code, content=answer, headers={"Content-Type": "application/json"})

    async def aclose(self) -> None:
        await self.inner.aclose()


class TestIdempotencyKey:
    @pytest.fixture
    def sent_keys(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
        seen: dict[str, tuple[bytes, int, bytes]] = {}
        keys: list[str] = []

        def http_client() -> stripe.HTTPClient:
            client = stripe.HTTPXClient()
            client._client_async = httpx.AsyncClient(transport=StripeIdempotency(seen, keys))
            return client

        monkeypatch.setattr(top_up_module, "new_http_client", http_client)
        yield keys

    async def test_the_same_key_gets_the_same_payment_intent(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
        sent_keys: list[str],
    ) -> None:
        first = await top_up(api, "acme", DOLLAR, ALICE, key="order-7")
        again = await top_up(api, "acme", DOLLAR, ALICE, key="order-7")

        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json() == first.json()
        assert [i["id"] for i in localstripe.list_all(localstripe_url, "payment_intents")] == [first.json()["id"]]
        assert await grants(db, "acme") == [(first.json()["id"], "pending", DOLLAR, 0)]
        assert sent_keys.count("top-up:acme:order-7") == 2

    async def test_the_key_is_per_account(self, api: httpx.AsyncClient, sent_keys: list[str]) -> None:
        for_acme = await top_up(api, "acme", DOLLAR, ALICE, key="order-7")
        for_alice = await top_up(api, "alice", DOLLAR, ALICE, key="order-7")
        assert for_acme.json()["id"] != for_alice.json()["id"]

    async def test_the_same_key_for_another_amount_is_409(
        self, api: httpx.AsyncClient, db: Database, sent_keys: list[str]
    ) -> None:
        first = await top_up(api, "acme", DOLLAR, ALICE, key="order-7")
        other = await top_up(api, "acme", 2 * DOLLAR, ALICE, key="order-7")

        assert (other.status_code, other.json()["error"]) == (409, "TopUpKeyReused")
        assert await grants(db, "acme") == [(first.json()["id"], "pending", DOLLAR, 0)]


class TestPaymentSucceeded:
    async def test_credits_once_however_often_it_is_delivered(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
    ) -> None:
        intent_id = await bought(api, "bob", DOLLAR, BOB)
        payload = event("payment_intent.succeeded", pay(localstripe_url, intent_id), event_id="evt_paid")

        outcomes = [await deliver(api, payload) for _ in range(5)]
        # Another event about the same payment (Stripe may send one) finds it credited.
        other = await deliver(api, event("payment_intent.succeeded", pay_again(localstripe_url, intent_id)))

        assert (outcomes, other) == (["applied"] + ["duplicate"] * 4, "applied")
        assert await grants(db, "bob") == [(intent_id, "active", DOLLAR, DOLLAR)]
        assert await prepaid_balance(api, "bob", BOB) == DOLLAR
        await assert_ledger_ok(db)

    async def test_before_the_top_up_is_recorded_it_credits_once(self, api: httpx.AsyncClient, db: Database) -> None:
        outcome = await deliver(api, event("payment_intent.succeeded", intent("pi_early", "bob", 250)))
        async with db.session_scope() as session:
            await credit_grant_service.record_top_up(
                session,
                account_name="bob",
                payment_intent_id="pi_early",
                amount_nano_usd=250 * NANO_PER_CENT,
                actor="bob",
            )

        assert outcome == "applied"
        assert await grants(db, "bob") == [("pi_early", "active", 250 * NANO_PER_CENT, 250 * NANO_PER_CENT)]
        assert await prepaid_balance(api, "bob", BOB) == 250 * NANO_PER_CENT
        await assert_ledger_ok(db)

    @pytest.mark.parametrize(
        "metadata",
        [{"account": "bob", "amount_nano_usd": str(50 * DOLLAR)}, {"account": "bob"}],
        ids=["metadata-disagrees", "metadata-without-amount"],
    )
    async def test_what_was_received_is_credited(
        self, api: httpx.AsyncClient, db: Database, metadata: dict[str, str]
    ) -> None:
        paid = intent("pi_odd", "bob", 100, metadata=metadata)

        assert await deliver(api, event("payment_intent.succeeded", paid)) == "applied"
        assert await grants(db, "bob") == [("pi_odd", "active", DOLLAR, DOLLAR)]
        await assert_ledger_ok(db)

    @pytest.mark.parametrize(
        "paid",
        [
            intent("pi_plain", None, 100),
            intent("pi_invoice", "bob", 100, invoice="in_1"),
            intent("pi_nobody", "nobody", 100),
            intent("pi_euro", "bob", 100, currency="eur"),
            intent("pi_nothing", "bob", 0),
            {"object": "payment_intent", "metadata": {"account": "bob"}},
        ],
        ids=["no-metadata", "an-invoice", "unknown-account", "not-usd", "nothing-received", "no-id"],
    )
    async def test_payments_that_are_no_top_up_of_ours_are_ignored(
        self, api: httpx.AsyncClient, db: Database, paid: dict[str, Any]
    ) -> None:
        payload = event("payment_intent.succeeded", paid, event_id="evt_other")

        assert await deliver(api, payload) == "ignored"
        assert await grants(db, "bob") == []
        async with db.session_scope() as session:
            stored = await session.get(StripeEvent, "evt_other")
            assert (stored.outcome, stored.account_name) == ("ignored", None)

    async def test_a_payment_never_makes_an_invoice_event_stale(self, api: httpx.AsyncClient, db: Database) -> None:
        async with db.session_scope() as session:
            await session.execute(update(Account).where(Account.name == "alice").values(stripe_customer_id="cus_alice"))
        await deliver(api, event("payment_intent.succeeded", intent("pi_alice", "alice", 100), created=2000))

        failed = {"id": "in_1", "object": "invoice", "customer": "cus_alice", "metadata": {}}
        outcome = await deliver(api, event("invoice.payment_failed", failed, created=1000))

        assert outcome == "applied"
        async with db.session_scope() as session:
            assert (await session.get(Account, "alice")).status == "delinquent"


class TestRefund:
    async def test_a_refund_takes_back_only_what_is_left(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
    ) -> None:
        """bob (free) buys $1 and spends $0.30 of it after his $0.10 of plan credits; $1 is refunded in two parts."""
        intent_id = await bought(api, "bob", DOLLAR, BOB)
        await deliver(api, event("payment_intent.succeeded", pay(localstripe_url, intent_id)))
        await ingest(api, [usage("r1", user="bob", started_at=_recent(10))])
        await price(db, {"r1": FREE_CREDITS + 30 * NANO_PER_CENT})
        assert await grants(db, "bob") == [(intent_id, "active", DOLLAR, 70 * NANO_PER_CENT)]

        first = event("charge.refunded", refund(localstripe_url, intent_id, 30))
        assert await deliver(api, first) == "applied"
        assert await grants(db, "bob") == [(intent_id, "active", DOLLAR, 40 * NANO_PER_CENT)]

        rest = event("charge.refunded", refund(localstripe_url, intent_id, 70))
        assert await deliver(api, rest) == "applied"
        assert [await deliver(api, first), await deliver(api, rest)] == ["duplicate", "duplicate"]

        assert await grants(db, "bob") == [(intent_id, "closed", DOLLAR, 0)]
        assert await prepaid_balance(api, "bob", BOB) == 0
        await assert_ledger_ok(db)

    async def test_a_refund_before_the_payment_of_a_recorded_top_up(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
    ) -> None:
        intent_id = await bought(api, "bob", DOLLAR, BOB)
        paid = pay(localstripe_url, intent_id)
        refunded = refund(localstripe_url, intent_id, 40)
        assert refunded["metadata"] == {}  # localstripe, like Stripe, leaves the charge's metadata to the caller

        assert await deliver(api, event("charge.refunded", refunded)) == "applied"
        assert await deliver(api, event("payment_intent.succeeded", paid)) == "applied"

        assert await grants(db, "bob") == [(intent_id, "active", DOLLAR, 60 * NANO_PER_CENT)]
        assert await prepaid_balance(api, "bob", BOB) == 60 * NANO_PER_CENT
        await assert_ledger_ok(db)

    async def test_a_refund_before_the_payment_of_an_unrecorded_top_up(
        self,
        api: httpx.AsyncClient,
        db: Database,
        localstripe_url: str,  # noqa: F811
    ) -> None:
        """The refund cannot be placed; the success, whose embedded charge shows it, credits what is left."""
        made = httpx.post(
            f"{localstripe_url}/v1/payment_intents",
            data={
                "amount": 100,
                "currency": "usd",
                "metadata[account]": "bob",
                "metadata[amount_nano_usd]": str(DOLLAR),
            },
            auth=STRIPE,
        ).json()
        pay(localstripe_url, made["id"])
        refunded = refund(localstripe_url, made["id"], 40)

        assert await deliver(api, event("charge.refunded", refunded)) == "ignored"
        assert await grants(db, "bob") == []
        assert (
            await deliver(api, event("payment_intent.succeeded", pay_again(localstripe_url, made["id"]))) == "applied"
        )

        assert await grants(db, "bob") == [(made["id"], "active", DOLLAR, 60 * NANO_PER_CENT)]
        await assert_ledger_ok(db)

    async def test_a_refund_of_a_charge_that_is_no_top_up_is_ignored(
        self, api: httpx.AsyncClient, db: Database
    ) -> None:
        charge = {
            "id": "ch_1",
            "object": "charge",
            "payment_intent": "pi_invoice",
            "amount": 500,
            "amount_refunded": 500,
        }
        assert await deliver(api, event("charge.refunded", {**charge, "currency": "usd", "metadata": {}})) == "ignored"
        assert await grants(db, "bob") == []


class TestAuthorize:
    async def test_a_free_user_spends_prepaid_credit_after_the_plan_credits(
        self, api: httpx.AsyncClient, db: Database
    ) -> None:
        async def allowed() -> bool:
            response = await api.post(
                "/internal/v1/authorize",
                json={"user": "bob", "bill_to": None, "provider": "together", "model": "org/model"},
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["reason"] in (None, "credits_exhausted"), body
            return bool(body["allowed"])

        await ingest(api, [usage("r1", user="bob", started_at=_recent(10))])
        await price(db, {"r1": FREE_CREDITS})
        assert await allowed() is False

        await deliver(api, event("payment_intent.succeeded", intent("pi_bob", "bob", 50)))
        assert await allowed() is True

        await ingest(api, [usage("r2", user="bob", started_at=_recent(5))])
        await price(db, {"r2": 50 * NANO_PER_CENT})
        assert await grants(db, "bob") == [("pi_bob", "closed", 50 * NANO_PER_CENT, 0)]
        assert await allowed() is False
        await assert_ledger_ok(db)


class TestDeliveredByLocalstripe:
    async def test_a_card_payment_is_credited_from_the_event_localstripe_signs_and_sends(
        self,
        stripe_settings: Settings,  # noqa: F811
        db: Database,
        world: None,
        localstripe_url: str,  # noqa: F811
        tmp_path: Path,
        backend: str,
    ) -> None:
        """The whole path on a real server: top-up, card payment at localstripe, its signed webhook, the credit."""
        if backend != "sqlite":
            pytest.skip("one backend is enough for the delivery end to end")
        env = {
            "METERING_DATABASE_URL": stripe_settings.database_url,
            "METERING_DATA_DIR": str(tmp_path),
            "METERING_SERVICE_TOKENS": stripe_settings.service_tokens,
            "METERING_SECRET_KEY": stripe_settings.secret_key,
            "METERING_JWT_SECRET": stripe_settings.jwt_secret,
            "STRIPE_API_KEY": localstripe.API_KEY,
            "STRIPE_API_BASE": localstripe_url,
            "STRIPE_WEBHOOK_SECRET": SECRET,
        }
        hook = f"{localstripe_url}/_config/webhooks/metering-top-ups"
        with metering_server(env) as base_url:
            httpx.post(
                hook,
                data={"url": f"{base_url}/webhooks/stripe", "secret": SECRET, "events[]": "payment_intent.succeeded"},
            ).raise_for_status()
            try:
                made = httpx.post(
                    f"{base_url}/v1/accounts/bob/billing/top-ups", json={"amount_nano_usd": DOLLAR}, headers=BOB
                )
                assert made.status_code == 201, made.text
                pay(localstripe_url, made.json()["id"])
                deadline = time.monotonic() + 15
                while await grants(db, "bob") != [(made.json()["id"], "active", DOLLAR, DOLLAR)]:
                    assert time.monotonic() < deadline, f"not credited: {await grants(db, 'bob')}"
                    await asyncio.sleep(0.2)
            finally:
                # localstripe cannot forget a webhook: point this one at an event that never happens.
                httpx.post(hook, data={"url": f"{base_url}/webhooks/stripe", "secret": SECRET, "events[]": "none"})
        await assert_ledger_ok(db)
