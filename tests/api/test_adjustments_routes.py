"""``POST /v1/finance/accounts/{name}/adjustments``: who may, what it answers, Idempotency-Key replays, the
audit trail, and the billing summary's ``adjustments_nano_usd``."""

from __future__ import annotations

import httpx
import pytest

from metering.db import Database
from metering.invoicing.service import invoicing_service
from metering.ledger.verify import verify
from metering.periods import current_period, next_period, previous_period
from tests.factories.billing_data import as_user, seed_world

ALICE, BOB, FRANK, DAVE = as_user("alice"), as_user("bob"), as_user("frank"), as_user("dave")
FINANCE, ADMIN = as_user("fiona", "finance"), as_user("root", "platform_admin")
CURRENT = current_period()
BODY = {"amount_nano_usd": -500_000_000, "reason": "provider outage refund", "period": CURRENT}
URL = "/v1/finance/accounts/{name}/adjustments"


@pytest.fixture
async def world(db: Database) -> None:
    await seed_world(db)


async def post(
    client: httpx.AsyncClient, name: str, body: dict, *, key: str | bytes | None = None, caller: dict = FINANCE
) -> httpx.Response:
    headers: dict[str, str | bytes] = {**caller, **({"Idempotency-Key": key} if key is not None else {})}
    return await client.post(URL.format(name=name), json=body, headers=headers)


async def billing(client: httpx.AsyncClient, name: str, period: str, caller: dict) -> dict:
    response = await client.get(f"/v1/accounts/{name}/billing?period={period}", headers=caller)
    assert response.status_code == 200, response.text
    return response.json()


class TestCreate:
    async def test_finance_adjusts_and_the_account_sees_it(
        self, client: httpx.AsyncClient, world: None, db: Database
    ) -> None:
        response = await post(client, "acme", {**BODY, "request_ids": ["r1", "r2"]})

        assert response.status_code == 201, response.text
        made = response.json()
        assert set(made) == {
            "id",
            "account",
            "amount_nano_usd",
            "period",
            "corrects_period",
            "reason",
            "request_ids",
            "created_by",
            "created_at",
        }
        assert {k: made[k] for k in ("account", "amount_nano_usd", "period", "corrects_period", "request_ids")} == {
            "account": "acme",
            "amount_nano_usd": -500_000_000,
            "period": CURRENT,
            "corrects_period": CURRENT,
            "request_ids": ["r1", "r2"],
        }
        assert (made["reason"], made["created_by"], made["created_at"].endswith("Z")) == (BODY["reason"], "fiona", True)
        assert "Idempotent-Replayed" not in response.headers
        assert (await billing(client, "acme", CURRENT, ALICE))["adjustments_nano_usd"] == -500_000_000
        [entry] = (await client.get("/v1/accounts/acme/audit", headers=ALICE)).json()["items"]
        assert (entry["actor"], entry["action"], entry["before"]) == (
            "fiona",
            "adjustment.create",
            {"period": CURRENT, "adjustments_nano_usd": 0},
        )
        assert (entry["after"]["id"], entry["after"]["reason"], entry["after"]["adjustments_nano_usd"]) == (
            made["id"],
            BODY["reason"],
            -500_000_000,
        )
        assert (await verify(db)).ok

    async def test_after_its_period_closed_it_goes_to_the_open_one(
        self, client: httpx.AsyncClient, world: None, db: Database
    ) -> None:
        previous = previous_period(CURRENT)
        async with db.session_scope() as session:
            await invoicing_service.close_period(session, period=previous, force=True)

        response = await post(client, "alice", {**BODY, "amount_nano_usd": 250_000_000, "period": previous})

        assert response.status_code == 201, response.text
        assert (response.json()["period"], response.json()["corrects_period"]) == (CURRENT, previous)
        assert (await billing(client, "alice", CURRENT, as_user("alice")))["adjustments_nano_usd"] == 250_000_000
        assert (await billing(client, "alice", previous, as_user("alice")))["adjustments_nano_usd"] == 0
        assert (await verify(db)).ok


class TestIdempotencyKey:
    async def test_a_retry_is_the_same_adjustment_posted_once(
        self, client: httpx.AsyncClient, world: None, db: Database
    ) -> None:
        first = await post(client, "acme", BODY, key="refund-acme-1")
        again = await post(client, "acme", BODY, key="refund-acme-1")

        assert (first.status_code, again.status_code) == (201, 201)
        assert again.json() == first.json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert (await billing(client, "acme", CURRENT, ALICE))["adjustments_nano_usd"] == -500_000_000
        assert len((await client.get("/v1/accounts/acme/audit", headers=ALICE)).json()["items"]) == 1
        assert (await verify(db)).ok

    async def test_the_same_key_with_another_body_is_409(self, client: httpx.AsyncClient, world: None) -> None:
        first = await post(client, "acme", BODY, key="refund-acme-1")
        other = await post(client, "acme", {**BODY, "amount_nano_usd": -600_000_000}, key="refund-acme-1")

        assert other.status_code == 409
        body = other.json()
        assert body["error"] == "AdjustmentKeyReused"
        assert "\n" not in body["detail"] and str(first.json()["id"]) in body["detail"]
        assert (await billing(client, "acme", CURRENT, ALICE))["adjustments_nano_usd"] == -500_000_000


class TestRefusals:
    @pytest.mark.parametrize(
        "caller",
        [ALICE, FRANK, ADMIN],
        ids=["org-admin", "stranger", "platform-admin"],
    )
    async def test_only_finance_may_adjust(self, client: httpx.AsyncClient, world: None, caller: dict) -> None:
        response = await post(client, "acme", BODY, caller=caller)
        assert (response.status_code, response.json()["error"]) == (403, "NotPermitted")
        assert (await billing(client, "acme", CURRENT, ALICE))["adjustments_nano_usd"] == 0

    async def test_an_unknown_account_is_404(self, client: httpx.AsyncClient, world: None) -> None:
        response = await post(client, "nobody", BODY)
        assert (response.status_code, response.json()["error"]) == (404, "AccountNotFound")

    async def test_an_account_without_pay_as_you_go_is_409(self, client: httpx.AsyncClient, world: None) -> None:
        response = await post(client, "bob", BODY)
        assert response.status_code == 409
        body = response.json()
        assert body["error"] == "AccountNotInvoiced"
        assert "plan 'free'" in body["detail"] and "\n" not in body["detail"]

    @pytest.mark.parametrize(
        "body",
        [
            {**BODY, "amount_nano_usd": 0},
            {**BODY, "amount_nano_usd": 1.5},
            {**BODY, "amount_nano_usd": "5"},
            {**BODY, "amount_nano_usd": True},
            {**BODY, "amount_nano_usd": 10**15 + 1},
            {**BODY, "reason": ""},
            {**BODY, "reason": "   "},
            {**BODY, "reason": "x" * 501},
            {**BODY, "period": next_period(CURRENT)},
            {**BODY, "period": "1969-12"},
            {**BODY, "period": "9999-01"},
            {**BODY, "period": "2026-13"},
            {**BODY, "request_ids": ["r"] * 1_001},
            {**BODY, "request_ids": ["r" * 257]},
            {**BODY, "request_ids": [""]},
            {**BODY, "request_ids": [1]},
            {key: value for key, value in BODY.items() if key != "period"},
            {**BODY, "surprise": 1},
        ],
        ids=[
            "zero",
            "float",
            "string",
            "bool",
            "too-large",
            "empty-reason",
            "blank-reason",
            "long-reason",
            "future",
            "before-1970",
            "after-9998",
            "month-13",
            "too-many-ids",
            "long-id",
            "empty-id",
            "number-id",
            "no-period",
            "unknown-field",
        ],
    )
    async def test_a_bad_body_is_422(self, client: httpx.AsyncClient, world: None, body: dict) -> None:
        response = await post(client, "acme", body)
        assert response.status_code == 422, response.text
        assert "\n" not in response.json()["detail"]

    @pytest.mark.parametrize(
        "key", ["", "has space", "k" * 201, "naïve".encode("latin-1")], ids=["empty", "space", "long", "non-ascii"]
    )
    async def test_a_bad_idempotency_key_is_422(self, client: httpx.AsyncClient, world: None, key: str | bytes) -> None:
        response = await post(client, "acme", BODY, key=key)
        assert response.status_code == 422, response.text
