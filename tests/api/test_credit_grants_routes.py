"""``POST /v1/finance/accounts/{name}/credit-grants`` and ``GET /v1/accounts/{name}/credit-grants``: who may, what is
shown, the audit trail, and the billing summary's remaining grants."""

from __future__ import annotations

import httpx
import pytest

from metering.db import Database
from metering.ledger.verify import verify
from metering.periods import current_period
from tests.factories.billing_data import as_user, seed_world

ALICE, BOB, FRANK = as_user("alice"), as_user("bob"), as_user("frank")
FINANCE, ADMIN = as_user("fiona", "finance"), as_user("root", "platform_admin")
BODY = {"amount_nano_usd": 5_000_000_000, "reason": "goodwill after an outage", "expires_period": None}


@pytest.fixture
async def world(db: Database) -> None:
    await seed_world(db)


class TestCreate:
    async def test_finance_grants_and_the_account_sees_it(
        self, client: httpx.AsyncClient, world: None, db: Database
    ) -> None:
        response = await client.post("/v1/finance/accounts/acme/credit-grants", json=BODY, headers=FINANCE)

        assert response.status_code == 201
        made = response.json()
        assert {k: made[k] for k in ("account", "source", "status", "amount_nano_usd", "remaining_nano_usd")} == {
            "account": "acme",
            "source": "grant",
            "status": "active",
            "amount_nano_usd": 5_000_000_000,
            "remaining_nano_usd": 5_000_000_000,
        }
        assert (made["created_by"], made["reason"], made["expires_period"]) == ("fiona", BODY["reason"], None)
        listed = await client.get("/v1/accounts/acme/credit-grants", headers=ALICE)
        assert [item["id"] for item in listed.json()["items"]] == [made["id"]]
        billing = (await client.get("/v1/accounts/acme/billing", headers=ALICE)).json()
        assert (billing["credit_grants_remaining_nano_usd"], billing["prepaid_balance_nano_usd"]) == (5_000_000_000, 0)
        [entry] = (await client.get("/v1/accounts/acme/audit", headers=ALICE)).json()["items"]
        assert (entry["actor"], entry["action"], entry["before"]["remaining_nano_usd"]) == (
            "fiona",
            "credit_grant.create",
            0,
        )
        assert entry["after"]["reason"] == BODY["reason"]
        assert (await verify(db)).ok

    @pytest.mark.parametrize(
        ("caller", "status"),
        [(ALICE, 403), (FRANK, 403), (ADMIN, 403)],
        ids=["org-admin", "stranger", "platform-admin"],
    )
    async def test_only_finance_may_grant(
        self, client: httpx.AsyncClient, world: None, caller: dict[str, str], status: int
    ) -> None:
        response = await client.post("/v1/finance/accounts/acme/credit-grants", json=BODY, headers=caller)
        assert response.status_code == status
        assert (await client.get("/v1/accounts/acme/credit-grants", headers=ALICE)).json()["items"] == []

    async def test_an_unknown_account_is_404(self, client: httpx.AsyncClient, world: None) -> None:
        response = await client.post("/v1/finance/accounts/nobody/credit-grants", json=BODY, headers=FINANCE)
        assert response.status_code == 404

    @pytest.mark.parametrize(
        "body",
        [
            {**BODY, "amount_nano_usd": 0},
            {**BODY, "amount_nano_usd": -1},
            {**BODY, "amount_nano_usd": 1.5},
            {**BODY, "amount_nano_usd": "5"},
            {**BODY, "reason": ""},
            {**BODY, "expires_period": "2020-01"},
            {**BODY, "expires_period": "next month"},
            {**BODY, "surprise": 1},
        ],
    )
    async def test_a_bad_body_is_422(self, client: httpx.AsyncClient, world: None, body: dict) -> None:
        response = await client.post("/v1/finance/accounts/acme/credit-grants", json=body, headers=FINANCE)
        assert response.status_code == 422, response.text

    async def test_an_expiry_this_period_is_accepted(self, client: httpx.AsyncClient, world: None) -> None:
        body = {**BODY, "expires_period": current_period()}
        response = await client.post("/v1/finance/accounts/bob/credit-grants", json=body, headers=FINANCE)
        assert (response.status_code, response.json()["expires_period"]) == (201, current_period())


class TestList:
    @pytest.mark.parametrize(
        ("caller", "account", "status"),
        [(BOB, "acme", 403), (FRANK, "acme", 404), (ALICE, "bob", 404), (BOB, "bob", 200), (FINANCE, "acme", 200)],
        ids=["write-member", "stranger", "another-user", "self", "finance"],
    )
    async def test_who_may_read(
        self, client: httpx.AsyncClient, world: None, caller: dict[str, str], account: str, status: int
    ) -> None:
        assert (await client.get(f"/v1/accounts/{account}/credit-grants", headers=caller)).status_code == status
