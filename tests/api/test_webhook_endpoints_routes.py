"""``/v1/orgs/{org}/billing/webhook-endpoints`` and ``…/webhook-deliveries``: org admins only, secrets shown
once and stored encrypted, URLs that could reach inside the network refused, the log and replay."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from api.app import create_app
from metering.config import Settings
from metering.db import Database
from metering.events.service import NewEvent, event_service
from metering.models import WebhookEndpoint
from metering.periods import current_period
from metering.providers.secrets import decrypt_token
from metering.webhooks.delivery import delivery_service
from tests.factories.billing_data import as_user, seed_world

ALICE, BOB, DAVE = as_user("alice"), as_user("bob"), as_user("dave")
ENDPOINTS = "/v1/orgs/acme/billing/webhook-endpoints"
DELIVERIES = "/v1/orgs/acme/billing/webhook-deliveries"
# A public address: registering checks it, nothing connects to it.
PUBLIC_URL = "https://93.184.215.14/metering"


@pytest.fixture
async def world(db: Database) -> None:
    await seed_world(db)


@pytest.fixture
async def private_ok(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """The app with loopback and private endpoints allowed (METERING_WEBHOOK_ALLOW_PRIVATE_URLS=true)."""
    app = create_app(settings.model_copy(update={"webhook_allow_private_urls": True}), database=db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://metering.test") as http:
        yield http


async def fan_out_one_event(db: Database, settings: Settings, account: str = "acme", percent: int = 50) -> None:
    period = current_period()
    event = NewEvent("credits.threshold", account, period, f"credits.threshold:{account}:{period}:{percent}", {})
    async with db.session_scope() as session:
        await event_service.emit(session, [event])
    async with db.session_scope() as session:
        await delivery_service.fan_out(session, settings=settings)


class TestEndpoints:
    async def test_the_secret_is_shown_once_and_stored_encrypted(
        self, client: httpx.AsyncClient, db: Database, world: None
    ) -> None:
        created = await client.post(ENDPOINTS, json={"url": PUBLIC_URL, "description": "ops"}, headers=ALICE)

        assert created.status_code == 201
        body = created.json()
        assert body["url"] == PUBLIC_URL and body["description"] == "ops"
        assert body["secret"].startswith("whsec_") and len(body["secret"]) > 40
        listed = (await client.get(ENDPOINTS, headers=ALICE)).json()["items"]
        assert listed == [{key: body[key] for key in ("id", "url", "description", "created_at")}]
        async with db.session_scope() as session:
            stored = await session.scalar(select(WebhookEndpoint))
        assert body["secret"].encode() not in stored.secret_encrypted
        assert decrypt_token(stored.secret_encrypted) == body["secret"]

    @pytest.mark.parametrize(
        ("caller", "path", "status"),
        [
            (BOB, ENDPOINTS, 403),
            (DAVE, ENDPOINTS, 404),
            (ALICE, "/v1/orgs/alice/billing/webhook-endpoints", 403),
            (ALICE, "/v1/orgs/nobody/billing/webhook-endpoints", 404),
        ],
        ids=["write-member", "other-org-admin", "a-user-account", "no-such-org"],
    )
    async def test_only_an_org_admin_may_manage_them(
        self, client: httpx.AsyncClient, world: None, caller: dict[str, str], path: str, status: int
    ) -> None:
        assert (await client.post(path, json={"url": PUBLIC_URL}, headers=caller)).status_code == status
        assert (await client.get(path, headers=caller)).status_code == status
        assert (await client.get(path.replace("endpoints", "deliveries"), headers=caller)).status_code == status
        assert (await client.get(ENDPOINTS, headers=ALICE)).json()["items"] == []

    async def test_delete_stops_deliveries_and_is_idempotent(
        self, client: httpx.AsyncClient, db: Database, settings: Settings, world: None
    ) -> None:
        endpoint = (await client.post(ENDPOINTS, json={"url": PUBLIC_URL}, headers=ALICE)).json()
        await fan_out_one_event(db, settings)

        assert (await client.delete(f"{ENDPOINTS}/{endpoint['id']}", headers=DAVE)).status_code == 404
        assert (await client.delete(f"{ENDPOINTS}/{endpoint['id']}", headers=ALICE)).status_code == 204
        assert (await client.delete(f"{ENDPOINTS}/{endpoint['id']}", headers=ALICE)).status_code == 204
        assert (await client.delete(f"{ENDPOINTS}/{endpoint['id'] + 1}", headers=ALICE)).status_code == 404

        assert (await client.get(ENDPOINTS, headers=ALICE)).json()["items"] == []
        [delivery] = (await client.get(DELIVERIES, headers=ALICE)).json()["items"]
        assert (delivery["status"], delivery["last_error"]) == ("failed", "the endpoint was deleted")
        replay = await client.post(f"{DELIVERIES}/{delivery['id']}/replay", headers=ALICE)
        assert (replay.status_code, replay.json()["error"]) == (409, "WebhookEndpointDeleted")
        audit = (await client.get("/v1/accounts/acme/audit", headers=ALICE)).json()["items"]
        assert [(e["action"], e["actor"]) for e in audit] == [
            ("webhook_endpoint.deleted", "alice"),
            ("webhook_endpoint.created", "alice"),
        ]
        # A new event goes to no deleted endpoint.
        await fan_out_one_event(db, settings, percent=80)
        assert len((await client.get(DELIVERIES, headers=ALICE)).json()["items"]) == 1

    async def test_an_org_has_at_most_ten(self, client: httpx.AsyncClient, world: None) -> None:
        for _ in range(10):
            assert (await client.post(ENDPOINTS, json={"url": PUBLIC_URL}, headers=ALICE)).status_code == 201
        refused = await client.post(ENDPOINTS, json={"url": PUBLIC_URL}, headers=ALICE)
        assert (refused.status_code, refused.json()["error"]) == (422, "TooManyWebhookEndpoints")


class TestUnsafeUrls:
    @pytest.mark.parametrize(
        ("url", "why"),
        [
            ("http://127.0.0.1:8080/hooks", "127.0.0.1, a loopback address"),
            ("http://localhost:8080/hooks", "resolves to 127.0.0.1, a loopback address"),
            ("http://[::1]/hooks", "::1, a loopback address"),
            ("http://10.1.2.3/hooks", "10.1.2.3, a private address"),
            ("http://192.168.0.10/hooks", "a private address"),
            ("http://169.254.169.254/latest/meta-data", "169.254.169.254, a link-local address"),
            ("http://[::ffff:127.0.0.1]/hooks", "a loopback address"),
            ("http://0.0.0.0/hooks", "0.0.0.0, the unspecified address"),
            ("http://100.64.0.1/hooks", "100.64.0.1, not a public address"),
            ("http://nothing-here.invalid/hooks", "does not resolve"),
            ("file:///etc/passwd", "not 'file'"),
            ("ftp://93.184.215.14/hooks", "not 'ftp'"),
            ("gopher://93.184.215.14:70/", "not 'gopher'"),
            ("https://user:password@93.184.215.14/hooks", "carries credentials"),
            ("not a url", "http or https"),
        ],
    )
    async def test_refused_at_registration(self, client: httpx.AsyncClient, world: None, url: str, why: str) -> None:
        response = await client.post(ENDPOINTS, json={"url": url}, headers=ALICE)

        assert (response.status_code, response.json()["error"]) == (422, "UnsafeWebhookUrl")
        assert why in response.json()["detail"]
        assert (await client.get(ENDPOINTS, headers=ALICE)).json()["items"] == []

    async def test_allowed_when_private_urls_are(self, private_ok: httpx.AsyncClient, world: None) -> None:
        response = await private_ok.post(ENDPOINTS, json={"url": "http://127.0.0.1:8080/hooks"}, headers=ALICE)
        assert response.status_code == 201
        # The scheme rule stays.
        refused = await private_ok.post(ENDPOINTS, json={"url": "file:///etc/passwd"}, headers=ALICE)
        assert refused.status_code == 422


class TestDeliveryLog:
    async def test_newest_first_paged_and_only_the_orgs_own(
        self, client: httpx.AsyncClient, db: Database, settings: Settings, world: None
    ) -> None:
        endpoint = (await client.post(ENDPOINTS, json={"url": PUBLIC_URL}, headers=ALICE)).json()
        globex = await client.post("/v1/orgs/globex/billing/webhook-endpoints", json={"url": PUBLIC_URL}, headers=DAVE)
        assert globex.status_code == 201
        await fan_out_one_event(db, settings, percent=50)
        await fan_out_one_event(db, settings, percent=80)
        await fan_out_one_event(db, settings, account="globex")

        first = (await client.get(f"{DELIVERIES}?limit=1", headers=ALICE)).json()
        [newest] = first["items"]
        assert newest["event_type"] == "credits.threshold" and newest["webhook_id"].startswith("evt_")
        assert (newest["endpoint_id"], newest["url"], newest["status"], newest["attempts"]) == (
            endpoint["id"],
            PUBLIC_URL,
            "pending",
            0,
        )
        second = (await client.get(f"{DELIVERIES}?limit=1&cursor={first['next_cursor']}", headers=ALICE)).json()
        assert [item["id"] for item in second["items"]] == [newest["id"] - 1]
        assert (await client.get(f"{DELIVERIES}?status=delivered", headers=ALICE)).json()["items"] == []
        [theirs] = (await client.get("/v1/orgs/globex/billing/webhook-deliveries", headers=DAVE)).json()["items"]
        assert (await client.post(f"{DELIVERIES}/{theirs['id']}/replay", headers=ALICE)).status_code == 404

    async def test_replay_schedules_the_delivery_now(
        self, client: httpx.AsyncClient, db: Database, settings: Settings, world: None
    ) -> None:
        await client.post(ENDPOINTS, json={"url": PUBLIC_URL}, headers=ALICE)
        await fan_out_one_event(db, settings)
        [delivery] = (await client.get(DELIVERIES, headers=ALICE)).json()["items"]

        response = await client.post(f"{DELIVERIES}/{delivery['id']}/replay", headers=ALICE)

        assert response.status_code == 202
        assert {key: response.json()[key] for key in ("id", "webhook_id", "status")} == {
            "id": delivery["id"],
            "webhook_id": delivery["webhook_id"],
            "status": "pending",
        }
        assert (await client.post(f"{DELIVERIES}/{delivery['id']}/replay", headers=BOB)).status_code == 403
