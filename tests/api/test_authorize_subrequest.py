"""Contract of the auth-subrequest form of authorize (SPEC §5.1, §12): the request in headers, the
decision in the status (200 / 402 / 403) and in ``X-Metering-*`` headers, the same decision and
hold as ``POST /internal/v1/authorize``."""

from __future__ import annotations

from typing import get_args

import httpx
import pytest

from api.app import create_app
from api.routes.authorize_subrequest import REFUSAL_STATUS
from api.schemas.authorize import REASONS
from metering.authorize.catalog import provider_catalog
from metering.config import Settings
from metering.db import STATEMENT_TIMEOUT_DETAIL, Database
from tests.api.test_statement_timeouts import locked
from tests.conftest import SERVICE_TOKEN
from tests.metering.authorize.helpers import (
    ESTIMATE,
    FREE_CREDITS,
    PRO_CREDITS,
    disable,
    holds,
    period_row,
    seed,
    set_limit,
    set_period,
    set_status,
)

URL = "/internal/v1/authorize/subrequest"
AUTHORIZE_URL = "/internal/v1/authorize"


@pytest.fixture(autouse=True)
async def seeded(db: Database) -> None:
    provider_catalog.clear()
    await seed(db)


def headers(user: str, provider: str = "together", bill_to: str | None = None, custom_key: str | None = None) -> dict:
    sent = {"X-Metering-User": user, "X-Metering-Provider": provider, "X-Metering-Model": "org/m"}
    if bill_to is not None:
        sent["X-HF-Bill-To"] = bill_to
    if custom_key is not None:
        sent["X-Metering-Custom-Key"] = custom_key
    return sent


def decision_headers(response: httpx.Response) -> dict[str, str]:
    return {name.lower(): value for name, value in response.headers.items() if name.lower().startswith("x-metering-")}


class TestAllowed:
    async def test_200_with_the_decision_and_its_hold_in_headers(self, client: httpx.AsyncClient, db: Database) -> None:
        response = await client.get(URL, headers=headers("alice", "nowhere together"))

        assert response.status_code == 200
        [hold] = await holds(db)
        assert (hold.account_name, hold.provider_id, hold.amount_nano_usd, hold.status) == (
            "alice",
            "together",
            ESTIMATE,
            "held",
        )
        assert decision_headers(response) == {
            "x-metering-billing-account": "alice",
            "x-metering-hold-id": hold.id,
            "x-metering-providers": "together",
            "x-metering-credits-remaining-nano-usd": str(PRO_CREDITS - ESTIMATE),
        }
        assert response.json() == {
            "allowed": True,
            "billing_account": "alice",
            "providers": ["together"],
            "reason": None,
            "hold_id": hold.id,
            "credits_remaining_nano_usd": PRO_CREDITS - ESTIMATE,
            "spending_limit_remaining_nano_usd": None,
        }

    async def test_bill_to_header_bills_the_org(self, client: httpx.AsyncClient, db: Database) -> None:
        response = await client.get(URL, headers=headers("bob", "together fireworks-ai", bill_to="acme"))

        assert response.status_code == 200
        assert response.headers["X-Metering-Billing-Account"] == "acme"
        assert response.headers["X-Metering-Providers"] == "together fireworks-ai"
        assert (await period_row(db, "acme")).held_nano_usd == ESTIMATE

    async def test_empty_bill_to_is_none(self, client: httpx.AsyncClient) -> None:
        response = await client.get(URL, headers=headers("bob", bill_to="  "))

        assert (response.status_code, response.headers["X-Metering-Billing-Account"]) == (200, "bob")

    async def test_spending_limit_remaining_is_a_header(self, client: httpx.AsyncClient, db: Database) -> None:
        await set_limit(db, "solo-org", 250_000)

        response = await client.get(URL, headers=headers("alice", bill_to="solo-org"))

        assert response.status_code == 200
        assert response.headers["X-Metering-Spending-Limit-Remaining-Nano-Usd"] == "150000"
        assert response.headers["X-Metering-Credits-Remaining-Nano-Usd"] == "0"

    async def test_custom_key_is_never_refused_for_money_and_holds_nothing(
        self, client: httpx.AsyncClient, db: Database
    ) -> None:
        await set_period(db, "bob", credits_used_nano_usd=FREE_CREDITS)
        await set_status(db, "bob", "delinquent")

        response = await client.get(URL, headers=headers("bob", "paid-only", custom_key="True"))

        assert response.status_code == 200
        assert decision_headers(response) == {"x-metering-billing-account": "bob", "x-metering-providers": "paid-only"}
        assert await holds(db) == []

    @pytest.mark.parametrize("method", ["POST", "HEAD", "OPTIONS"])
    async def test_envoy_asks_with_the_original_method_and_path(
        self, client: httpx.AsyncClient, db: Database, method: str
    ) -> None:
        """ext_authz over HTTP appends the original path to its prefix and keeps the original method."""
        response = await client.request(method, f"{URL}/v1/chat/completions", headers=headers("alice"))

        assert response.status_code == 200
        [hold] = await holds(db)
        assert response.headers["X-Metering-Hold-Id"] == hold.id


class TestRefused:
    @pytest.mark.parametrize(
        ("setup", "asked", "status", "reason", "payer"),
        [
            ("bob_spent", headers("bob"), 402, "credits_exhausted", "bob"),
            ("limit", headers("alice", bill_to="solo-org"), 402, "spending_limit_reached", "solo-org"),
            ("acme_delinquent", headers("bob", bill_to="acme"), 402, "account_delinquent", "acme"),
            (None, headers("carol", bill_to="acme"), 403, "not_a_member", None),
            (None, headers("bob", bill_to="alice"), 403, "bill_to_not_eligible", None),
            (
                "acme_disabled",
                headers("bob", "together fireworks-ai", bill_to="acme"),
                403,
                "provider_disabled",
                "acme",
            ),
            (None, headers("alice", bill_to="ghost"), 403, "unknown_account", None),
            (None, headers("alice", "nowhere"), 403, "unknown_provider", "alice"),
        ],
    )
    async def test_status_and_reason_and_the_same_answer_as_authorize(
        self,
        client: httpx.AsyncClient,
        db: Database,
        setup: str | None,
        asked: dict,
        status: int,
        reason: str,
        payer: str | None,
    ) -> None:
        if setup == "bob_spent":
            await set_period(db, "bob", credits_used_nano_usd=FREE_CREDITS)
        elif setup == "limit":
            await set_limit(db, "solo-org", ESTIMATE - 1)
        elif setup == "acme_delinquent":
            await set_status(db, "acme", "delinquent")
        elif setup == "acme_disabled":
            await disable(db, "acme", ["together", "fireworks-ai"])

        response = await client.get(URL, headers=asked)

        assert response.status_code == status
        assert response.headers["X-Metering-Reason"] == reason
        assert response.headers.get("X-Metering-Billing-Account") == payer
        assert "X-Metering-Hold-Id" not in response.headers
        assert await holds(db) == []
        # A refusal holds nothing, so asking the JSON route the same question gets the same answer.
        json_body = {
            "user": asked["X-Metering-User"],
            "bill_to": asked.get("X-HF-Bill-To"),
            "provider": asked["X-Metering-Provider"],
            "model": asked["X-Metering-Model"],
        }
        assert response.json() == (await client.post(AUTHORIZE_URL, json=json_body)).json()

    def test_every_reason_of_the_spec_has_a_payment_or_permission_status(self) -> None:
        assert REFUSAL_STATUS.keys() == set(get_args(REASONS))
        assert {reason for reason, status in REFUSAL_STATUS.items() if status == 402} == {
            "credits_exhausted",
            "spending_limit_reached",
            "account_delinquent",
        }
        assert set(REFUSAL_STATUS.values()) == {402, 403}


class TestMalformed:
    @pytest.mark.parametrize(
        ("sent", "named"),
        [
            ({}, ["X-Metering-User", "X-Metering-Provider", "X-Metering-Model"]),
            ({"X-Metering-Provider": "together", "X-Metering-Model": "org/m"}, ["X-Metering-User"]),
            (headers("bad name!"), ["X-Metering-User"]),
            (headers("alice", "   "), ["X-Metering-Provider"]),
            (headers("alice", custom_key="maybe"), ["X-Metering-Custom-Key"]),
            (headers("alice", bill_to="x" * 257), ["X-HF-Bill-To"]),
        ],
    )
    async def test_400_naming_each_header_to_fix(
        self, client: httpx.AsyncClient, db: Database, sent: dict, named: list[str]
    ) -> None:
        response = await client.get(URL, headers=sent)

        assert response.status_code == 400
        body = response.json()
        assert body["error"] == "ValidationError"
        assert [issue["loc"] for issue in body["errors"]] == [["header", name] for name in named]
        assert all(f"header.{name}: " in body["detail"] for name in named)
        assert await holds(db) == []

    async def test_a_header_sent_twice_is_not_guessed_between(self, client: httpx.AsyncClient, db: Database) -> None:
        sent = [(name, value) for name, value in headers("alice").items()] + [("X-Metering-User", "bob")]

        response = await client.get(URL, headers=sent)

        assert response.status_code == 400
        assert response.json()["detail"] == "header.X-Metering-User: sent 2 times; send it once"
        assert await holds(db) == []

    async def test_needs_the_service_token(self, anonymous_client: httpx.AsyncClient, db: Database) -> None:
        wrong = {**headers("alice"), "Authorization": "Bearer not-the-token"}
        for sent in (headers("alice"), wrong):
            response = await anonymous_client.get(URL, headers=sent)
            assert (response.status_code, response.json()["error"]) == (401, "Unauthenticated")
        assert await holds(db) == []


class TestStatementTimeout:
    async def test_a_cancelled_statement_is_503(self, backend: str, settings: Settings, db: Database) -> None:
        """A decision held up past the API's statement timeout (PostgreSQL) answers 503, never a hang."""
        if backend != "postgres":
            pytest.skip("statement_timeout is a PostgreSQL setting")
        database = Database(settings.database_url, statement_timeout_ms=200)
        app = create_app(settings, database=database)
        auth = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        try:
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://metering.test"
            ) as http:
                assert (await http.get(URL, headers={**auth, **headers("alice")})).status_code == 200
                async with locked(settings.database_url, "accounts"):
                    response = await http.get(URL, headers={**auth, **headers("alice")})
        finally:
            await database.dispose()

        assert (response.status_code, response.json()) == (
            503,
            {"error": "StatementTimeout", "detail": STATEMENT_TIMEOUT_DETAIL},
        )
