"""``GET/PUT /v1/accounts/{name}/billing/alerts``: who may set them, their bounds, the audit trail."""

from __future__ import annotations

import httpx
import pytest

from metering.db import Database
from tests.factories.billing_data import as_user, seed_world

ALICE, BOB, DAVE, FRANK = as_user("alice"), as_user("bob"), as_user("dave"), as_user("frank")
BODY = {"credits_percent": [80, 50, 50, 100], "spending_limit_percent": [90]}


@pytest.fixture
async def world(db: Database) -> None:
    await seed_world(db)


class TestAlerts:
    async def test_defaults_until_set_then_the_accounts_own_audited(
        self, client: httpx.AsyncClient, world: None
    ) -> None:
        before = await client.get("/v1/accounts/acme/billing/alerts", headers=ALICE)
        assert (before.status_code, before.json()) == (
            200,
            {"account": "acme", "credits_percent": [50, 80, 100], "spending_limit_percent": [80, 100]},
        )

        response = await client.put("/v1/accounts/acme/billing/alerts", json=BODY, headers=ALICE)

        expected = {"account": "acme", "credits_percent": [50, 80, 100], "spending_limit_percent": [90]}
        assert (response.status_code, response.json()) == (200, expected)
        assert (await client.get("/v1/accounts/acme/billing/alerts", headers=ALICE)).json() == expected
        [entry] = (await client.get("/v1/accounts/acme/audit", headers=ALICE)).json()["items"]
        assert (entry["actor"], entry["action"], entry["before"], entry["after"]) == (
            "alice",
            "alerts.set",
            {"credits_percent": [50, 80, 100], "spending_limit_percent": [80, 100]},
            {"credits_percent": [50, 80, 100], "spending_limit_percent": [90]},
        )
        # The same thresholds again are no change: nothing more in the trail.
        await client.put("/v1/accounts/acme/billing/alerts", json=BODY, headers=ALICE)
        assert len((await client.get("/v1/accounts/acme/audit", headers=ALICE)).json()["items"]) == 1

    async def test_a_user_sets_their_own_even_on_the_free_plan(self, client: httpx.AsyncClient, world: None) -> None:
        body = {"credits_percent": [], "spending_limit_percent": []}
        response = await client.put("/v1/accounts/bob/billing/alerts", json=body, headers=BOB)
        assert (response.status_code, response.json()) == (200, {"account": "bob", **body})

    @pytest.mark.parametrize(
        ("caller", "account", "status"),
        [(BOB, "acme", 403), (FRANK, "acme", 404), (DAVE, "acme", 404), (ALICE, "bob", 404)],
        ids=["write-member", "stranger", "other-org-admin", "another-user"],
    )
    async def test_only_the_user_or_an_org_admin_may_set_them(
        self, client: httpx.AsyncClient, world: None, caller: dict[str, str], account: str, status: int
    ) -> None:
        response = await client.put(f"/v1/accounts/{account}/billing/alerts", json=BODY, headers=caller)
        assert response.status_code == status
        # ...and nothing changed.
        reader = {"acme": ALICE, "bob": BOB}[account]
        read = await client.get(f"/v1/accounts/{account}/billing/alerts", headers=reader)
        assert read.json()["credits_percent"] == [50, 80, 100]

    @pytest.mark.parametrize(
        "body",
        [
            {"credits_percent": [0], "spending_limit_percent": []},
            {"credits_percent": [101], "spending_limit_percent": []},
            {"credits_percent": list(range(1, 12)), "spending_limit_percent": []},
            {"credits_percent": [50.5], "spending_limit_percent": []},
            {"credits_percent": ["50"], "spending_limit_percent": []},
            {"credits_percent": [True], "spending_limit_percent": []},
            {"credits_percent": [50]},
            {"credits_percent": [50], "spending_limit_percent": [], "email": "x@example.com"},
        ],
        ids=["zero", "over-100", "eleven", "float", "string", "bool", "missing", "unknown-field"],
    )
    async def test_thresholds_out_of_bounds_are_422(
        self, client: httpx.AsyncClient, world: None, body: dict[str, object]
    ) -> None:
        response = await client.put("/v1/accounts/acme/billing/alerts", json=body, headers=ALICE)
        assert (response.status_code, response.json()["error"]) == (422, "ValidationError")
        assert (await client.get("/v1/accounts/acme/billing/alerts", headers=ALICE)).json()["credits_percent"] == [
            50,
            80,
            100,
        ]
